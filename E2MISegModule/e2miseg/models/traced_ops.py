"""Layers that the OpenVINO conversion maps onto one native operation.

Traced normally, a LayerNorm over the channel axis of a (B, C, D, H, W) volume becomes reductions
and element-wise ops (or, written with ``movedim``, two full-volume transposes). OpenVINO has that
normalisation as a single op (MVN over axis 1). While ``as_custom_ops()`` is active (only around the
trace that ``e2miseg.runtime`` converts), ``ChannelLayerNorm`` records the custom op
``e2miseg::channel_layer_norm``, which the runtime's conversion extension turns into MVN. Everywhere
else, including TorchScript export, the plain PyTorch form is traced, so exported files need nothing
from this package.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

OP_NAME = "e2miseg::channel_layer_norm"
_state = threading.local()


def channel_layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over axis 1 written along that axis (biased variance, as ``nn.LayerNorm``)."""
    mean = x.mean(dim=1, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=1, keepdim=True)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return centred * torch.rsqrt(var + eps) * weight.view(shape) + bias.view(shape)


@torch.library.custom_op(OP_NAME, mutates_args=())
def _channel_layer_norm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return channel_layer_norm_reference(x, weight, bias, eps)


@_channel_layer_norm_op.register_fake
def _(x, weight, bias, eps):
    return torch.empty_like(x)


def custom_ops_enabled() -> bool:
    return getattr(_state, "enabled", False)


@contextlib.contextmanager
def as_custom_ops() -> Iterator[None]:
    """Trace the layers above as their custom ops (this thread only)."""
    previous = custom_ops_enabled()
    _state.enabled = True
    try:
        yield
    finally:
        _state.enabled = previous


def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    if custom_ops_enabled():
        return torch.ops.e2miseg.channel_layer_norm(x, weight, bias, eps)
    return channel_layer_norm_reference(x, weight, bias, eps)
