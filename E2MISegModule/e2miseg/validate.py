"""Checks an input must pass before any work starts, each failing with the problem and the fix."""
from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from .card import num_classes
from .errors import InputImageError, ResourceError

# Bytes per voxel the pipeline holds at its peak, per class and per channel (float32 buffers),
# used to refuse a job up front rather than die half-way through it.
_BYTES_PER_CLASS_VOXEL = 4 * 2
_BYTES_PER_CHANNEL_VOXEL = 4 * 3


def available_memory_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is a dependency, but never fail a check for want of it
        return 1 << 62


def estimate_peak_bytes(shape_zyx: tuple[int, ...], channels: int, classes: int) -> int:
    voxels = int(np.prod(shape_zyx, dtype=np.int64))
    return voxels * (classes * _BYTES_PER_CLASS_VOXEL + channels * _BYTES_PER_CHANNEL_VOXEL)


def check_geometry(image: sitk.Image, name: str) -> None:
    if 0 in image.GetSize():
        raise InputImageError(f"{name} has a zero-size dimension {image.GetSize()}; the file holds no voxels")
    spacing = np.array(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputImageError(f"{name} has invalid voxel spacing {tuple(spacing)}; fix the header (spacing must be positive)")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-3):
        raise InputImageError(f"{name} has a non-orthonormal direction matrix; fix the header or resample the image")


def check_intensities(array: np.ndarray, name: str) -> None:
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputImageError(f"{name} has {bad} NaN or infinite voxels; fix or mask them before segmenting")
    low, high = array.min(), array.max()
    if low == high:
        what = "all zero" if low == 0 else f"constant ({low})"
        raise InputImageError(f"{name} is {what}: there is nothing to segment; check that the right series was exported")


def check_input(channels: list[sitk.Image], card: dict[str, Any], memory_limit: int | None = None) -> None:
    """Validate channel count, geometry, intensities and the memory the job will need."""
    expected = len(card["channels"])
    if len(channels) != expected:
        names = ", ".join(f"{c['name']} ({c['modality']})" for c in card["channels"])
        raise InputImageError(f"model '{card['name']}' needs {expected} input channel(s) [{names}] but got {len(channels)}; "
                              f"pass one file per channel or a 4D image")
    for index, image in enumerate(channels):
        name = f"channel {index} ({card['channels'][index]['name']})"
        check_geometry(image, name)
    shape = channels[0].GetSize()[::-1]
    target = card["preprocessing"]["target_spacing_xyz"]
    if target is not None:
        factors = np.array(channels[0].GetSpacing()) / np.array(target)
        shape = tuple(int(round(s * f)) for s, f in zip(shape, factors[::-1]))
        if min(shape) < 1:
            raise InputImageError(f"the volume is smaller than one voxel at the model's spacing {target} mm; it is too small to segment")
    needed = estimate_peak_bytes(tuple(max(s, 1) for s in shape), expected, num_classes(card))
    limit = memory_limit if memory_limit is not None else available_memory_bytes()
    if needed > limit:
        raise ResourceError(f"this volume needs about {needed / 2**30:.1f} GB of memory but {limit / 2**30:.1f} GB is available; "
                            f"crop the volume to the region of interest or use a machine with more memory")
    for index, image in enumerate(channels):
        check_intensities(sitk.GetArrayViewFromImage(image), f"channel {index} ({card['channels'][index]['name']})")
