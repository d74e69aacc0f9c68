"""Linear resampling between the input grid and the network grid, slab by slab.

Both grids share the input's direction matrix (``preprocess.target_grid`` copies it), so the
continuous index of a voxel on one grid is an affine function of its index on the other, axis by
axis. Trilinear interpolation is then separable: three 1D passes give the value ITK's linear
resampler gives, and its nearest-neighbour extrapolation at the border is the same as clamping the
coordinate to the grid. Any range of output slices needs only the two source slices bracketing each
of them, which is what lets the pipeline stitch, resample and label a CT volume slab by slab
instead of holding one full-resolution float volume per class.

Grids are described by ``Geometry`` (size, spacing, origin, direction) rather than SimpleITK
images, because an image of the grid allocates its voxels even when only its geometry is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

# Continuous coordinates this close to an integer are that integer: the axis is copied, not blended.
_IDENTITY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Geometry:
    """Where a grid sits in physical (LPS) space, in SimpleITK's (x, y, z) conventions."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3, row-major

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(int(s) for s in image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(self.size[::-1])

    # The SimpleITK-style getters let a Geometry stand in wherever only the geometry is read.
    def GetSize(self) -> tuple[int, ...]:  # noqa: N802 - SimpleITK's spelling
        return self.size

    def GetSpacing(self) -> tuple[float, ...]:  # noqa: N802
        return self.spacing

    def GetOrigin(self) -> tuple[float, ...]:  # noqa: N802
        return self.origin

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self.direction

    def index_to_physical(self, index_xyz: Sequence[float]) -> np.ndarray:
        direction = np.array(self.direction, dtype=float).reshape(3, 3)
        return np.array(self.origin) + direction @ (np.array(self.spacing) * np.asarray(index_xyz, dtype=float))

    def image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """A SimpleITK image of this grid (allocates its voxels: for APIs that want a reference image)."""
        image = sitk.Image([int(s) for s in self.size], pixel_type)
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(o) for o in self.origin])
        image.SetDirection(self.direction)
        return image

    def attach(self, array_zyx: np.ndarray) -> sitk.Image:
        """``array_zyx`` as an image on this grid."""
        image = sitk.GetImageFromArray(array_zyx)
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(o) for o in self.origin])
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class AxisMap:
    """For each target index along one axis: the two source neighbours and the weight of the upper one."""

    lo: np.ndarray  # int64
    hi: np.ndarray  # int64, lo + 1 except at the last source slice
    weight: np.ndarray  # float32 in [0, 1)
    identity: bool  # target index i is source index i (same size, no blending)

    @classmethod
    def from_coordinates(cls, coordinates: np.ndarray, source_length: int) -> "AxisMap":
        identity = (len(coordinates) == source_length
                    and bool(np.all(np.abs(coordinates - np.arange(source_length)) <= _IDENTITY_TOLERANCE)))
        clamped = np.clip(coordinates, 0.0, source_length - 1)
        lo = np.minimum(np.floor(clamped).astype(np.int64), source_length - 1)
        hi = np.minimum(lo + 1, source_length - 1)
        weight = (clamped - lo).astype(np.float32)
        if identity:
            lo, hi, weight = np.arange(source_length), np.arange(source_length), np.zeros(source_length, np.float32)
        return cls(lo, hi, weight, identity)

    @classmethod
    def same(cls, length: int) -> "AxisMap":
        return cls.from_coordinates(np.arange(length, dtype=float), length)

    def __len__(self) -> int:
        return len(self.lo)

    def source_range(self, start: int, stop: int) -> tuple[int, int]:
        """Source slices [first, last + 1) that target slices [start, stop) read."""
        return int(self.lo[start]), int(self.hi[stop - 1]) + 1

    def ready_until(self, source_stop: int, source_length: int) -> int:
        """How many target slices can be computed from source slices [0, source_stop)."""
        if source_stop >= source_length:
            return len(self)
        return int(np.searchsorted(self.hi, source_stop, side="left"))


