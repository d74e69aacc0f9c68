"""Checks an input must pass before any work starts, each failing with the problem and the fix."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from .card import num_classes
from .errors import InputImageError, ResourceError
from .io import ImageHeader, header_of, read_channels, read_header, staged_for_reading

# What the pipeline holds at its peak, used to refuse a job up front rather than die half-way
# through it: per network-grid voxel and channel, the float32 input and a slab's temporaries;
# per class, a float32 band of slices (stitching is slab-wise, never a whole volume per class);
# a fixed allowance for the slab temporaries of resampling and labelling.
_BYTES_PER_CHANNEL_VOXEL = 4 * 2
_BYTES_PER_CLASS_BAND_VOXEL = 4 * 2
_SLAB_ALLOWANCE = 192 << 20


def available_memory_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is a dependency, but never fail a check for want of it
        return 1 << 62


def estimate_peak_bytes(shape_zyx: tuple[int, ...], channels: int, classes: int,
                        native_shape_zyx: tuple[int, ...] | None = None, input_bytes_per_voxel: int = 0,
                        band_slices: int | None = None) -> int:
    """Peak bytes of a job: network-grid buffers, plus (when given) the input held on its native grid.

    Class probabilities live in a band of ``band_slices`` network slices (the whole depth if not
    given); on the native grid the pipeline holds the input voxels as stored and the uint8 labels
    (twice while they become an image, and once more while a .seg.nrrd is written).
    """
    voxels = int(np.prod(shape_zyx, dtype=np.int64))
    band = voxels if band_slices is None else voxels // max(1, shape_zyx[0]) * min(band_slices, shape_zyx[0])
    needed = voxels * channels * _BYTES_PER_CHANNEL_VOXEL + band * classes * _BYTES_PER_CLASS_BAND_VOXEL + _SLAB_ALLOWANCE
    if native_shape_zyx is not None:
        native = int(np.prod(native_shape_zyx, dtype=np.int64))
        needed += native * (input_bytes_per_voxel + 3)
    return needed


def check_geometry(image: sitk.Image, name: str) -> None:
    if 0 in image.GetSize():
        raise InputImageError(f"{name} has a zero-size dimension {image.GetSize()}; the file holds no voxels")
    spacing = np.array(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputImageError(f"{name} has invalid voxel spacing {tuple(spacing)}; fix the header (spacing must be positive)")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-3):
        raise InputImageError(f"{name} has a non-orthonormal direction matrix; fix the header or resample the image")


def _network_shape(size_xyz: Sequence[int], spacing_xyz: Sequence[float], card: dict[str, Any]) -> tuple[int, ...] | None:
    """Array shape (z, y, x) on the model's grid, None if smaller than one voxel along some axis."""
    target = card["preprocessing"]["target_spacing_xyz"]
    shape_xyz = np.array(size_xyz, dtype=float)
    if target is not None:
        target = np.array(target, dtype=float)
        if card["inference"]["kind"] in ("2d", "2.5d"):  # the slice axis keeps its native spacing
            keep = {"x": 0, "y": 1, "z": 2}[card["inference"]["slice_axis"]]
            target[keep] = spacing_xyz[keep]
        shape_xyz = np.round(shape_xyz * np.array(spacing_xyz, dtype=float) / target)
    if shape_xyz.min() < 1:
        return None
    return tuple(int(s) for s in shape_xyz[::-1])


def check_memory(headers: Sequence[ImageHeader], card: dict[str, Any], memory_limit: int | None = None) -> None:
    """Refuse a job whose estimated peak memory exceeds what is available, before any voxel is read."""
    first = headers[0]
    shape = _network_shape(first.size_xyz, first.spacing_xyz, card) or (1, 1, 1)
    input_bytes = sum(h.bytes_per_component * (h.components if h.dimension < 4 else h.size[3] * h.components) for h in headers)
    settings = card["inference"]
    # 3D windows stitch in a band about two patches deep; 2D/2.5D models hold a few slices at a time
    band = 2 * settings["patch_size_zyx"][0] if settings["kind"] == "3d" else 4 * settings.get("batch_size", 1) * 2
    needed = estimate_peak_bytes(shape, len(card["channels"]), num_classes(card), tuple(first.size_xyz[::-1]), input_bytes,
                                 band_slices=band)
    limit = memory_limit if memory_limit is not None else memory_limit_bytes()
    if needed > limit:
        raise ResourceError(f"this volume needs about {_size(needed)} of memory but {_size(limit)} is available; "
                            f"crop the volume to the region of interest or use a machine with more memory")


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GB" if count >= 2**30 else f"{count / 2**20:.1f} MB"


def memory_limit_bytes() -> int:
    """Available memory, or ``$E2MISEG_MEMORY_LIMIT_MB`` when set (for shared machines and batch jobs)."""
    from .environment import memory_limit_mb

    override = memory_limit_mb()
    return int(override * 2**20) if override is not None else available_memory_bytes()


def channel_count_message(headers: Sequence[ImageHeader], card: dict[str, Any]) -> str:
    """One line that fits too few and too many: what the model takes, what was given, what to give."""
    expected = len(card["channels"])
    names = ", ".join(f"{c['name']} ({c['modality']})" for c in card["channels"])
    given = ", ".join(h.name if h.channels == 1 else f"{h.name} ({h.channels} channels)" for h in headers)
    got = sum(h.channels for h in headers)
    fix = (f"give exactly one single-channel image" if expected == 1 else
           f"give {expected} files, one per channel in that order, or one 4D image with {expected} channels")
    return (f"model '{card['name']}' takes {expected} input channel{'s' if expected > 1 else ''} [{names}] but was given "
            f"{got} ({given}); {fix}")


