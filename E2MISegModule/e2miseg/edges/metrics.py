"""Overlap and boundary metrics in millimetres: Dice, HD95, ASSD and boundary F1 at a tolerance.

Surfaces are the mask voxels with a 6-neighbour outside the mask; distances are Euclidean between
voxel centres using the spacing (the same convention as MONAI's surface metrics). Empty cases follow
the usual rules: both empty is a perfect match; one empty gives infinite distances and F1 0.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .band import bounding_box


def surface(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    return mask & ~eroded


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to ``b``'s surface, and back."""
    union = a | b
    # crop to both masks plus a margin: the distance transform then costs the object's size, not the volume's
    box = bounding_box(union, (2, 2, 2))
    a, b = a[box], b[box]
    surface_a, surface_b = surface(a), surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing_zyx)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing_zyx)
    return to_b[surface_a], to_a[surface_b]


def binary_metrics(prediction: np.ndarray, reference: np.ndarray, spacing_zyx, tolerance_mm: float = 1.0) -> dict[str, float]:
    prediction = prediction.astype(bool)
    reference = reference.astype(bool)
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return {"dice": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0, "boundary_f1": 1.0}
    dice = 2.0 * float((prediction & reference).sum()) / total
    if not prediction.any() or not reference.any():
        return {"dice": dice, "hd95_mm": float("inf"), "assd_mm": float("inf"), "boundary_f1": 0.0}
    forward, backward = _surface_distances(prediction, reference, tuple(float(s) for s in spacing_zyx))
    both = np.concatenate([forward, backward])
    hd95 = max(float(np.percentile(forward, 95)), float(np.percentile(backward, 95)))
    precision = float((forward <= tolerance_mm).mean())
    recall = float((backward <= tolerance_mm).mean())
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"dice": dice, "hd95_mm": hd95, "assd_mm": float(both.mean()), "boundary_f1": f1}


def label_metrics(prediction: np.ndarray, reference: np.ndarray, spacing_zyx, values: list[int],
                  tolerance_mm: float = 1.0) -> dict[int, dict[str, float]]:
    """``binary_metrics`` for each label value (arrays are z, y, x; spacing in the same order)."""
    return {value: binary_metrics(prediction == value, reference == value, spacing_zyx, tolerance_mm) for value in values}
