"""Preprocessing declared by the model card: crop, normalise, resample (with what it takes to undo it).

The output is a float32 array (C, z, y, x) on the "network grid" and a ``NetworkGrid`` that knows how
that grid sits in physical space, so probabilities can be resampled back onto the input grid exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from .card import channel_normalization

AXIS_INDEX_ZYX = {"z": 0, "y": 1, "x": 2}
# Below this relative difference the native grid is used as is: resampling would only blur.
SPACING_TOLERANCE = 0.02


@dataclass
class NetworkGrid:
    """Where the preprocessed array lives: a crop box on the input grid and the resampled grid."""

    crop_start_zyx: tuple[int, int, int]
    crop_stop_zyx: tuple[int, int, int]
    cropped: sitk.Image  # reference image of the cropped input grid (geometry only matters)
    resampled: sitk.Image | None  # reference image of the network grid, None if no resampling

    @property
    def network_reference(self) -> sitk.Image:
        return self.resampled if self.resampled is not None else self.cropped


def nonzero_box(arrays: list[np.ndarray]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Bounding box of voxels that are non-zero in any channel (whole volume if none are)."""
    mask = np.zeros(arrays[0].shape, dtype=bool)
    for array in arrays:
        mask |= array != 0
    if not mask.any():
        return (0, 0, 0), tuple(arrays[0].shape)
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start.append(int(hits[0]))
        stop.append(int(hits[-1]) + 1)
    return tuple(start), tuple(stop)


def normalize(array: np.ndarray, scheme: dict[str, Any]) -> np.ndarray:
    """Intensity normalisation in float32; statistics never divide by zero."""
    kind = scheme["scheme"]
    # 32/64-bit integers and doubles lose their contrast in float32 (uint32 near 4e9 has a 512 step):
    # compute in float64 and return float32 once the values are small.
    wide = array.dtype.itemsize >= 4 and array.dtype != np.float32
    if wide:
        return _normalize(array.astype(np.float64, copy=True), kind, scheme).astype(np.float32)
    return _normalize(array.astype(np.float32, copy=True), kind, scheme)


def _normalize(array: np.ndarray, kind: str, scheme: dict[str, Any]) -> np.ndarray:
    if kind == "none":
        return array
    if kind == "ct":
        np.clip(array, scheme["lower"], scheme["upper"], out=array)
        array -= scheme["mean"]
        array /= scheme["std"]
        return array
    if kind == "percentile":
        low, high = np.percentile(array, [scheme.get("lower", 0.5), scheme.get("upper", 99.5)])
        np.clip(array, low, high, out=array)
    mask = array != 0 if kind == "nonzero_zscore" else None
    values = array[mask] if mask is not None and mask.any() else array
    mean, std = float(values.mean()), float(values.std())
    array -= mean
    array /= max(std, 1e-8)
    if mask is not None:
        array[~mask] = 0.0
    return array


def target_grid(reference: sitk.Image, target_spacing_xyz: list[float] | None, keep_axis: str | None) -> sitk.Image | None:
    """The resampled grid covering ``reference``, or None if the spacing already matches.

    ``keep_axis`` keeps the native spacing along one axis (the slice axis of 2D/2.5D models).
    """
    if target_spacing_xyz is None:
        return None
    spacing = np.array(reference.GetSpacing(), dtype=float)
    target = np.array(target_spacing_xyz, dtype=float)
    if keep_axis is not None:
        xyz = {"x": 0, "y": 1, "z": 2}[keep_axis]
        target[xyz] = spacing[xyz]
    if np.all(np.abs(spacing - target) <= SPACING_TOLERANCE * target):
        return None
    size = np.array(reference.GetSize(), dtype=float)
    new_size = np.maximum(1, np.round(size * spacing / target)).astype(int)
    # Keep the physical extent centred: the first voxel centre moves by half the voxel-size change.
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    extent = size * spacing
    new_spacing = extent / new_size
    shift = (new_spacing - spacing) / 2.0
    origin = np.array(reference.GetOrigin()) + direction @ shift
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in new_spacing])
    grid.SetOrigin([float(o) for o in origin])
    grid.SetDirection(reference.GetDirection())
    return grid


def resample_array(array: np.ndarray, source: sitk.Image, target: sitk.Image, interpolator=sitk.sitkLinear) -> np.ndarray:
    """Resample a (z, y, x) float array from ``source``'s grid onto ``target``'s grid."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(source)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(target)
    resampler.SetInterpolator(interpolator)
    resampler.SetUseNearestNeighborExtrapolator(True)  # edge voxels of the input grid fall just outside
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def preprocess(channels: list[sitk.Image], card: dict[str, Any]) -> tuple[np.ndarray, NetworkGrid]:
    """Crop, normalise and resample the input channels as the card declares."""
    arrays = [sitk.GetArrayViewFromImage(image) for image in channels]
    reference = channels[0]
    if card["preprocessing"]["crop_to_nonzero"]:
        start, stop = nonzero_box(arrays)
    else:
        start, stop = (0, 0, 0), tuple(arrays[0].shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    cropped = sitk.RegionOfInterest(reference, [stop[2] - start[2], stop[1] - start[1], stop[0] - start[0]], [start[2], start[1], start[0]])
    kind = card["inference"]["kind"]
    keep_axis = card["inference"]["slice_axis"] if kind in ("2d", "2.5d") else None
    resampled = target_grid(cropped, card["preprocessing"]["target_spacing_xyz"], keep_axis)
    out = []
    for index, array in enumerate(arrays):
        data = normalize(array[box], channel_normalization(card, index))
        if resampled is not None:
            data = resample_array(data, cropped, resampled)
        out.append(data)
    return np.stack(out).astype(np.float32, copy=False), NetworkGrid(tuple(start), tuple(stop), cropped, resampled)
