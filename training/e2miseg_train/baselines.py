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
    """DynUNet (3D, or 2D for slice-wise plans) with stride 2 between levels; train mode returns the
    deep-supervision list.

    2D plans feed it what the engine feeds a slice-wise network: one slice (2D) or a stack of
    ``slices`` neighbours per channel (2.5D), so ``in_channels`` counts channels x slices.
    """

    arch_name = "monai-dynunet"
    required_input_size = None

    def __init__(self, in_channels: int = 1, num_classes: int = 3, filters=(16, 32, 64, 128),
                 deep_supr_num: int = 2, res_block: bool = False, norm_name: str = "instance",
                 spatial_dims: int = 3, **_: Any) -> None:
        super().__init__()
        from monai.networks.nets import DynUNet

        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        levels = len(filters)
        deep_supr_num = min(deep_supr_num, levels - 2)  # MONAI allows fewer heads than upsampling layers only
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "filters": list(filters),
                       "deep_supr_num": deep_supr_num, "res_block": res_block, "norm_name": norm_name,
                       "spatial_dims": spatial_dims}
        self.in_channels, self.num_classes = in_channels, num_classes
        self.kind = "3d" if spatial_dims == 3 else "2d"
        self.size_divisor = 2 ** (levels - 1)
        # 2D: bfloat16 on CPUs that have it, like the slice-wise engine networks it is compared with, so a
        # same-budget comparison gives both the same arithmetic (3D keeps the float32 of the earlier pairs)
        self.prefers_bf16 = spatial_dims == 2
        self.net = DynUNet(spatial_dims, in_channels, num_classes, kernel_size=[3] * levels,
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
    settings = card["inference"]
    slice_wise = settings["kind"] in ("2d", "2.5d")
    stack = int(settings.get("slices", 1)) if settings["kind"] == "2.5d" else 1
    channels = len(card["channels"])
    config = {**DYNUNET_DEFAULTS, "in_channels": channels * stack, "num_classes": engine_config["num_classes"],
              "spatial_dims": 2 if slice_wise else 3, **overrides}
    card["architecture"] = {"name": arch, "config": config}
    card["name"] = f"{arch}-{card['name'].split('-', 1)[-1]}"
    card["description"] = f"MONAI DynUNet baseline trained with the plan of {plan['card']['name']}"
    plan["arch"] = arch
    return plan
