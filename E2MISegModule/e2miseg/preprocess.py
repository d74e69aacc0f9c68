"""Preprocessing declared by the model card: crop, normalise, resample (with what it takes to undo it).

The output is a float32 array (C, z, y, x) on the "network grid" and a ``NetworkGrid`` that knows how
that grid sits in physical space, so probabilities can be resampled back onto the input grid exactly.
Normalisation and resampling run in slabs, so a CT volume is never held whole in float64 or twice in
float32 (``resample.py`` says why linear resampling can be done slab by slab).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from .card import channel_normalization
from .resample import Geometry, axis_maps, compact, interpolate, pass_order, slab_length

AXIS_INDEX_ZYX = {"z": 0, "y": 1, "x": 2}
# Below this relative difference the native grid is used as is: resampling would only blur.
SPACING_TOLERANCE = 0.02
# Voxels per chunk when a channel is normalised (16 MB in float64) and bytes per resampling slab.
_CHUNK_VOXELS = 1 << 21
# input types whose values float32 holds exactly (the rest are widened to float64 to normalise)
_EXACT_IN_FLOAT32 = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.float16, np.float32))
_SLAB_BYTES = 32 << 20
# Gather the read slices of an axis first when they are fewer than this share of the slab's slices.
_COMPACT_SHARE = 0.75


@dataclass
class NetworkGrid:
    """Where the preprocessed array lives: a crop box on the input grid and the resampled grid.

    Grids are kept as ``Geometry`` (no voxels); ``cropped``/``resampled`` build reference images on
    demand for code that wants SimpleITK images (e.g. the training cache resampling label maps).
    """

    crop_start_zyx: tuple[int, int, int]
    crop_stop_zyx: tuple[int, int, int]
    crop_geometry: Geometry
    network_geometry: Geometry | None  # None if the network runs on the (cropped) input grid

    @property
    def cropped(self) -> sitk.Image:
        return self.crop_geometry.image()

    @property
    def resampled(self) -> sitk.Image | None:
        return None if self.network_geometry is None else self.network_geometry.image()

    @property
    def network_reference(self) -> sitk.Image:
        return self.resampled if self.network_geometry is not None else self.cropped

    @property
    def network_shape_zyx(self) -> tuple[int, int, int]:
        return (self.network_geometry or self.crop_geometry).shape_zyx

    @property
    def box(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.crop_start_zyx, self.crop_stop_zyx))


def _row_chunks(array: np.ndarray, budget_voxels: int = _CHUNK_VOXELS) -> Iterator[slice]:
    """Slices along the first axis holding about ``budget_voxels`` voxels each."""
    rows = max(1, budget_voxels // max(1, int(np.prod(array.shape[1:], dtype=np.int64))))
    for start in range(0, array.shape[0], rows):
        yield slice(start, min(start + rows, array.shape[0]))


def nonzero_box(arrays: list[np.ndarray]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Bounding box of voxels that are non-zero in any channel (whole volume if none are).

    Computed slab by slab: the projections onto each axis are all that is needed.
    """
    shape = arrays[0].shape
    hits = [np.zeros(n, dtype=bool) for n in shape]
    for rows in _row_chunks(arrays[0]):
        mask = np.zeros((rows.stop - rows.start,) + shape[1:], dtype=bool)
        for array in arrays:
            mask |= array[rows] != 0
        hits[0][rows] |= mask.any(axis=(1, 2))
        hits[1] |= mask.any(axis=(0, 2))
        hits[2] |= mask.any(axis=(0, 1))
    if not hits[0].any():
        return (0, 0, 0), tuple(shape)
    start = tuple(int(np.flatnonzero(h)[0]) for h in hits)
    stop = tuple(int(np.flatnonzero(h)[-1]) + 1 for h in hits)
    return start, stop