def compact(axis_map: AxisMap, start: int, stop: int, offset: int) -> tuple[np.ndarray, AxisMap]:
    """The source slices that target slices [start, stop) read, and the map onto them alone.

    For a block holding source slices from ``offset`` on: ``slices`` index the block, and
    ``local`` maps target index ``start + i`` (as its index i) into ``block.take(slices)``. When
    downsampling, most source slices are read by no target slice; elementwise work (normalisation)
    done on the kept ones alone gives the same bits as on the whole block. Not for identity maps.
    """
    lo, hi = axis_map.lo[start:stop] - offset, axis_map.hi[start:stop] - offset
    slices = np.union1d(lo, hi)
    return slices, AxisMap(np.searchsorted(slices, lo), np.searchsorted(slices, hi), axis_map.weight[start:stop], False)


def axis_maps(source: Geometry, target: Geometry) -> list[AxisMap]:
    """Per array axis (z, y, x): where each target index falls on the source grid.

    The grids must share their direction; the map is then diagonal and each axis independent.
    """
    direction_s = np.array(source.direction, dtype=float).reshape(3, 3)
    direction_t = np.array(target.direction, dtype=float).reshape(3, 3)
    if not np.allclose(direction_s, direction_t, atol=1e-9):
        raise ValueError("slab-wise resampling needs grids with the same direction")
    # physical -> source continuous index, as ITK computes it (the inverse, not the transpose:
    # input directions are accepted up to 1e-3 away from orthonormal)
    to_source = np.linalg.inv(direction_s @ np.diag(source.spacing))
    offset = to_source @ (np.array(target.origin) - np.array(source.origin))
    scale = to_source @ direction_t @ np.diag(target.spacing)
    maps = []
    for axis_xyz in (2, 1, 0):
        coordinates = offset[axis_xyz] + scale[axis_xyz, axis_xyz] * np.arange(target.size[axis_xyz], dtype=float)
        maps.append(AxisMap.from_coordinates(coordinates, source.size[axis_xyz]))
    return maps


def interpolate(block: torch.Tensor, maps: dict[int, tuple[AxisMap, int, int, int]], order: Sequence[int]) -> torch.Tensor:
    """Linear interpolation of ``block`` along some of its dimensions, one pass per dimension.

    ``maps[dim] = (axis_map, target_start, target_stop, source_offset)``: the block holds source
    slices from ``source_offset`` on along ``dim``, and target slices [start, stop) are computed.
    Dimensions are visited in ``order``; for a fixed order every voxel's value is independent of the slab.
    """
    for dim in order:
        axis_map, start, stop, offset = maps[dim]
        if axis_map.identity:
            block = block.narrow(dim, start - offset, stop - start)
            continue
        shape = [1] * block.dim()
        shape[dim] = stop - start
        weight = torch.from_numpy(axis_map.weight[start:stop]).view(shape)
        block = blend(take(block, dim, axis_map.lo[start:stop] - offset), take(block, dim, axis_map.hi[start:stop] - offset), weight)
    return block


def take(block: torch.Tensor, dim: int, index: np.ndarray) -> torch.Tensor:
    """``block.index_select(dim, index)``, as a strided view when ``index`` is evenly spaced (every
    second slice of a compacted axis when downsampling): 2-5x faster than the gather, same values."""
    if len(index) > 1:
        steps = np.diff(index)
        if steps[0] > 0 and np.all(steps == steps[0]):
            where = [slice(None)] * block.dim()
            where[dim] = slice(int(index[0]), int(index[-1]) + 1, int(steps[0]))
            return block[tuple(where)]
    return block.index_select(dim, torch.from_numpy(index))


def blend(low: torch.Tensor, high: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``low + weight * (high - low)`` as three separate IEEE operations (no fused multiply-add), so a
    voxel gets the same bits whether it is computed in a whole-volume pass, a slab or on its own."""
    high = high - low
    high.mul_(weight)
    return high.add_(low)


def pass_order(source_shape: Sequence[int], target_shape: Sequence[int]) -> list[int]:
    """Dimensions in the order that keeps intermediate blocks smallest (shrinking axes first)."""
    return sorted(range(len(source_shape)), key=lambda d: target_shape[d] / max(1, source_shape[d]))


def slab_length(plane_voxels: int, bytes_per_voxel: int, budget_bytes: int) -> int:
    """Slices per slab so that a slab of planes stays within ``budget_bytes``."""
    return max(1, int(budget_bytes // max(1, plane_voxels * bytes_per_voxel)))
