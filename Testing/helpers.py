"""Test helpers: model cards and small trained-looking checkpoints made on the fly."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

HIPPOCAMPUS_LABELS = [
    {"value": 1, "name": "Anterior hippocampus", "color": [0.9, 0.6, 0.2],
     "terminology": {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
                     "type": {"scheme": "SCT", "code": "5366008", "meaning": "Hippocampus"},
                     "type_modifier": {"scheme": "SCT", "code": "255549009", "meaning": "Anterior"}}},
    {"value": 2, "name": "Posterior hippocampus", "color": [0.2, 0.6, 0.9],
     "terminology": {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
                     "type": {"scheme": "SCT", "code": "5366008", "meaning": "Hippocampus"},
                     "type_modifier": {"scheme": "SCT", "code": "255551008", "meaning": "Posterior"}}},
]


def make_card(kind: str = "3d", arch: str = "e2miseg", config: dict | None = None, patch=(16, 16, 16),
              labels: list | None = None, channels: int = 1, spacing=(1.0, 1.0, 1.0), **inference: Any) -> dict:
    settings = {"kind": kind, **inference}
    if patch is not None:
        settings["patch_size_zyx"] = list(patch)
    return {
        "format_version": 1,
        "name": "test-model",
        "version": "0.0.1",
        "description": "made by the tests",
        "architecture": {"name": arch, "config": config or {}},
        "labels": copy.deepcopy(labels or HIPPOCAMPUS_LABELS),
        "channels": [{"name": f"T1_{i}", "modality": "MR"} for i in range(channels)],
        "preprocessing": {"target_spacing_xyz": list(spacing) if spacing else None, "crop_to_nonzero": False,
                          "normalization": {"scheme": "zscore"}},
        "inference": settings,
        "license": "CC-BY-SA-4.0 (test)",
    }


def small_e2miseg_config(patch=(16, 16, 16), in_channels: int = 1, num_classes: int = 3) -> dict:
    return {"patch_size": list(patch), "in_channels": in_channels, "num_classes": num_classes,
            "stem_kernel": [2, 2, 2], "dims": [8, 16, 16, 32], "depths": [1, 1, 1, 1],
            "proj_sizes": [8, 8, 8, 4], "num_heads": 2, "feature_size": 8}


def make_e2miseg_checkpoint(path: Path, patch=(16, 16, 16), seed: int = 0, **card_overrides: Any) -> Path:
    """A small randomly initialised E2MISeg saved in the real checkpoint format."""
    import torch

    from e2miseg.checkpoint import save_checkpoint
    from e2miseg.models import build_model

    torch.manual_seed(seed)
    config = small_e2miseg_config(patch)
    model = build_model("e2miseg", **config)
    card = make_card("3d", "e2miseg", config, patch, **card_overrides)
    save_checkpoint(path, model.state_dict(), card)
    return path


def make_constant_checkpoint(path: Path, label: int, volume_ranges: dict[int, tuple[float, float]] | None = None,
                             **card_overrides: Any) -> Path:
    """A small E2MISeg whose output head says ``label`` everywhere (0: an empty result), with optional
    ``validation_volume_mm3`` ranges per label value in its card (the plausibility check's input)."""
    import torch

    from e2miseg.checkpoint import save_checkpoint
    from e2miseg.models import build_model

    torch.manual_seed(0)
    config = small_e2miseg_config()
    model = build_model("e2miseg", **config)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-10.0)
        model.head.bias[label] = 10.0
    labels = copy.deepcopy(HIPPOCAMPUS_LABELS)
    for entry in labels:
        if volume_ranges and entry["value"] in volume_ranges:
            low, high = volume_ranges[entry["value"]]
            entry["validation_volume_mm3"] = {"min": low, "max": high, "cases": 3}
    save_checkpoint(path, model.state_dict(), make_card("3d", "e2miseg", config, labels=labels, **card_overrides))
    return path


def pointwise_net(hidden: int = 8):
    """A fully convolutional 3D net with a 1-voxel receptive field: tiling cannot change its output."""
    import torch

    class PointwiseNet(torch.nn.Module):
        kind = "3d"
        num_classes = 3

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Conv3d(1, hidden, 1), torch.nn.Tanh(), torch.nn.Conv3d(hidden, 3, 1))

        def forward(self, x):
            return self.net(x)

    return PointwiseNet()