@dataclass(frozen=True)
class Normalizer:
    """A channel's intensity normalisation with its statistics fixed, applied chunk by chunk.

    Statistics and arithmetic are in float64 (32/64-bit integers and doubles lose their contrast in
    float32: uint32 near 4e9 has a 512 step) but only a chunk at a time is ever widened, and the
    result is float32: a CT volume is never copied whole in double precision.
    """

    scheme: str
    low: float | None = None  # clip bounds (ct, percentile; outlier bounds for the z-scores)
    high: float | None = None
    mean: float = 0.0
    std: float = 1.0
    zero_outside: bool = False  # nonzero_zscore: voxels that were zero stay zero

    @classmethod
    def fit(cls, array: np.ndarray, scheme: dict[str, Any]) -> "Normalizer":
        kind = scheme["scheme"]
        if kind == "none":
            return cls(kind)
        if kind == "ct":
            return cls(kind, float(scheme["lower"]), float(scheme["upper"]), float(scheme["mean"]), float(scheme["std"]))
        low = high = None
        nonzero = kind == "nonzero_zscore"
        if kind == "percentile":  # np.percentile copies the array once, in its own (narrow) dtype
            values = array.astype(np.float32) if array.dtype == np.float16 else array
            low, high = (float(v) for v in np.percentile(values, [scheme.get("lower", 0.5), scheme.get("upper", 99.5)]))
        else:  # zscore, nonzero_zscore: only extreme outliers are clipped, before the statistics
            low, high = robust_clip_bounds(array, nonzero) or (None, None)
        mean, std = _mean_std(array, low, high, nonzero)
        return cls(kind, low, high, mean, max(std, 1e-8), nonzero)

    def apply(self, chunk: np.ndarray) -> np.ndarray:
        """The normalised float32 values of ``chunk``."""
        if self.scheme == "none":
            return chunk.astype(np.float32)
        if chunk.dtype in _EXACT_IN_FLOAT32:
            # every value is exact in float32 and the result is float32 anyway: the same numbers to
            # within an ulp, without the double-precision copy (half the time on a left-atrium MRI)
            wide = chunk.astype(np.float32)
            scale = np.float32(1.0 / self.std)
        else:
            wide = chunk.astype(np.float64)
            scale = 1.0 / self.std
        if self.low is not None:
            np.clip(wide, self.low, self.high, out=wide)
        wide -= self.mean
        wide *= scale
        if self.zero_outside:
            wide[chunk == 0] = 0.0
        return wide.astype(np.float32, copy=False)


# Outlier clipping for the z-score schemes: values further than ``_CLIP_WIDTHS`` times the 1st-99th
# percentile spread beyond those percentiles are clipped before the mean and spread are taken. One
# voxel at FLT_MAX, 1e30 or a -FLT_MAX NoData value otherwise sets the statistics alone and the image
# normalises to a constant (an empty segmentation); up to 1 % such voxels per side are absorbed. On
# the bundled models' validation cases the furthest voxel lies 3.14 spreads beyond the 99th percentile
# (ACDC; hippocampus 2.88, left atrium 0.93), so at 4 nothing of theirs is clipped and shipped models
# need no retraining (benchmarks/clip_outliers.py, docs/errors.md).
_CLIP_PERCENTILES = (1.0, 99.0)
_CLIP_WIDTHS = 4.0
_CLIP_SAMPLE = 1 << 20


