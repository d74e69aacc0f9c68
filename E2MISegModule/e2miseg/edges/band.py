"""Where refinement may act: the narrow band around boundaries, its bounding box, and soft class maps.

All distances are in millimetres (``spacing_zyx`` is the voxel size along the array axes), so a band
of 3 mm is three voxels of a 1 mm hippocampus scan and two in-plane voxels (and usually no
neighbouring slice) of a 1.56 x 1.56 x 10 mm cardiac stack.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[slice, slice, slice]


def boundary_mask(labels: np.ndarray, values: np.ndarray | list[int] | None = None) -> np.ndarray:
    """Voxels with a 6-neighbour of another label (both sides of each interface).

    With ``values``, only interfaces where at least one side is one of ``values`` count.
    """
    boundary = np.zeros(labels.shape, dtype=bool)
    interesting = None if values is None else np.isin(labels, values)
    for axis in range(labels.ndim):
        if labels.shape[axis] < 2:
            continue
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        differs = labels[lo] != labels[hi]
        if interesting is not None:
            differs &= interesting[lo] | interesting[hi]
        boundary[lo] |= differs
        boundary[hi] |= differs
    return boundary


def bounding_box(mask: np.ndarray, margin_zyx: tuple[int, int, int] = (0, 0, 0)) -> Box | None:
    """Slices covering ``mask`` grown by ``margin_zyx`` voxels (clipped to the array); None if empty."""
    hits = ndimage.find_objects(mask.astype(np.uint8))
    if not hits or hits[0] is None:
        return None
    return tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(hits[0], margin_zyx, mask.shape))


def margin_voxels(distance_mm: float, spacing_zyx: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(np.ceil(distance_mm / s)) for s in spacing_zyx)


def band_mask(labels: np.ndarray, spacing_zyx: tuple[float, float, float], band_mm: float,
              values: list[int] | None = None) -> np.ndarray:
    """Voxels within ``band_mm`` of a boundary (voxel centres, physical distance)."""
    boundary = boundary_mask(labels, values)
    band = np.zeros(labels.shape, dtype=bool)
    box = bounding_box(boundary, margin_voxels(band_mm, spacing_zyx))
    if box is None:
        return band
    # distance from each voxel to the nearest boundary voxel, only inside the box that can matter
    distance = ndimage.distance_transform_edt(~boundary[box], sampling=spacing_zyx)
    band[box] = distance <= band_mm
    return band


def signed_distance(mask: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Signed distance in mm, negative inside; the interface sits at 0 between the two voxel layers."""
    if mask.all():
        return np.full(mask.shape, -1e3, dtype=np.float32)
    if not mask.any():
        return np.full(mask.shape, 1e3, dtype=np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_zyx)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_zyx)
    half = 0.5 * min(spacing_zyx)  # voxels either side of the interface are half a step from it
    return np.where(mask, half - inside, outside - half).astype(np.float32)


def soft_probabilities(labels: np.ndarray, classes: list[int], spacing_zyx: tuple[float, float, float],
                       width_mm: float) -> np.ndarray:
    """Class probabilities (C, z, y, x) from a label map: a softmax of signed distances / ``width_mm``.

    A voxel on the interface of two labels gets about 0.5/0.5; ``width_mm`` away it is ~0.88 sure.
    This stands in for network probabilities when refining a segmentation someone drew or edited.
    """
    logits = np.empty((len(classes),) + labels.shape, dtype=np.float32)
    for index, value in enumerate(classes):
        logits[index] = -signed_distance(labels == value, spacing_zyx) / width_mm
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits
