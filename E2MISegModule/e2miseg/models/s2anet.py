"""S²aNet: scale- and slice-aware 2.5D network, spec sections 3.2-3.3 and 3.6.

k adjacent slices share one CNN encoder; their deepest features are fused (slice-aware module),
refined by five parallel dilated convolutions (scale-aware module, "SCaM") and decoded with skips
that concatenate the encoder features of all slices (or only the middle slice).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

SKIP_MODES = ("all_slices", "middle_slice")
SCAM_DILATIONS = (1, 2, 3, 5, 8)


class DoubleConv(nn.Sequential):
    """Two 3x3 convs (with bias), each followed by optional BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool) -> None:
        layers: list[nn.Module] = []
        for a in (in_channels, out_channels):
            layers.append(nn.Conv2d(a, out_channels, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ScaleAwareModule(nn.Module):
    """Parallel dilated 3x3 branches at one resolution -> concat -> 1x1 -> BN, ReLU, dropout."""

    def __init__(self, channels: int, dropout: float, dilations: tuple[int, ...] = SCAM_DILATIONS) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=d, dilation=d, bias=False),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for d in dilations
        )
        self.project = nn.Sequential(
            nn.Conv2d(channels * len(dilations), channels, 1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class S2aNet(nn.Module):
    """S²aNet for (B, in_channels * slices, H, W) input in channel-major slice order.

    Predicts logits (B, K, H, W) for the middle slice (in both train and eval mode).
    """

    kind = "2.5d"
    arch_name = "s2anet"
    # bfloat16 on CPUs that have it: 2.8x less network time, <= 0.1 % voxels changed (runtime.py, precision.md)
    prefers_bf16 = True
    size_divisor = 8
    required_input_size = None

    def __init__(
        self,
        in_channels: int = 1,
        slices: int = 3,
        num_classes: int = 55,
        skip_mode: str = "all_slices",
        width_scale: int = 1,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if slices < 1 or slices % 2 == 0:
            raise ValueError(f"slices must be odd (3, 5, 7), got {slices}")
        if skip_mode not in SKIP_MODES:
            raise ValueError(f"skip_mode must be one of {SKIP_MODES}, got {skip_mode!r}")
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels), "slices": int(slices), "num_classes": int(num_classes),
            "skip_mode": skip_mode, "width_scale": int(width_scale), "dropout": float(dropout),
        }
        self.in_channels = int(in_channels)
        self.slices = int(slices)
        self.num_classes = int(num_classes)
        self.skip_mode = skip_mode
        c1, c2, c3, c4 = (w // int(width_scale) for w in (64, 128, 256, 512))
        skip_copies = slices if skip_mode == "all_slices" else 1

        self.encoder = nn.ModuleList([DoubleConv(in_channels, c1, True), DoubleConv(c1, c2, True),
                                      DoubleConv(c2, c3, True)])
        self.pool = nn.MaxPool2d(2)
        self.slice_fusion = DoubleConv(slices * c3, c4, True)
        self.scale_aware = ScaleAwareModule(c4, dropout)
        self.up = nn.ModuleList([nn.ConvTranspose2d(c4, c3, 2, stride=2),
                                 nn.ConvTranspose2d(c3, c2, 2, stride=2),
                                 nn.ConvTranspose2d(c2, c1, 2, stride=2)])
        self.decoder = nn.ModuleList([DoubleConv(c3 * (1 + skip_copies), c3, False),
                                      DoubleConv(c2 * (1 + skip_copies), c2, False),
                                      DoubleConv(c1 * (1 + skip_copies), c1, False)])
        self.head = nn.Conv2d(c1, num_classes, 1)
        self.apply(_init_weights)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Shared encoder for one slice: features at H, H/2, H/4 and the pooled H/8 map."""
        feats = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        feats.append(self.pool(x))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, ck, h, w = x.shape
        if ck != self.in_channels * self.slices:
            raise ValueError(f"S2aNet expects {self.in_channels} x {self.slices} slices = "
                             f"{self.in_channels * self.slices} channels, got {ck}")
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"S2aNet needs H and W divisible by 8, got {(int(h), int(w))}")
        stack = x.reshape(b, self.in_channels, self.slices, h, w)
        # Each slice goes through the encoder on its own (BatchNorm statistics per slice, as the
        # reference does), sharing the weights.
        per_slice = [self.encode(stack[:, :, s]) for s in range(self.slices)]
        fused = self.slice_fusion(torch.cat([f[3] for f in per_slice], dim=1))
        y = self.scale_aware(fused)
        middle = self.slices // 2
        for level, (up, dec) in enumerate(zip(self.up, self.decoder)):
            skip_level = 2 - level
            if self.skip_mode == "all_slices":
                skips = [f[skip_level] for f in per_slice]
            else:
                skips = [per_slice[middle][skip_level]]
            y = dec(torch.cat([up(y)] + skips, dim=1))
        return self.head(y)

    def default_loss(self, **overrides: Any) -> nn.Module:
        """Weight-adaptive cross-entropy (class weights 1 - Dice_c)."""
        from ..losses import WeightAdaptiveLoss

        return WeightAdaptiveLoss(**overrides)


def _init_weights(module: nn.Module) -> None:
    # Reference init: Kaiming-normal (fan_in) convs, BN weight ~ N(1, 0.02), BN bias 0.
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
