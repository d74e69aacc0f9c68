"""MFGA (Multi-level Feature Group Aggregation) skip builder of E2MISeg, spec section 1.4."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .blocks import ChannelLayerNorm, Size3, as_tuple3

DEFAULT_DILATIONS = (1, 2, 6, 7)


class MFGA(nn.Module):
    """Builds a class-guided skip feature from the deeper feature ``inp`` and the encoder ``skip``.

    ``inp`` is upsampled to the skip resolution, a coarse (unsupervised) K-class map is predicted
    from it and appended to each of four channel groups; each group gets a depthwise dilated conv
    with its own rate so the skip mixes several receptive fields. Output: ``out_channels`` at the
    skip resolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int,
        upsample: Size3 = 2,
        dilations: Sequence[int] = DEFAULT_DILATIONS,
    ) -> None:
        super().__init__()
        groups = len(dilations)
        if out_channels % groups:
            raise ValueError(f"MFGA out_channels {out_channels} must be divisible by {groups}")
        up = as_tuple3(upsample)
        self.groups = groups
        self.up = nn.ConvTranspose3d(in_channels, out_channels, up, stride=up, bias=False)
        self.class_map = nn.Conv3d(out_channels, num_classes, 1)
        group_width = 2 * (out_channels // groups) + num_classes
        # One LayerNorm instance shared by all groups (as in the reference), one conv per group.
        self.group_norm = ChannelLayerNorm(group_width)
        self.group_convs = nn.ModuleList(
            nn.Conv3d(group_width, group_width, 3, padding=r, dilation=r, groups=group_width)
            for r in dilations
        )
        self.out_norm = ChannelLayerNorm(group_width * groups)
        self.out_conv = nn.Conv3d(group_width * groups, out_channels, 1, bias=False)

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(inp)
        class_map = self.class_map(up)
        up_groups = up.chunk(self.groups, dim=1)
        skip_groups = skip.chunk(self.groups, dim=1)
        fused = [
            conv(self.group_norm(torch.cat((u, s, class_map), dim=1)))
            for conv, u, s in zip(self.group_convs, up_groups, skip_groups)
        ]
        return self.out_conv(self.out_norm(torch.cat(fused, dim=1)))
