"""Small building blocks shared by the three networks.

Kept framework-light (plain ``torch.nn``) so that state-dict keys stay stable regardless of the
installed MONAI version: checkpoints written today must load after a MONAI upgrade.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .traced_ops import channel_layer_norm

# (kernel, stride, padding) may be ints or per-axis tuples.
Size3 = int | Sequence[int]


def as_tuple3(value: Size3) -> tuple[int, int, int]:
    """Return ``value`` as a 3-tuple of ints (an int is repeated on every axis)."""
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"expected 3 values, got {value!r}")
    return out  # type: ignore[return-value]


def make_norm(kind: str, channels: int, spatial_dims: int = 3) -> nn.Module:
    """Normalisation layer by name: ``"batch"`` (affine, running stats) or ``"instance"``.

    Instance norm is non-affine, as in MONAI's ``get_norm_layer("instance")`` that the reference
    networks use; this matters only for parameter counts.
    """
    if kind == "batch":
        return (nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d)(channels)
    raise ValueError(f"unknown norm {kind!r}; use 'batch' or 'instance'")


class ResidualConvBlock(nn.Module):
    """conv3 -> norm -> LeakyReLU -> conv3 -> norm, plus a (projected) identity, then LeakyReLU.

    Convolutions have no bias (the norm that follows makes a bias redundant). The identity is
    projected by a 1x1 conv + norm only when the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_channels)
        self.act = nn.LeakyReLU(0.01)
        self.project: nn.Module | None = None
        if in_channels != out_channels:
            self.project = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, bias=False), make_norm(norm, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.project is None else self.project(x)
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + identity)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, *spatial) tensor (channels-last internally)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            # Traced (OpenVINO, TorchScript export), the movedim pair below becomes two full-volume
            # transposes plus layout reorders: 14 % of the hippocampus network's time. Written along
            # axis 1 there are none, and for OpenVINO it becomes one MVN (see traced_ops).
            return channel_layer_norm(x, self.norm.weight, self.norm.bias, self.norm.eps)
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class ConvBNAct2d(nn.Sequential):
    """2D conv + optional BatchNorm + optional activation (the workhorse of the 2D networks)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm: bool = True,
        act: type[nn.Module] | None = nn.ReLU,
        dilation: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        if bias is None:
            bias = not norm  # a bias right before BatchNorm is redundant
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                      dilation=dilation, groups=groups, bias=bias)
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
