"""EHANet: edge-guided hierarchical aggregation network (2D), spec sections 2.1-2.4 and 2.6.

MobileViT-S encoder -> EFA attention on every stage -> four AHFA decoder blocks (each with a side
output) + an IEM edge branch from the two shallowest stages -> a 1x1 head on the fused features.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNAct2d
from .mobilevit import MobileViTS


class EHANetOutput(NamedTuple):
    """Train-mode output: ``main`` and each of ``sides`` are logits at input size (B, K', H, W),
    K' = 1 in binary mode; ``edge`` is the softmaxed 2-class edge map (B, 2, H, W)."""

    main: torch.Tensor
    sides: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    edge: torch.Tensor


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True)


class EFA(nn.Module):
    """Efficient Fusion Attention: X * channel_gate + X * spatial_gate (4 + C parameters)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel_conv = nn.Conv1d(1, 1, 3, padding=1)  # ECA: conv across neighbouring channels
        self.spatial_conv = nn.Conv2d(channels, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C)
        channel_gate = torch.sigmoid(self.channel_conv(pooled)).transpose(1, 2).unsqueeze(-1)
        spatial_gate = torch.sigmoid(self.spatial_conv(x))
        return x * channel_gate + x * spatial_gate


class IEM(nn.Module):
    """Inter-layer Edge-aware Module: edge probabilities (B,2,H,W) and edge features (B,32,H,W)
    from f1 (H/2) and f2 (H/4)."""

    def __init__(self, c1: int = 32, c2: int = 64, edge_channels: int = 32) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(ConvBNAct2d(c1, 2, 1), ConvBNAct2d(2, 2, 3))
        self.branch2 = nn.Sequential(ConvBNAct2d(c2, 2, 1), ConvBNAct2d(2, 2, 3))
        self.edge_reduce = ConvBNAct2d(4, 2, 1)
        self.edge_out = ConvBNAct2d(2, 2, 1, act=None)
        self.feat_reduce = ConvBNAct2d(4, edge_channels, 1)
        self.feat_out = ConvBNAct2d(edge_channels, edge_channels, 1)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = torch.cat((self.branch1(f1), self.branch2(upsample(f2, 2))), dim=1)
        edge_prob = self.edge_out(upsample(self.edge_reduce(e), 2)).softmax(dim=1)
        edge_feat = self.feat_out(upsample(self.feat_reduce(e), 2))
        return edge_prob, edge_feat


class SqueezeExcite(nn.Module):
    """SE gate with reduction = C (a one-unit bottleneck), no biases."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class AHFA(nn.Module):
    """Adaptive Hierarchical Feature Aggregation decoder block -> (feature D, side logits S)."""

    def __init__(self, deep_channels: int, skip_channels: int, out_logits: int) -> None:
        super().__init__()
        c = skip_channels
        self.reduce = ConvBNAct2d(deep_channels, c, 1)
        self.branch1 = nn.Sequential(ConvBNAct2d(2 * c, c, 1, bias=True, act=None),
                                     SqueezeExcite(c, reduction=c))
        self.branch2 = nn.Sequential(ConvBNAct2d(2 * c, c, 3, bias=True),
                                     ConvBNAct2d(c, c, 3, bias=True, act=None))
        # Side output: features re-weighted by a per-channel gate computed from GAP(D).
        # Note: BatchNorm on the pooled (B, C, 1, 1) gate needs batch > 1 in train mode.
        self.side_feat = ConvBNAct2d(c, c, 1)
        self.side_gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNAct2d(c, c, 1),
                                       ConvBNAct2d(c, c, 1, act=nn.Sigmoid))
        self.side_out = nn.Conv2d(c, out_logits, 1, bias=False)

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat((skip, upsample(self.reduce(deep), 2)), dim=1)
        d = self.branch1(x) + self.branch2(x)  # no activation after the sum (as specified)
        side = self.side_out(self.side_feat(d) * self.side_gate(d))
        return d, side