def robust_clip_bounds(array: np.ndarray, nonzero: bool = False) -> tuple[float, float] | None:
    """``(low, high)`` outside which a voxel counts as an extreme outlier, or None when the image has no
    spread to measure outliers against (more than 98 % one value). Percentiles of an evenly strided
    sample of at most a million voxels (of the non-zero ones for ``nonzero``): deterministic, and far
    cheaper than sorting a CT volume; the four-spread margin dwarfs the sampling error.
    Used by training (its cache preprocesses through ``preprocess``) and inference alike."""
    sample = array.reshape(-1)[:: max(1, array.size // _CLIP_SAMPLE)].astype(np.float64)
    if nonzero:
        sample = sample[sample != 0]
    if sample.size == 0:
        return None
    p_low, p_high = np.percentile(sample, _CLIP_PERCENTILES)
    spread = float(p_high - p_low)
    if not spread > 0:
        return None
    return float(p_low - _CLIP_WIDTHS * spread), float(p_high + _CLIP_WIDTHS * spread)


def _mean_std(array: np.ndarray, low: float | None, high: float | None, nonzero: bool) -> tuple[float, float]:
    """Mean and standard deviation (of the clipped values; of the non-zero ones if ``nonzero`` and
    there are any) in one chunked pass, shifted by a pilot mean so the sum of squares stays exact."""
    sample = array.reshape(-1)[:: max(1, array.size // 4096)].astype(np.float64)
    if low is not None:
        np.clip(sample, low, high, out=sample)
    if nonzero and np.any(sample != 0):
        sample = sample[sample != 0]
    pilot = float(sample.mean())
    count = total = squares = 0.0
    for rows in _row_chunks(array):
        chunk = array[rows]
        wide = chunk.astype(np.float64)
        if low is not None:
            np.clip(wide, low, high, out=wide)
        if nonzero:
            wide = wide[chunk != 0]
        wide -= pilot
        count += wide.size
        total += float(wide.sum())
        # einsum, not np.dot: called right after other multi-threaded work, as it is in a case, np.dot
        # (the BLAS) took 7-11 ms on a 300 kB left-atrium MRI and einsum 0.4 ms
        squares += float(np.einsum("i,i->", wide.ravel(), wide.ravel()))
    if count == 0:  # nonzero_zscore of an all-zero image: nothing to shift or scale
        return 0.0, 0.0
    shift = total / count
    return pilot + shift, float(np.sqrt(max(squares / count - shift * shift, 0.0)))


def normalize(array: np.ndarray, scheme: dict[str, Any]) -> np.ndarray:
    """Intensity normalisation of a whole array, in float32; statistics never divide by zero."""
    normalizer = Normalizer.fit(array, scheme)
    out = np.empty(array.shape, dtype=np.float32)
    for rows in _row_chunks(array):
        out[rows] = normalizer.apply(array[rows])
    return out


def target_grid(reference: Geometry, target_spacing_xyz: list[float] | None, keep_axis: str | None) -> Geometry | None:
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
    return Geometry(tuple(int(s) for s in new_size), tuple(float(s) for s in new_spacing), tuple(float(o) for o in origin),
                    tuple(reference.GetDirection()))


def resample_array(array: np.ndarray, source: sitk.Image, target: sitk.Image, interpolator=sitk.sitkLinear) -> np.ndarray:
    """Resample a (z, y, x) array from ``source``'s grid onto ``target``'s grid with SimpleITK
    (any interpolator; the training cache resamples label maps with nearest neighbour)."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(source)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(target)
    resampler.SetInterpolator(interpolator)
    resampler.SetUseNearestNeighborExtrapolator(True)  # edge voxels of the input grid fall just outside
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def _resample_into(source: np.ndarray, normalizer: Normalizer, source_grid: Geometry, target_grid_: Geometry,
                   out: np.ndarray) -> None:
    """Normalise and linearly resample ``source`` onto ``out`` slab by slab along z (no whole-volume temporaries)."""
    maps = axis_maps(source_grid, target_grid_)
    order = pass_order(source.shape, out.shape)
    rows_per_target = max(1.0, source.shape[0] / out.shape[0])
    step = max(1, min(slab_length(out.shape[1] * out.shape[2], 12, _SLAB_BYTES),
                      int(slab_length(source.shape[1] * source.shape[2], 12, _SLAB_BYTES) / rows_per_target)))
    for start in range(0, out.shape[0], step):
        stop = min(start + step, out.shape[0])
        first, last = maps[0].source_range(start, stop)
        raw = source[first:last]
        spans = {0: (maps[0], start, stop, first), 1: (maps[1], 0, out.shape[1], 0), 2: (maps[2], 0, out.shape[2], 0)}
        # Downsampled axes: gather the source slices that are read before normalising (elementwise, so the
        # same bits) instead of normalising the whole slab: a 512x512 CT plane at 3 mm keeps 274 of 512
        # rows and columns, 29 % of its voxels. Axes that keep most slices are not worth the gather.
        for dim, (axis_map, target_start, target_stop, offset) in spans.items():
            if axis_map.identity:
                continue
            slices, local = compact(axis_map, target_start, target_stop, offset)
            if len(slices) < _COMPACT_SHARE * raw.shape[dim]:
                raw = raw.take(slices, axis=dim)
                spans[dim] = (local, 0, target_stop - target_start, 0)
        block = torch.from_numpy(normalizer.apply(raw))
        out[start:stop] = interpolate(block, spans, order).numpy()


def preprocess(channels: list[sitk.Image], card: dict[str, Any]) -> tuple[np.ndarray, NetworkGrid]:
    """Crop, normalise and resample the input channels as the card declares.

    Works in slabs: besides the input and the float32 result, memory holds a few slices at a time.
    """
    arrays = [sitk.GetArrayViewFromImage(image) for image in channels]
    reference = Geometry.of(channels[0])
    if card["preprocessing"]["crop_to_nonzero"]:
        start, stop = nonzero_box(arrays)
    else:
        start, stop = (0, 0, 0), tuple(arrays[0].shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    cropped = Geometry(tuple(int(b - a) for a, b in zip(start[::-1], stop[::-1])), reference.spacing,
                       tuple(float(v) for v in reference.index_to_physical(start[::-1])), reference.direction)
    kind = card["inference"]["kind"]
    keep_axis = card["inference"]["slice_axis"] if kind in ("2d", "2.5d") else None
    resampled = target_grid(cropped, card["preprocessing"]["target_spacing_xyz"], keep_axis)
    out = np.empty((len(arrays),) + (resampled or cropped).shape_zyx, dtype=np.float32)
    for index, array in enumerate(arrays):
        source = array[box]
        normalizer = Normalizer.fit(source, channel_normalization(card, index))
        if resampled is None:
            for rows in _row_chunks(source):
                out[index, rows] = normalizer.apply(source[rows])
        else:
            _resample_into(source, normalizer, cropped, resampled, out[index])
    return out, NetworkGrid(tuple(start), tuple(stop), cropped, resampled)
