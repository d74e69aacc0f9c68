"""E2MISeg: hybrid CNN/transformer 3D segmentation network, spec sections 1.1-1.2.

The network is built for one exact patch size: every HFR block owns a positional embedding and
token-axis projections whose sizes follow from ``patch_size / stem_kernel / 2**stage``. Larger
volumes are handled by the sliding-window inferer, never by feeding another size.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from .blocks import ResidualConvBlock, as_tuple3
from .hfr import HFRBlock, normalise_shared_token_proj
from .mfga import DEFAULT_DILATIONS, MFGA


def _stack(num_tokens: int, channels: int, proj: int, depth: int, hfr: dict[str, Any]) -> nn.Sequential:
    return nn.Sequential(*[HFRBlock(num_tokens, channels, proj, **hfr) for _ in range(depth)])


class E2MISegNet(nn.Module):
    """E2MISeg for inputs (B, in_channels, *patch_size); see the module docstring.

    Eval mode returns logits (B, K, D, H, W); train mode returns the deep-supervision list
    ``[y0, y1, y2]`` at full, stage-1 and stage-2 token resolution.
    """

    kind = "3d"
    arch_name = "e2miseg"
    # bfloat16 on CPUs that have it, except MFGA's depthwise dilated convolutions: OpenVINO has no
    # fast bfloat16 kernel for them (35 ms against 5 ms in fp32 per hippocampus window, one thread),
    # while the dense convolutions run 4x faster on AMX; network 72 -> 51 ms per window. Its norms may
    # run in bfloat16 (unlike the runtime's default FP32_LAYERS): the labels still agree with fp32 on
    # >= 99.99 % of the voxels (precision.md) and fp32 norms would cost 7 % of the network time.
    prefers_bf16 = True
    openvino_fp32_layers = ("GroupConvolution",)
    size_divisor = 1  # the exact size is required instead, see ``required_input_size``

    def __init__(
        self,
        patch_size: Sequence[int] = (16, 160, 160),
        in_channels: int = 1,
        num_classes: int = 4,
        stem_kernel: Sequence[int] = (1, 4, 4),
        dims: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (3, 3, 3, 3),
        proj_sizes: Sequence[int] = (64, 64, 64, 32),
        num_heads: int = 4,
        feature_size: int = 16,
        dropout: float = 0.1,
        qk_source: str = "cnn",
        cnn_bn: bool = True,
        n_refine: int = 2,
        shared_token_proj: bool | str = False,
        fuse: str = "concat_proj",
        dilations: Sequence[int] = DEFAULT_DILATIONS,
        block_norm: str = "batch",
        refine_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        patch, stem = as_tuple3(patch_size), as_tuple3(stem_kernel)
        if not (len(dims) == len(depths) == len(proj_sizes) == 4):
            raise ValueError("dims, depths and proj_sizes need 4 entries (one per stage)")
        grids = []
        for stage in range(4):
            factor = [s * 2**stage for s in stem]
            if any(p % f for p, f in zip(patch, factor)):
                raise ValueError(
                    f"patch_size {patch} is not divisible by stem_kernel*2**{stage} = {tuple(factor)}")
            grids.append(tuple(p // f for p, f in zip(patch, factor)))
        tokens = [g[0] * g[1] * g[2] for g in grids]

        self.config: dict[str, Any] = {
            "patch_size": list(patch), "in_channels": int(in_channels),
            "num_classes": int(num_classes), "stem_kernel": list(stem), "dims": list(dims),
            "depths": list(depths), "proj_sizes": list(proj_sizes), "num_heads": int(num_heads),
            "feature_size": int(feature_size), "dropout": float(dropout), "qk_source": qk_source,
            "cnn_bn": bool(cnn_bn), "n_refine": int(n_refine),
            "shared_token_proj": shared_token_proj, "fuse": fuse, "dilations": list(dilations),
            "block_norm": block_norm, "refine_dropout": float(refine_dropout),
        }
        normalise_shared_token_proj(shared_token_proj)  # validate early
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.required_input_size: tuple[int, int, int] | None = patch
        self.token_grids = grids
        hfr = dict(num_heads=num_heads, dropout=dropout, qk_source=qk_source, cnn_bn=cnn_bn,
                   n_refine=n_refine, shared_token_proj=shared_token_proj, fuse=fuse,
                   block_norm=block_norm, refine_dropout=refine_dropout)
        c0, c1, c2, c3 = dims

        # Encoder: patchify stem + three 2x downsamplings, each followed by an HFR stack.
        # GroupNorm with one group per input channel (reference); gcd keeps e.g. 3 inputs legal.
        self.stem = nn.Sequential(nn.Conv3d(in_channels, c0, stem, stride=stem, bias=False),
                                  nn.GroupNorm(math.gcd(in_channels, c0), c0))
        self.downsample = nn.ModuleList(
            nn.Sequential(nn.Conv3d(a, b, 2, stride=2, bias=False), nn.GroupNorm(a, b))
            for a, b in ((c0, c1), (c1, c2), (c2, c3))
        )
        self.encoder_stages = nn.ModuleList(
            _stack(tokens[i], dims[i], proj_sizes[i], depths[i], hfr) for i in range(4))
        # Full-resolution CNN path: the skip for the last decoder level.
        self.full_res = ResidualConvBlock(in_channels, feature_size, "instance")

        # Decoder: upsample (own ConvT) + MFGA skip, then an HFR stack (a ResBlock at full res).
        self.up = nn.ModuleList([
            nn.ConvTranspose3d(c3, c2, 2, stride=2, bias=False),
            nn.ConvTranspose3d(c2, c1, 2, stride=2, bias=False),
            nn.ConvTranspose3d(c1, c0, 2, stride=2, bias=False),
            nn.ConvTranspose3d(c0, feature_size, stem, stride=stem, bias=False),
        ])
        self.mfga = nn.ModuleList([
            MFGA(c3, c2, num_classes, 2, dilations),
            MFGA(c2, c1, num_classes, 2, dilations),
            MFGA(c1, c0, num_classes, 2, dilations),
            MFGA(c0, feature_size, num_classes, stem, dilations),
        ])
        self.decoder_stages = nn.ModuleList([
            _stack(tokens[2], c2, proj_sizes[2], depths[2], hfr),
            _stack(tokens[1], c1, proj_sizes[1], depths[1], hfr),
            _stack(tokens[0], c0, proj_sizes[0], depths[0], hfr),
            ResidualConvBlock(feature_size, feature_size, "instance"),
        ])
        self.head = nn.Conv3d(feature_size, num_classes, 1)
        self.ds_heads = nn.ModuleList([nn.Conv3d(c0, num_classes, 1), nn.Conv3d(c1, num_classes, 1)])
        self.apply(_init_weights)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` with a clear message when ``x`` does not fit the network."""
        if x.dim() != 5:
            raise ValueError(f"E2MISeg expects (B, C, D, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"E2MISeg was built for {self.in_channels} input channel(s) but got {x.shape[1]}")
        size = tuple(int(s) for s in x.shape[2:])
        if size != self.required_input_size:
            raise ValueError(
                f"E2MISeg was built for patch {self.required_input_size} but got {size}; "
                "use the sliding-window inferer")

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        skips = []
        h = self.stem(x)
        for i, stage in enumerate(self.encoder_stages):
            if i > 0:
                h = self.downsample[i - 1](h)
            h = stage(h)
            skips.append(h)
        enc1, enc2, enc3, enc4 = skips
        full = self.full_res(x)

        decoded = []
        h = enc4
        for up, mfga, stage, skip in zip(self.up, self.mfga, self.decoder_stages,
                                         (enc3, enc2, enc1, full)):
            h = stage(up(h) + mfga(h, skip))
            decoded.append(h)
        dec2, dec1, out = decoded[1], decoded[2], decoded[3]
        y0 = self.head(out)
        if not self.training:
            return y0
        return [y0, self.ds_heads[0](dec1), self.ds_heads[1](dec2)]

    def default_loss(self, **overrides: Any) -> nn.Module:
        """The architecture's own loss: CE + scale-sensitive Dice with 4:2:1 deep supervision.

        ``overrides`` go to :class:`ScaleSensitiveLoss` (``w_ce``, ``w_ss``, ...), except
        ``ds_weights`` which replaces the deep-supervision weights.
        """
        from ..losses import DeepSupervisionLoss, ScaleSensitiveLoss

        ds_weights = overrides.pop("ds_weights", None)
        return DeepSupervisionLoss(ScaleSensitiveLoss(**overrides), ds_weights)


def _init_weights(module: nn.Module) -> None:
    # Transformer-style init for linear layers (UNETR++ convention); convs keep PyTorch defaults.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