class EHANet(nn.Module):
    """EHANet for (B, in_channels, H, W) with H, W divisible by 32.

    ``binary=True`` (only with ``num_classes == 2``) is the paper's one-logit sigmoid head; the
    eval output is then ``cat([0, s])`` so that softmax gives [1 - sigmoid(s), sigmoid(s)].
    Otherwise the head and the side outputs have ``num_classes`` softmax channels.

    ``freeze_encoder`` only stops gradients: like the reference, ``model.train()`` still updates
    the encoder's BatchNorm statistics. Train-mode batches need >= 2 images because the side-output
    gates apply BatchNorm to globally pooled features (use ``drop_last=True`` in the loader).
    """

    kind = "2d"
    arch_name = "ehanet"
    # bfloat16 on CPUs that have it: 2.1x less network time, <= 0.1 % voxels changed (runtime.py, precision.md)
    prefers_bf16 = True
    size_divisor = 32
    required_input_size = None

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        binary: bool = True,
        freeze_encoder: bool = False,
        encoder_weights: str | None = None,
        edge_width: int = 2,
        include_cls_head: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError("num_classes counts the background and must be >= 2")
        if binary and num_classes != 2:
            raise ValueError(f"binary=True needs num_classes=2, got {num_classes}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.binary = bool(binary)
        self.edge_width = int(edge_width)
        logits = 1 if binary else num_classes
        self.encoder = MobileViTS(in_channels, include_cls_head=include_cls_head)
        c1, c2, c3, c4, c5 = MobileViTS.out_channels
        self.efa = nn.ModuleList(EFA(c) for c in MobileViTS.out_channels)
        self.decoder = nn.ModuleList([AHFA(c5, c4, logits), AHFA(c4, c3, logits),
                                      AHFA(c3, c2, logits), AHFA(c2, c1, logits)])
        self.iem = IEM(c1, c2, edge_channels=c1)
        self.head = nn.Sequential(ConvBNAct2d(2 * c1, 64, 1, bias=True),
                                  ConvBNAct2d(64, 64, 1, bias=True), nn.Conv2d(64, logits, 1))
        if encoder_weights is not None:
            self.load_encoder_weights(encoder_weights)
            freeze_encoder = True  # the paper trains only the decoder on top of pretrained weights
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        # The weights now live in this model's state dict, so a rebuild must not need the file.
        self.config: dict[str, Any] = {
            "in_channels": self.in_channels, "num_classes": self.num_classes,
            "binary": self.binary, "freeze_encoder": bool(freeze_encoder),
            "encoder_weights": None, "edge_width": self.edge_width,
            "include_cls_head": bool(include_cls_head),
        }

    def load_encoder_weights(self, path: str | Path) -> None:
        """Load a safetensors file holding this encoder's state dict (cls head optional)."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("cls_head.")]
        if missing or unexpected:
            raise ValueError(f"encoder weights {path} do not fit MobileViT-S: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")

    def forward(self, x: torch.Tensor) -> torch.Tensor | EHANetOutput:
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"EHANet needs H and W divisible by 32, got {(int(h), int(w))}")
        feats = [efa(f) for efa, f in zip(self.efa, self.encoder(x))]
        f1, f2, f3, f4, f5 = feats
        deep = f5
        sides = []
        for block, skip, scale in zip(self.decoder, (f4, f3, f2, f1), (16, 8, 4, 2)):
            deep, side = block(skip, deep)
            sides.append(upsample(side, scale))
        edge_prob, edge_feat = self.iem(f1, f2)
        main = self.head(torch.cat((upsample(deep, 2), edge_feat), dim=1))
        if self.training:
            return EHANetOutput(main, (sides[0], sides[1], sides[2], sides[3]), edge_prob)
        if self.binary:
            return torch.cat((torch.zeros_like(main), main), dim=1)
        return main

    def default_loss(self, **overrides: Any) -> nn.Module:
        """Lovász edge loss + (BCE|CE) / Dice region losses over main and the four side outputs."""
        from ..losses import EHANetLoss

        overrides.setdefault("edge_width", self.edge_width)
        return EHANetLoss(**overrides)
