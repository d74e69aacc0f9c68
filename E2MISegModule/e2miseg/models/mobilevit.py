"""MobileViT-S encoder (Mehta & Rastegari, ICLR 2022), written from the paper / spec section 2.2.

Output strides 2/4/8/16/32 with channels 32/64/96/128/160. The ImageNet classification head is
built optionally (``include_cls_head``) only so that parameter counts and pretrained state dicts
match the published model; EHANet never runs it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNAct2d


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor`` without dropping more than 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = make_divisible(in_channels * expand)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.block = nn.Sequential(
            ConvBNAct2d(in_channels, hidden, 1, act=nn.SiLU),
            ConvBNAct2d(hidden, hidden, 3, stride=stride, groups=hidden, act=nn.SiLU),
            ConvBNAct2d(hidden, out_channels, 1, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (both projections with bias).

    Written out with plain matmuls instead of ``nn.MultiheadAttention`` / fused SDPA so that
    state-dict keys do not depend on torch internals and FLOP counters see the attention (the
    fused CPU kernels are invisible to ``torch.utils.flop_counter``); sequences here are short.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        head_dim = d // self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q * head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = attn @ v  # (B, heads, N, d/heads)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: LN -> MHSA -> dropout, LN -> FFN(SiLU) -> dropout."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.SiLU(), nn.Linear(ffn_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm_attn(x)))
        return x + self.dropout(self.ffn(self.norm_ffn(x)))


class MobileViTBlock(nn.Module):
    """Local conv representation + global transformer over 2x2-unfolded patches + fusion."""

    def __init__(self, channels: int, dim: int, ffn_dim: int, depth: int, num_heads: int = 4,
                 patch: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.patch = patch
        self.local = nn.Sequential(
            ConvBNAct2d(channels, channels, 3, act=nn.SiLU),
            nn.Conv2d(channels, dim, 1, bias=False),
        )
        self.transformer = nn.Sequential(
            *[TransformerLayer(dim, ffn_dim, num_heads, dropout) for _ in range(depth)],
            nn.LayerNorm(dim),
        )
        self.project = ConvBNAct2d(dim, channels, 1, act=nn.SiLU)
        self.fuse = ConvBNAct2d(2 * channels, channels, 3, act=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        b, d, h, w = y.shape
        p = self.patch
        # Sizes not divisible by the patch are resized up and back (as the reference does).
        hp, wp = -(-h // p) * p, -(-w // p) * p
        resized = (hp, wp) != (h, w)
        if resized:
            y = F.interpolate(y, size=(hp, wp), mode="bilinear", align_corners=False)
        # Unfold: one sequence per position inside the p x p patch, tokens = patches.
        seq = (y.reshape(b, d, hp // p, p, wp // p, p).permute(0, 3, 5, 2, 4, 1)
               .reshape(b * p * p, (hp // p) * (wp // p), d))
        seq = self.transformer(seq)
        y = (seq.reshape(b, p, p, hp // p, wp // p, d).permute(0, 5, 3, 1, 4, 2)
             .reshape(b, d, hp, wp))
        if resized:
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return self.fuse(torch.cat((x, self.project(y)), dim=1))


class MobileViTS(nn.Module):
    """MobileViT-S feature extractor returning the five stage outputs (f1..f5)."""

    out_channels = (32, 64, 96, 128, 160)

    def __init__(self, in_channels: int = 3, include_cls_head: bool = True,
                 num_cls_classes: int = 1000) -> None:
        super().__init__()
        self.conv_1 = ConvBNAct2d(in_channels, 16, 3, stride=2, act=nn.SiLU)
        self.layer_1 = InvertedResidual(16, 32, 1)
        self.layer_2 = nn.Sequential(InvertedResidual(32, 64, 2), InvertedResidual(64, 64, 1),
                                     InvertedResidual(64, 64, 1))
        self.layer_3 = nn.Sequential(InvertedResidual(64, 96, 2), MobileViTBlock(96, 144, 288, 2))
        self.layer_4 = nn.Sequential(InvertedResidual(96, 128, 2), MobileViTBlock(128, 192, 384, 4))
        self.layer_5 = nn.Sequential(InvertedResidual(128, 160, 2), MobileViTBlock(160, 240, 480, 3))
        self.cls_head: nn.Module | None = None
        if include_cls_head:  # unused by segmentation; kept for checkpoint/param-count parity
            self.cls_head = nn.Sequential(
                ConvBNAct2d(160, 640, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Dropout(0.1), nn.Linear(640, num_cls_classes),
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.layer_1(self.conv_1(x))
        f2 = self.layer_2(f1)
        f3 = self.layer_3(f2)
        f4 = self.layer_4(f3)
        f5 = self.layer_5(f4)
        return [f1, f2, f3, f4, f5]
