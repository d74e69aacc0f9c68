"""Boundary uncertainty: a per-voxel map from class probabilities and the regions most worth a look.

The map is the entropy of the class probabilities divided by log(C), so 0 is certain and 1 is a
coin toss between all classes; two classes at 50/50 give log 2 / log C. Regions are connected
groups of uncertain voxels near a predicted boundary, ranked by summed uncertainty, so a long
doubtful edge comes before a single doubtful voxel.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .band import band_mask

DEFAULT_THRESHOLD = 0.3
DEFAULT_REGION_BAND_MM = 2.0
# An uncertain rim often runs all round an organ as one component; it is cut into patches of about
# this size so "next uncertain edge" visits places a reader can take in at one glance.
DEFAULT_PATCH_MM = 15.0


def entropy_map(probabilities: np.ndarray) -> np.ndarray:
    """Normalised entropy (z, y, x) in [0, 1] of probabilities (C, z, y, x)."""
    classes = probabilities.shape[0]
    if classes < 2:
        return np.zeros(probabilities.shape[1:], dtype=np.float32)
    result = np.zeros(probabilities.shape[1:], dtype=np.float32)
    for plane in probabilities:  # one class at a time: no C-sized temporary
        p = np.clip(plane, 1e-12, 1.0).astype(np.float32)
        result -= p * np.log(p)
    result /= np.log(classes)
    return np.clip(result, 0.0, 1.0)


def uncertainty_image(probabilities: sitk.Image | np.ndarray, reference: sitk.Image | None = None) -> sitk.Image:
    """Entropy map as a float32 image on the probabilities' (or ``reference``'s) grid."""
    if isinstance(probabilities, sitk.Image):
        array = np.moveaxis(sitk.GetArrayViewFromImage(probabilities), -1, 0)
        reference = probabilities
    else:
        array = probabilities
    image = sitk.GetImageFromArray(entropy_map(array))
    image.CopyInformation(reference)
    return image


def uncertain_regions(uncertainty: np.ndarray, labels: np.ndarray, probabilities: np.ndarray | None,
                      reference: sitk.Image, threshold: float = DEFAULT_THRESHOLD,
                      band_mm: float | None = DEFAULT_REGION_BAND_MM, limit: int = 50,
                      patch_mm: float | None = DEFAULT_PATCH_MM) -> list[dict[str, Any]]:
    """Connected components of uncertain voxels within ``band_mm`` of a boundary, most uncertain first.

    Each region gives its summed uncertainty, voxel count, volume (mm^3), centroid in LPS mm,
    inclusive index box [i0, j0, k0, i1, j1, k1] and the pair of labels it hesitates between
    (the two most probable classes, or the labels meeting there when no probabilities are given).
    ``band_mm=None`` skips the boundary restriction (for maps that are already zero away from edges).
    Components wider than ``patch_mm`` are cut into patches of that size (None keeps them whole).
    """
    spacing_zyx = tuple(float(s) for s in reference.GetSpacing()[::-1])
    components, sums, order = ranked_components(uncertainty, labels, spacing_zyx, threshold, band_mm, patch_mm)
    if not len(order):
        return []
    order = order[:limit]
    slices = ndimage.find_objects(components)
    voxel_mm3 = float(np.prod(reference.GetSpacing()))
    regions = []
    for rank, position in enumerate(order, start=1):
        box = slices[position]
        inside = components[box] == position + 1
        kji = np.argwhere(inside) + [s.start for s in box]
        centre_ijk = kji.mean(axis=0)[::-1]
        centre_lps = reference.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre_ijk])
        regions.append({
            "rank": rank,
            "summed_uncertainty": float(sums[position]),
            "mean_uncertainty": float(sums[position] / len(kji)),
            "voxels": int(len(kji)),
            "volume_mm3": float(len(kji) * voxel_mm3),
            "centroid_lps_mm": [float(c) for c in centre_lps],
            "centroid_ijk": [float(c) for c in centre_ijk],
            "box_ijk": [int(box[2].start), int(box[1].start), int(box[0].start),
                        int(box[2].stop - 1), int(box[1].stop - 1), int(box[0].stop - 1)],
            "labels": _label_pair(kji, labels, probabilities),
        })
    return regions


def ranked_components(uncertainty: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, ...],
                      threshold: float = DEFAULT_THRESHOLD, band_mm: float | None = DEFAULT_REGION_BAND_MM,
                      patch_mm: float | None = DEFAULT_PATCH_MM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The regions ``uncertain_regions`` ranks, as voxels: (component ids (z, y, x), summed uncertainty per id,
    positions in ranked order). Region ``r`` (0-based rank) is ``components == order[r] + 1``.

    Kept apart so a measurement of the ranking (benchmarks/uncertainty_ranking.py) scores exactly the
    voxels the "Next uncertain edge" button visits, not a reconstruction of them.
    """
    candidates = uncertainty >= threshold
    if band_mm is not None:
        candidates &= band_mask(labels, spacing_zyx, band_mm)
    components, count = ndimage.label(candidates, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return components, np.zeros(0), np.zeros(0, dtype=np.int64)
    if patch_mm:
        components, count = _cut_into_patches(components, count, spacing_zyx, patch_mm)
    sums = ndimage.sum_labels(uncertainty, components, np.arange(1, count + 1))
    return components, sums, np.argsort(-sums)


def _cut_into_patches(components: np.ndarray, count: int, spacing_zyx: tuple[float, ...], patch_mm: float) -> tuple[np.ndarray, int]:
    """Relabel so that no region is wider than about ``patch_mm``: big components are split along a
    grid of ``patch_mm`` blocks, small ones stay whole even when they straddle a block border."""
    wide = np.zeros(count + 1, dtype=bool)
    for position, box in enumerate(ndimage.find_objects(components), start=1):
        wide[position] = any((s.stop - s.start) * step > patch_mm for s, step in zip(box, spacing_zyx))
    if not wide.any():
        return components, count
    voxels = np.nonzero(components)
    owner = components[voxels].astype(np.int64)
    split = wide[owner]
    blocks = [np.where(split, np.floor(v * step / patch_mm).astype(np.int64), -1) for v, step in zip(voxels, spacing_zyx)]
    _, new_ids = np.unique(np.stack([owner, *blocks], axis=1), axis=0, return_inverse=True)
    relabelled = np.zeros_like(components)
    relabelled[voxels] = new_ids.ravel() + 1
    return relabelled, int(new_ids.max()) + 1


def _label_pair(kji: np.ndarray, labels: np.ndarray, probabilities: np.ndarray | None) -> list[int]:
    z, y, x = kji.T
    if probabilities is not None:
        ranked = np.argsort(-probabilities[:, z, y, x], axis=0)[:2]
        pairs = np.sort(ranked, axis=0).T
        values, counts = np.unique(pairs, axis=0, return_counts=True)
        return [int(v) for v in values[counts.argmax()]]
    present, counts = np.unique(labels[z, y, x], return_counts=True)
    top = present[np.argsort(-counts)][:2]
    return sorted(int(v) for v in top) if len(top) == 2 else [0, int(top[0])] if top[0] else [0, 0]


def write_uncertainty(uncertainty: sitk.Image, regions: list[dict[str, Any]], path: str | os.PathLike) -> str:
    """Write the map to ``path`` and the regions to ``<path without extension>.regions.json``; return the JSON path."""
    from ..io import atomic_output, verify_image, write_text
    from ..paths import regions_path

    path = os.fspath(path)
    with atomic_output(path, verify_image(uncertainty)) as tmp:
        sitk.WriteImage(uncertainty, str(tmp), useCompression=True)
    json_path = os.fspath(regions_path(path))
    write_text(json.dumps({"threshold": DEFAULT_THRESHOLD, "band_mm": DEFAULT_REGION_BAND_MM,
                           "coordinates": "LPS millimetres; box_ijk inclusive voxel indices", "regions": regions}, indent=1),
               json_path)
    return json_path


def write_prediction_uncertainty(probabilities: sitk.Image, labels: sitk.Image, path: str | os.PathLike) -> str:
    """Entropy map of network probabilities (vector image on the input grid) and its ranked regions."""
    uncertainty = uncertainty_image(probabilities)
    probs = np.moveaxis(sitk.GetArrayViewFromImage(probabilities), -1, 0)
    regions = uncertain_regions(sitk.GetArrayViewFromImage(uncertainty), sitk.GetArrayViewFromImage(labels), probs, labels)
    return write_uncertainty(uncertainty, regions, path)
