"""Where the windows go: sliding-window grids, Gaussian importance weights, padding, slice stacks."""
from __future__ import annotations

import math
from functools import lru_cache
from itertools import product

import numpy as np


def window_starts(size: int, patch: int, step: float) -> list[int]:
    """Start offsets of windows of length ``patch`` covering ``size`` with stride ``<= patch*step``.

    The first window starts at 0 and the last ends at ``size``; the rest are spread evenly between,
    so every voxel is covered and overlaps are as uniform as the integer grid allows.
    """
    if patch >= size:
        return [0]
    # a stride under one voxel (tiny patch x small step) would only repeat windows
    count = math.ceil((size - patch) / max(1.0, patch * step)) + 1
    span = size - patch
    return [int(round(i * span / (count - 1))) for i in range(count)]


def window_grid(shape: tuple[int, ...], patch: tuple[int, ...], step: float) -> list[tuple[slice, ...]]:
    """All windows (as slices) over an array of ``shape`` (already padded to at least ``patch``)."""
    axes = [window_starts(s, p, step) for s, p in zip(shape, patch)]
    return [tuple(slice(o, o + p) for o, p in zip(origin, patch)) for origin in product(*axes)]


@lru_cache(maxsize=8)
def gaussian_weights(patch: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Importance map peaking at the window centre, so window borders (least context) count least.

    Normalised to a maximum of 1 and clamped at 1e-3 so no voxel ever gets zero weight.
    """
    weights = np.ones((), dtype=np.float64)
    for length in patch:
        centre = (length - 1) / 2.0
        sigma = max(length * sigma_scale, 1e-3)
        axis = np.exp(-0.5 * ((np.arange(length) - centre) / sigma) ** 2)
        weights = np.multiply.outer(weights, axis)
    weights = weights / weights.max()
    weights = np.maximum(weights, 1e-3)
    result = weights.astype(np.float32)
    result.setflags(write=False)
    return result


def pad_to_at_least(array: np.ndarray, minimum: tuple[int, ...]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the trailing spatial axes symmetrically up to ``minimum``; return the crop back.

    Zero is the mean intensity after normalisation, so padding looks like neutral tissue.
    """
    spatial = array.shape[-len(minimum):]
    pads = [max(0, m - s) for s, m in zip(spatial, minimum)]
    if not any(pads):
        return array, tuple(slice(0, s) for s in spatial)
    widths = [(0, 0)] * (array.ndim - len(minimum)) + [(p // 2, p - p // 2) for p in pads]
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, spatial))
    return np.pad(array, widths), crop


def pad_to_multiple(array: np.ndarray, divisor: int, axes: int = 2) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the last ``axes`` axes to multiples of ``divisor`` (for strided 2D encoders)."""
    spatial = array.shape[-axes:]
    target = tuple(int(math.ceil(s / divisor) * divisor) for s in spatial)
    return pad_to_at_least(array, target)


def slice_stack_indices(count: int, index: int, slices: int) -> list[int]:
    """Indices of the ``slices`` neighbours centred on ``index``, replicating the edge slices."""
    half = slices // 2
    return [min(max(index + offset, 0), count - 1) for offset in range(-half, half + 1)]
