"""``plan``: the dataset fingerprint and the training plan proposed from it.

The plan is a JSON file holding everything ``fit`` needs: the dataset, the split, the model card
template (labels, channels, preprocessing, inference settings) and the architecture config. Editing
the JSON is the supported way to change a plan.
"""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from e2miseg.card import validate_card
from e2miseg.io import read_channels
from e2miseg.models import model_kind

from .dataset import channel_names, label_names, list_cases, read_dataset_json, split_cases
from .terminology import card_labels, modality_code

PLAN_VERSION = 1
# Voxel budget of a 3D training patch on CPU; nnU-Net sizes patches to GPU memory instead.
DEFAULT_MAX_PATCH_VOXELS = 64 * 64 * 64
ORDERED_AXIS_AGREEMENT = 0.9  # share of cases whose label centroids keep one order along an axis

CPU_MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # Scaled down from the paper so CPU training converges within an hour or two.
    "e2miseg": {"stem_kernel": [2, 2, 2], "dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1],
                "proj_sizes": [32, 32, 32, 16], "num_heads": 4, "feature_size": 16, "dropout": 0.1},
    "ehanet": {"binary": False},
    "s2anet": {"slices": 3, "width_scale": 4, "dropout": 0.1},
}


def case_fingerprint(case, max_samples: int = 10000, rng: np.random.Generator | None = None) -> dict[str, Any]:
    rng = rng or np.random.default_rng(0)
    channels = read_channels(list(case.images))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))).astype(np.int64)
    fg = label > 0
    intensities = []
    for image in channels:
        values = sitk.GetArrayViewFromImage(image)[fg] if fg.any() else sitk.GetArrayViewFromImage(image).ravel()
        if values.size > max_samples:
            values = rng.choice(values, max_samples, replace=False)
        intensities.append(values.astype(np.float64))
    counts = np.bincount(label.ravel(), minlength=1)
    centroids = {int(v): [float(c) for c in np.argwhere(label == v).mean(0)] for v in np.unique(label) if v != 0}
    return {"name": case.name, "spacing_xyz": list(channels[0].GetSpacing()), "shape_zyx": list(label.shape),
            "voxels_per_class": [int(c) for c in counts], "centroids_zyx": centroids, "_intensities": intensities}


def ordered_axes(fingerprints: list[dict[str, Any]], min_separation: float = 2.0) -> list[str]:
    """Array axes along which some pair of labels keeps a fixed order (mirroring would swap their meaning).

    E.g. the anterior hippocampus lies before the posterior one along one axis in every case, and the
    right ventricle beside the left ventricle: flipping such an axis puts a label where the other
    belongs. A pair counts when >= 90 % of cases agree on the order and the centroids are on average
    at least ``min_separation`` voxels apart (concentric labels such as myocardium/LV do not count).
    """
    ordered = []
    values = sorted({int(v) for fp in fingerprints for v in fp["centroids_zyx"]})
    for axis, name in enumerate("zyx"):
        for i, a in enumerate(values):
            for b in values[i + 1:]:
                diffs = [fp["centroids_zyx"][b][axis] - fp["centroids_zyx"][a][axis]
                         for fp in fingerprints if a in fp["centroids_zyx"] and b in fp["centroids_zyx"]]
                if diffs and abs(np.mean(np.sign(diffs))) >= ORDERED_AXIS_AGREEMENT and abs(np.mean(diffs)) >= min_separation:
                    ordered.append(name)
                    break
            if name in ordered:
                break
    return ordered


def fingerprint(dataset: str | Path, cases=None) -> dict[str, Any]:
    root = Path(dataset)
    meta = read_dataset_json(root)
    cases = cases if cases is not None else list_cases(root)
    rng = np.random.default_rng(0)
    per_case = [case_fingerprint(c, rng=rng) for c in cases]
    n_channels = len(per_case[0]["_intensities"])
    stats = []
    for ch in range(n_channels):
        values = np.concatenate([fp["_intensities"][ch] for fp in per_case])
        stats.append({"mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values)),
                      "p00_5": float(np.percentile(values, 0.5)), "p99_5": float(np.percentile(values, 99.5)),
                      "min": float(values.min()), "max": float(values.max())})
    for fp in per_case:
        del fp["_intensities"]
    spacings = np.array([fp["spacing_xyz"] for fp in per_case])
    shapes = np.array([fp["shape_zyx"] for fp in per_case])
    n_classes = max(len(fp["voxels_per_class"]) for fp in per_case)
    totals = np.zeros(n_classes)
    for fp in per_case:
        totals[: len(fp["voxels_per_class"])] += fp["voxels_per_class"]
    return {
        "dataset": meta.get("name", root.name), "path": str(root.resolve()), "num_cases": len(cases),
        "median_spacing_xyz": [float(v) for v in np.median(spacings, 0)],
        "min_spacing_xyz": [float(v) for v in spacings.min(0)], "max_spacing_xyz": [float(v) for v in spacings.max(0)],
        "median_shape_zyx": [float(v) for v in np.median(shapes, 0)],
        "min_shape_zyx": [int(v) for v in shapes.min(0)], "max_shape_zyx": [int(v) for v in shapes.max(0)],
        "intensity_per_channel": stats,
        "class_frequencies": [float(v) for v in totals / totals.sum()],
        "label_ordered_axes": ordered_axes(per_case),
        "cases": per_case,
    }


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def propose_patch(arch: str, shape_zyx: list[float], config: dict[str, Any], slice_axis: str,
                  max_voxels: int = DEFAULT_MAX_PATCH_VOXELS) -> list[int]:
    """A patch near the median network-grid shape that the architecture accepts."""
    kind = model_kind(arch)
    if kind == "3d":
        divisor = [k * 8 for k in config.get("stem_kernel", [2, 2, 2])]  # stem then three 2x stages
        patch = [_round_to(s, d) for s, d in zip(shape_zyx, divisor)]
        while math.prod(patch) > max_voxels:  # shrink the largest axis until the budget holds
            axis = int(np.argmax([p / d for p, d in zip(patch, divisor)]))
            patch[axis] = max(divisor[axis], patch[axis] - divisor[axis])
        return patch
    divisor = {"ehanet": 32, "s2anet": 8}.get(arch, 32)
    in_plane = [s for a, s in zip("zyx", shape_zyx) if a != slice_axis]
    return [min(256, int(math.ceil(s / divisor) * divisor)) for s in in_plane]


def make_plan(dataset: str | Path, arch: str, name: str | None = None, max_patch_voxels: int = DEFAULT_MAX_PATCH_VOXELS,
              target_spacing_xyz: list[float] | None = None) -> dict[str, Any]:
    root = Path(dataset)
    meta = read_dataset_json(root)
    cases = list_cases(root)
    train, val = split_cases(cases)
    fp = fingerprint(root, cases)
    kind = model_kind(arch)
    spacing = list(target_spacing_xyz or fp["median_spacing_xyz"])
    slice_axis = "z"
    if kind in ("2d", "2.5d"):
        slice_axis = "zyx"[int(np.argmax(spacing[::-1]))]  # slices across the coarsest axis
    scale = [m / t for m, t in zip(fp["median_spacing_xyz"][::-1], spacing[::-1])]
    shape_net = [s * f for s, f in zip(fp["median_shape_zyx"], scale)]
    config = {**CPU_MODEL_CONFIGS.get(arch, {})}
    patch = propose_patch(arch, shape_net, config, slice_axis, max_patch_voxels)
    labels = card_labels(fp["dataset"], label_names(meta))
    num_classes = 1 + max(label["value"] for label in labels)
    modalities = channel_names(meta)
    config.update({"in_channels": len(modalities), "num_classes": num_classes})
    if arch == "e2miseg":
        config["patch_size"] = patch
    if arch == "ehanet":
        config["binary"] = num_classes == 2
    channels = []
    for index, text in enumerate(modalities):
        code = modality_code(text)
        stats = fp["intensity_per_channel"][index]
        norm = ({"scheme": "ct", "lower": stats["p00_5"], "upper": stats["p99_5"], "mean": stats["mean"], "std": max(stats["std"], 1e-6)}
                if code == "CT" else {"scheme": "zscore"})
        channels.append({"name": text, "modality": code, "normalization": norm})
    mirror = [a for a in "xyz" if a not in fp["label_ordered_axes"] and (kind == "3d" or a != slice_axis)]
    inference: dict[str, Any] = {"kind": kind, "patch_size_zyx": patch, "mirror_axes": mirror}
    if kind in ("2d", "2.5d"):
        inference["slice_axis"] = slice_axis
    if kind == "2.5d":
        inference["slices"] = int(config.get("slices", 3))
    card = {
        "format_version": 1,
        "name": name or f"{arch}-{fp['dataset'].lower().replace('_', '-')}",
        "version": "1.0.0",
        "description": f"{arch} trained on {fp['dataset']} with e2miseg-train",
        "architecture": {"name": arch, "config": config},
        "labels": labels,
        "channels": channels,
        # Hippocampus crops contain real zero-valued background; cropping would change nothing useful.
        "preprocessing": {"target_spacing_xyz": [float(s) for s in spacing], "crop_to_nonzero": False},
        "inference": inference,
        "license": data_licence(meta),
    }
    if meta.get("reference"):
        card["attribution"] = f"Training data: {meta.get('name', root.name)} - {meta['reference']}"
    validate_card(card)
    return {
        "plan_version": PLAN_VERSION, "dataset": str(root.resolve()), "dataset_name": fp["dataset"], "arch": arch,
        "kind": kind, "card": card,
        "split": {"rule": "patients sorted by id; index % 5 == 4 -> validation",
                  "train": [c.name for c in train], "val": [c.name for c in val]},
        "fingerprint": {k: v for k, v in fp.items() if k != "cases"},
        "planned_on": platform.node(),
    }


def data_licence(meta: dict[str, Any]) -> str:
    """The model card licence follows the training data's terms (weights are derived from them)."""
    licence = meta.get("licence") or meta.get("license") or "unknown data licence"
    return f"Weights derived from {meta.get('name', 'the training data')} under {licence}"


def write_plan(plan: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    return path


def read_plan(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