def check_headers(headers: Sequence[ImageHeader], card: dict[str, Any], memory_limit: int | None = None) -> None:
    """Everything that can be checked from the headers alone, cheapest first: no voxel has been read yet."""
    expected = len(card["channels"])
    got = sum(h.channels for h in headers)
    if got != expected:
        raise InputImageError(channel_count_message(headers, card))
    kind = card["inference"]["kind"]
    index = 0
    for header in headers:
        name = header.name
        if header.dimension not in (2, 3, 4):
            raise InputImageError(f"{name} has {header.dimension} dimensions; give a 3D volume (or a 4D image whose 4th axis is channels)")
        if 0 in header.size:
            raise InputImageError(f"{name} has a zero-size dimension {header.size}; the file holds no voxels, export the image again")
        if kind == "3d" and (header.dimension == 2 or 1 in header.size_xyz):
            raise InputImageError(f"{name} is a single 2D slice (size {header.size}) but model '{card['name']}' is a 3D model; "
                                  f"give a 3D volume or choose a 2D model")
        spacing = np.array(header.spacing_xyz, dtype=float)
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise InputImageError(f"{name} has invalid voxel spacing {tuple(header.spacing_xyz)}; fix the header (spacing must be positive)")
        direction = header.direction_3x3
        if not np.all(np.isfinite(direction)) or not np.allclose(direction @ direction.T, np.eye(3), atol=1e-3):
            raise InputImageError(f"{name} has a non-orthonormal direction matrix; fix the header or resample the image")
        for _ in range(header.channels):
            wanted = card["channels"][index]["modality"]
            if header.modality and wanted != "OT" and header.modality.upper() != wanted:
                raise InputImageError(f"{name} is a {header.modality} image but model '{card['name']}' expects {wanted} for channel "
                                      f"{index} ({card['channels'][index]['name']}); choose a model trained on {header.modality}")
            index += 1
    first = headers[0]
    for header in headers[1:]:
        if tuple(header.size_xyz) != tuple(first.size_xyz):
            raise InputImageError(f"{header.name} is not on the same grid as the first channel; resample the channels onto one grid first")
    if _network_shape(first.size_xyz, first.spacing_xyz, card) is None:
        target = card["preprocessing"]["target_spacing_xyz"]
        raise InputImageError(f"{first.name} is smaller than one voxel at the model's spacing {target} mm; "
                              f"check the voxel spacing in its header (it is too small to segment)")
    check_memory(headers, card, memory_limit)


def read_checked_channels(images: Sequence[str | os.PathLike | sitk.Image] | str | os.PathLike | sitk.Image,
                          card: dict[str, Any], memory_limit: int | None = None) -> list[sitk.Image]:
    """Read the model's input channels, checking headers before any voxel is loaded and voxels after."""
    if isinstance(images, (str, os.PathLike, sitk.Image)):
        images = [images]
    names = ["input image" if isinstance(item, sitk.Image) else Path(item).name for item in images]
    for item, name in zip(images, names):
        if isinstance(item, sitk.Image) and "complex" in item.GetPixelIDTypeAsString():
            raise InputImageError(f"{name} has complex voxels; pass the magnitude (sitk.ComplexToModulus) or the real part "
                                  f"(sitk.ComplexToReal), whichever the model was trained on")
        if not isinstance(item, sitk.Image) and Path(item).name.lower().endswith(".seg.nrrd"):
            raise InputImageError(f"{name} is a Slicer segmentation, not an image; give the image it was drawn on "
                                  f"(to refine its edges: e2miseg refine IMAGE {name} -o OUT.seg.nrrd)")
    with staged_for_reading(images) as readable:  # messages name the user's files, not the staged copies
        headers = [replace(read_header(item), name=name) for item, name in zip(readable, names)]
        check_headers(headers, card, memory_limit)
        channels = [_flush_tiny_direction(image) for image in read_channels(readable, names)]
    sources = [header.name for header in headers for _ in range(header.channels)]
    for index, image in enumerate(channels):
        name = sources[index] if len(channels) == 1 else f"{sources[index]} (channel {index}, {card['channels'][index]['name']})"
        check_geometry(image, name)  # again on the loaded image: a DICOM series' geometry is only known now
        check_intensities(sitk.GetArrayViewFromImage(image), name)
    return channels


def _flush_tiny_direction(image: sitk.Image) -> sitk.Image:
    """Direction entries below 1e-30 become 0: ITK's SVD inside every resampler fails on values whose
    squares underflow, and the segmentation then comes out silently misplaced. Physically they are 0."""
    direction = np.array(image.GetDirection(), dtype=float)
    tiny = (direction != 0) & (np.abs(direction) < 1e-30)
    if not tiny.any():
        return image
    direction[tiny] = 0.0
    image = sitk.Image(image)  # a copy (copy-on-write): the caller's image keeps its header
    image.SetDirection(tuple(direction))
    return image


def check_intensities(array: np.ndarray, name: str) -> None:
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputImageError(f"{name} has {bad} NaN or infinite voxels; fix or mask them before segmenting")
    low, high = array.min(), array.max()
    if low == high:
        what = "all zero" if low == 0 else f"constant ({low})"
        raise InputImageError(f"{name} is {what}: there is nothing to segment; check that the right series was exported")


def check_input(channels: list[sitk.Image], card: dict[str, Any], memory_limit: int | None = None) -> None:
    """Validate channel count, geometry, intensities and the memory the job will need (images in memory)."""
    check_headers([header_of(image, f"channel {i}") for i, image in enumerate(channels)], card, memory_limit)
    for index, image in enumerate(channels):
        check_intensities(sitk.GetArrayViewFromImage(image), f"channel {index} ({card['channels'][index]['name']})")
