"""HFR (Hybrid Feature Representation) block of E2MISeg, spec section 1.3.

One class covers the variants found in the reference repository through switches:

=====================  ===============  ==============  ==============
switch                 ACDC (default)   BraTS           MCL
=====================  ===============  ==============  ==============
``qk_source``          ``"cnn"``        ``"cnn"``       ``"cnn"``
``cnn_bn``             True             False           False
``n_refine``           2                1               1
``shared_token_proj``  False            ``"matrix"``    ``"linear"``
``fuse``               ``"concat_proj"``  ``"sum"``     ``"concat_proj"``
``block_norm``         ``"batch"``      ``"batch"``     ``"batch"``
``refine_dropout``     0.1              0.1             0.1
=====================  ===============  ==============  ==============

``qk_source="linear"`` gives the original (Aug-2024) variant: plain UNETR++ EPA attention with the
CNN branch running in parallel and added before the output projection.

``block_norm="instance"`` is not in the reference: it swaps the BatchNorms of the CNN branch and
the refinement ResBlocks for per-sample InstanceNorm, for training with batches of one or two
small patches (CPU budgets), where batch statistics are noisy and differ from the running ones.
``refine_dropout`` is the rate of the channel dropout before the refinement's 1x1 conv (0.1 in every
reference variant); 0 suits short training budgets, where it mostly slows fitting.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResidualConvBlock, make_norm

QK_SOURCES = ("cnn", "linear")
FUSE_MODES = ("concat_proj", "sum")
BLOCK_NORMS = ("batch", "instance")


def normalise_shared_token_proj(value: bool | str) -> str:
    """Map the ``shared_token_proj`` switch to one of ``"separate"``, ``"linear"``, ``"matrix"``.

    ``False`` = separate E and F Linear layers (ACDC); ``True``/``"linear"`` = one Linear used as
    both E and F (MCL); ``"matrix"`` = one bias-free parameter matrix used as both (BraTS).
    """
    if value is False or value == "separate":
        return "separate"
    if value is True or value == "linear":
        return "linear"
    if value == "matrix":
        return "matrix"
    raise ValueError(f"shared_token_proj must be False, True, 'linear' or 'matrix', got {value!r}")


class TokenProjection(nn.Module):
    """A bias-free learned (N -> p) matrix acting on the token axis (BraTS variant of E = F)."""

    def __init__(self, num_tokens: int, proj_size: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(num_tokens)  # same scale as nn.Linear's default init
        self.weight = nn.Parameter(torch.empty(num_tokens, proj_size).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class CNNBranch(nn.Module):
    """Two full 3x3x3 convs C->C with LeakyReLU; with ``use_bn`` also a norm and a residual.

    Its output M provides query and key of the attention in the interactive variant. The norm is
    BatchNorm (spec) or, with ``norm="instance"``, per-sample InstanceNorm.
    """

    def __init__(self, channels: int, use_bn: bool, norm: str = "batch") -> None:
        super().__init__()
        self.use_bn = use_bn
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1, bias=not use_bn)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=not use_bn)
        self.norm1: nn.Module = make_norm(norm, channels) if use_bn else nn.Identity()
        self.norm2: nn.Module = make_norm(norm, channels) if use_bn else nn.Identity()
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.act(self.norm2(self.conv2(y)))
        return x + y if self.use_bn else y


class PairedAttention(nn.Module):
    """Channel + spatial attention with linear-complexity spatial keys (UNETR++ EPA family).

    Tokens are (B, N, C). Query/key come either from the linear layer (``qk_source="linear"``)
    or from the CNN feature map passed as ``qk`` (``"cnn"``); the linear layer always produces
    four chunks so that the parameter layout is the same in both cases.
    """

    def __init__(self, num_tokens: int, channels: int, proj_size: int, num_heads: int,
                 dropout: float, qk_source: str, token_proj: str, fuse: str) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qk_source = qk_source
        self.fuse = fuse
        self.temperature_channel = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.temperature_spatial = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkvv = nn.Linear(channels, 4 * channels, bias=False)
        self.proj_e: nn.Module
        self.proj_f: nn.Module
        if token_proj == "separate":
            self.proj_e = nn.Linear(num_tokens, proj_size)
            self.proj_f = nn.Linear(num_tokens, proj_size)
        else:
            shared = (nn.Linear(num_tokens, proj_size) if token_proj == "linear"
                      else TokenProjection(num_tokens, proj_size))
            self.proj_e = shared
            self.proj_f = shared  # same module: registered once in parameters()
        self.drop_channel = nn.Dropout(dropout)
        self.drop_spatial = nn.Dropout(dropout)
        if fuse == "concat_proj":
            self.out_spatial = nn.Linear(channels, channels // 2)
            self.out_channel = nn.Linear(channels, channels // 2)

    def forward(self, tokens: torch.Tensor, qk: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = tokens.shape
        h = self.num_heads
        # (4, B, h, C/h, N): four chunks, channel-first per head
        chunks = self.qkvv(tokens).reshape(b, n, 4, h, c // h).permute(2, 0, 3, 4, 1)
        if self.qk_source == "cnn":
            assert qk is not None
            q = k = qk.reshape(b, h, c // h, n)
        else:
            q, k = chunks[0], chunks[1]
        v_channel, v_spatial = chunks[2], chunks[3]

        k_proj = self.proj_e(k)  # (B, h, C/h, p); projected before normalisation, as in EPA
        v_proj = self.proj_f(v_spatial)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)

        attn_c = (q @ k.transpose(-2, -1)) * self.temperature_channel  # (B, h, C/h, C/h)
        attn_c = self.drop_channel(attn_c.softmax(dim=-1))
        x_channel = (attn_c @ v_channel).permute(0, 3, 1, 2).reshape(b, n, c)

        attn_s = (q.transpose(-2, -1) @ k_proj) * self.temperature_spatial  # (B, h, N, p)
        attn_s = self.drop_spatial(attn_s.softmax(dim=-1))
        # The reference permutes (B, h, N, C/h) -> (B, C/h, h, N) before the reshape, which mixes
        # the token and channel layout; kept so weights stay interchangeable with that layout.
        x_spatial = (attn_s @ v_proj.transpose(-2, -1)).permute(0, 3, 1, 2).reshape(b, n, c)

        if self.fuse == "concat_proj":
            return torch.cat((self.out_spatial(x_spatial), self.out_channel(x_channel)), dim=-1)
        return x_spatial + x_channel


class HFRBlock(nn.Module):
    """Hybrid CNN/transformer block on a (B, C, D, H, W) volume with a fixed token count N."""

    def __init__(
        self,
        num_tokens: int,
        channels: int,
        proj_size: int,
        num_heads: int = 4,
        dropout: float = 0.1,
        qk_source: str = "cnn",
        cnn_bn: bool = True,
        n_refine: int = 2,
        shared_token_proj: bool | str = False,
        fuse: str = "concat_proj",
        block_norm: str = "batch",
        refine_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= refine_dropout < 1.0:
            raise ValueError(f"refine_dropout must be in [0, 1), got {refine_dropout!r}")
        if block_norm not in BLOCK_NORMS:
            raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {block_norm!r}")
        if qk_source not in QK_SOURCES:
            raise ValueError(f"qk_source must be one of {QK_SOURCES}, got {qk_source!r}")
        if fuse not in FUSE_MODES:
            raise ValueError(f"fuse must be one of {FUSE_MODES}, got {fuse!r}")
        if n_refine not in (1, 2):
            raise ValueError(f"n_refine must be 1 or 2, got {n_refine!r}")
        self.qk_source = qk_source
        self.cnn = CNNBranch(channels, use_bn=cnn_bn, norm=block_norm)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, channels))
        self.norm = nn.LayerNorm(channels)
        self.attention = PairedAttention(
            num_tokens, channels, proj_size, num_heads, dropout, qk_source,
            normalise_shared_token_proj(shared_token_proj), fuse,
        )
        self.gamma = nn.Parameter(1e-6 * torch.ones(channels))  # layer scale: starts near identity
        self.refine = nn.Sequential(*[ResidualConvBlock(channels, channels, block_norm)
                                      for _ in range(n_refine)])
        # Dropout3d keeps its index 0 with any rate, so state-dict keys do not depend on the switch
        self.refine_out = nn.Sequential(nn.Dropout3d(refine_dropout), nn.Conv3d(channels, channels, 1))
        self.out_conv = nn.Conv3d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        cnn = self.cnn(x)
        tokens = x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, C)
        attn = self.attention(self.norm(tokens), cnn if self.qk_source == "cnn" else None)
        attn = tokens + self.gamma * attn
        vol = attn.transpose(1, 2).reshape(b, c, d, h, w)
        y = vol + self.refine_out(self.refine(vol))
        if self.qk_source == "linear":
            y = y + cnn  # original variant: the parallel CNN branch joins before the out conv
        return self.out_conv(y) + x
