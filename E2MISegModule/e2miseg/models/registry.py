"""Name -> network registry: the only place that maps architecture names to classes.

``build_model(name, **config)`` is the single constructor used by the inference engine (from a
model card / checkpoint) and by training. ``model.config`` always round-trips through it.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from .e2miseg_net import E2MISegNet
from .ehanet import EHANet
from .s2anet import S2aNet

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "e2miseg": E2MISegNet,
    "ehanet": EHANet,
    "s2anet": S2aNet,
}

# The configurations measured in the spec (architectures.md 1.7, 2.6, 3.6), by preset name.
PAPER_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "e2miseg_acdc": ("e2miseg", {
        "patch_size": [16, 160, 160], "in_channels": 1, "num_classes": 4, "stem_kernel": [1, 4, 4],
    }),
    "e2miseg_brats": ("e2miseg", {
        "patch_size": [128, 128, 128], "in_channels": 4, "num_classes": 4,
        "stem_kernel": [4, 4, 4], "cnn_bn": False, "n_refine": 1,
        "shared_token_proj": "matrix", "fuse": "sum",
    }),
    "e2miseg_mcl": ("e2miseg", {
        "patch_size": [64, 128, 128], "in_channels": 1, "num_classes": 2,
        "stem_kernel": [2, 4, 4], "dropout": 0.15, "cnn_bn": False, "n_refine": 1,
        "shared_token_proj": "linear", "fuse": "concat_proj",
    }),
    "ehanet_paper": ("ehanet", {"in_channels": 3, "num_classes": 2, "binary": True}),
    "s2anet_paper": ("s2anet", {"in_channels": 1, "slices": 3, "num_classes": 55}),
}

# Reduced configurations that train on a CPU or small GPU (smoke tests, demos, benchmarks).
SMALL_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "e2miseg_small": ("e2miseg", {
        "patch_size": [16, 64, 64], "in_channels": 1, "num_classes": 4, "stem_kernel": [1, 4, 4],
        "dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "proj_sizes": [32, 32, 32, 16],
        "feature_size": 8,
    }),
    "ehanet_small": ("ehanet", {"in_channels": 1, "num_classes": 2, "include_cls_head": False}),
    "s2anet_small": ("s2anet", {"in_channels": 1, "slices": 3, "num_classes": 4, "width_scale": 4}),
}

# Parameter counts the spec measured on the authors' code, for the presets above.
PAPER_PARAM_COUNTS: dict[str, float] = {
    "e2miseg_acdc": 85.13e6, "e2miseg_brats": 61.00e6, "e2miseg_mcl": 61.28e6,
    "ehanet_paper": 6_619_753, "s2anet_paper": 24.72e6,
}


def available_models() -> list[str]:
    """Architecture names accepted by :func:`build_model`."""
    return sorted(_MODELS)


def _lookup(name: str) -> Callable[..., nn.Module]:
    try:
        return _MODELS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(available_models())}") from None


def model_kind(name: str) -> str:
    """``"3d"``, ``"2d"`` or ``"2.5d"`` for an architecture name (no model is built)."""
    return _lookup(name).kind  # type: ignore[attr-defined]


def config_keys(name: str) -> list[str]:
    """Constructor arguments accepted by architecture ``name``."""
    return [p for p in inspect.signature(_lookup(name)).parameters if p != "self"]


def build_model(name: str, **config: Any) -> nn.Module:
    """Build architecture ``name`` with constructor arguments ``config``.

    Raises ``ValueError`` for an unknown name and ``TypeError`` naming any unknown config key.
    """
    cls = _lookup(name)
    known = set(config_keys(name))
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"{name}: unknown config key(s) {', '.join(map(repr, unknown))}; "
                        f"accepted: {', '.join(sorted(known))}")
    return cls(**config)


def build_preset(preset: str, **overrides: Any) -> nn.Module:
    """Build a preset of :data:`PAPER_CONFIGS` or :data:`SMALL_CONFIGS` (e.g. ``"e2miseg_acdc"``),
    optionally with some arguments overridden."""
    presets = {**PAPER_CONFIGS, **SMALL_CONFIGS}
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(sorted(presets))}")
    name, config = presets[preset]
    return build_model(name, **{**config, **overrides})


def build_loss_for(model: nn.Module, **overrides: Any) -> nn.Module:
    """The loss the architecture was published with, ready for ``loss_fn(model(x), y)``."""
    return model.default_loss(**overrides)  # type: ignore[operator]
