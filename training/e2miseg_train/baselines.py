"""Comparison baselines that live only in the training package (never in the engine registry).

MONAI's DynUNet (the nnU-Net topology) trained on the same plan, patches and budget is the
reference E2MISeg has to beat. Its checkpoints use the same safetensors + card format with the
architecture name ``monai-dynunet``; ``e2miseg`` itself does not load them, ``evaluate`` does.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

BASELINES = ("monai-dynunet",)

DYNUNET_DEFAULTS: dict[str, Any] = {
    "filters": [16, 32, 64, 128], "deep_supr_num": 2, "res_block": False, "norm_name": "instance",
}


class DiceCELabels(nn.Module):
    """MONAI DiceCE (batch Dice, background excluded) for int labels (B, *spatial)."""

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() == logits.dim() - 1:
            labels = labels[:, None]
        return self.loss(logits.float(), labels)


class DynUNetBaseline(nn.Module):
    """DynUNet with a fixed 3-stride topology; train mode returns the deep-supervision list."""

    kind = "3d"
    arch_name = "monai-dynunet"
    size_divisor = 8
    required_input_size = None

    def __init__(self, in_channels: int = 1, num_classes: int = 3, filters=(16, 32, 64, 128),
                 deep_supr_num: int = 2, res_block: bool = False, norm_name: str = "instance", **_: Any) -> None:
        super().__init__()
        from monai.networks.nets import DynUNet

        levels = len(filters)
        deep_supr_num = min(deep_supr_num, levels - 2)  # MONAI allows fewer heads than upsampling layers only
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "filters": list(filters),
                       "deep_supr_num": deep_supr_num, "res_block": res_block, "norm_name": norm_name}
        self.in_channels, self.num_classes = in_channels, num_classes
        self.net = DynUNet(3, in_channels, num_classes, kernel_size=[3] * levels,
                           strides=[1] + [2] * (levels - 1), upsample_kernel_size=[2] * (levels - 1),
                           filters=list(filters), norm_name=norm_name, deep_supervision=deep_supr_num > 0,
                           deep_supr_num=max(1, deep_supr_num), res_block=res_block)

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        if self.training and out.dim() == x.dim() + 1:  # (B, 1 + deep_supr_num, K, ...) stacked
            return list(out.unbind(1))
        return out

    def default_loss(self) -> nn.Module:
        from e2miseg.losses import DeepSupervisionLoss

        return DeepSupervisionLoss(DiceCELabels())


def is_baseline(arch: str) -> bool:
    return arch in BASELINES


def build_network(arch: str, config: dict[str, Any]) -> nn.Module:
    """An engine network (by registry name) or a training-only baseline."""
    if arch == "monai-dynunet":
        return DynUNetBaseline(**config)
    from e2miseg.models import build_model

    return build_model(arch, **config)


def baseline_plan(plan: dict[str, Any], arch: str = "monai-dynunet", **overrides: Any) -> dict[str, Any]:
    """The same plan (data, split, preprocessing, patch) with the network swapped for the baseline."""
    import copy

    plan = copy.deepcopy(plan)
    card = plan["card"]
    engine_config = card["architecture"]["config"]
    config = {**DYNUNET_DEFAULTS, "in_channels": engine_config["in_channels"],
              "num_classes": engine_config["num_classes"], **overrides}
    card["architecture"] = {"name": arch, "config": config}
    card["name"] = f"{arch}-{card['name'].split('-', 1)[-1]}"
    card["description"] = f"MONAI DynUNet baseline trained with the plan of {plan['card']['name']}"
    plan["arch"] = arch
    return plan
