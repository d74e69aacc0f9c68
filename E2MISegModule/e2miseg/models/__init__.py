"""Networks of the E2MISeg extension: E2MISeg (3D), EHANet (2D) and S²aNet (2.5D).

Build them by name: ``build_model("e2miseg", patch_size=(16, 160, 160), ...)``. Every model has
``kind``, ``arch_name``, ``config``, ``in_channels``, ``num_classes``, ``required_input_size``,
``size_divisor`` and ``default_loss()``; see ``registry.py``.
"""
from .registry import (
    PAPER_CONFIGS,
    PAPER_PARAM_COUNTS,
    SMALL_CONFIGS,
    available_models,
    build_loss_for,
    build_model,
    build_preset,
    config_keys,
    model_kind,
)

__all__ = [
    "PAPER_CONFIGS",
    "PAPER_PARAM_COUNTS",
    "SMALL_CONFIGS",
    "available_models",
    "build_loss_for",
    "build_model",
    "build_preset",
    "config_keys",
    "model_kind",
]
