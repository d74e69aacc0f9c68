"""The learned boundary refiner's network: a small dilated CNN that re-labels voxels near boundaries.

Inputs per voxel (built by ``learned.refiner_features``): the image normalised as the model
normalises it, the current labels one-hot (one channel per model class) and each class's signed
distance map (mm, clipped and scaled). Output: one logit per model class.

Like SegFix (Yuan et al., ECCV 2020) it is model-agnostic and only acts in a narrow band around the
current boundaries. Unlike SegFix, which learns an offset towards a reliable interior pixel from
the image alone, it classifies each band voxel from the image *and* the current labels, because it
must also fix masks that no network produced (hand-drawn, imported, dilated by a tool).

The logits are ``PRIOR x one_hot(current) + residual``, with the residual's last layer started at
zero: an untrained refiner changes nothing, and training only has to learn where to disagree.

``in_plane`` uses (1, 3, 3) kernels: for thick-slice stacks (ACDC, 5-10 mm between slices) the
neighbouring slice is another anatomy, and mixing it in would teach the refiner noise.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

ARCHITECTURE = "boundary-refiner"
PRIOR = 1.0  # logit margin of the current label: the residual must be sure to overrule it, yet can learn to
DEFAULT_CONFIG: dict[str, Any] = {"width": 12, "dilations": [1, 2, 4], "in_plane": False,
                                  "distance_clip_mm": 5.0, "band_mm": 3.0}


def feature_channels(num_classes: int) -> int:
    return 2 * num_classes  # image, one-hot per class, signed distance per foreground class


class BoundaryRefiner(nn.Module):
    """Residual per-voxel classifier over ``num_classes`` model classes (0 = background)."""

    def __init__(self, num_classes: int, width: int = 12, dilations: list[int] | tuple[int, ...] = (1, 2, 4),
                 in_plane: bool = False, distance_clip_mm: float = 5.0, band_mm: float = 3.0) -> None:
        super().__init__()
        if num_classes < 2 or width < 1 or not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"refiner config out of range: num_classes {num_classes}, width {width}, dilations {dilations}")
        self.config = {"num_classes": int(num_classes), "width": int(width), "dilations": [int(d) for d in dilations],
                       "in_plane": bool(in_plane), "distance_clip_mm": float(distance_clip_mm), "band_mm": float(band_mm)}
        layers: list[nn.Module] = []
        channels = feature_channels(num_classes)
        for dilation in self.config["dilations"]:
            kernel = (1, 3, 3) if in_plane else (3, 3, 3)
            dil = (1, dilation, dilation) if in_plane else (dilation,) * 3
            pad = tuple((k // 2) * d for k, d in zip(kernel, dil))
            layers += [nn.Conv3d(channels, width, kernel, padding=pad, dilation=dil), nn.LeakyReLU(0.1)]
            channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv3d(width, num_classes, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def halo_zyx(self) -> tuple[int, int, int]:
        """Voxels of context each output voxel sees on each side (its receptive-field radius)."""
        radius = sum(self.config["dilations"])
        return (0 if self.config["in_plane"] else radius, radius, radius)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        one_hot = features[:, 1:1 + self.num_classes]
        return PRIOR * one_hot + self.head(self.body(features))


def build_refiner(config: dict[str, Any]) -> BoundaryRefiner:
    """A refiner from a card's ``refiner/config``; a config that does not fit is a ValueError/TypeError."""
    return BoundaryRefiner(**config)
