"""Regions where an edit may act: an index box, a box in LPS millimetres, a painted stroke."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import E2MISegError


def box_mask_ijk(shape_zyx: tuple[int, int, int], corners: list[float]) -> np.ndarray:
    """Mask of the voxel box i0,j0,k0,i1,j1,k1 (inclusive corners, any order, clipped to the image)."""
    if len(corners) != 6:
        raise E2MISegError("an ROI needs six numbers i0,j0,k0,i1,j1,k1")
    low = np.minimum(corners[:3], corners[3:])
    high = np.maximum(corners[:3], corners[3:])
    mask = np.zeros(shape_zyx, dtype=bool)
    size_ijk = shape_zyx[::-1]
    start = [max(0, int(np.ceil(v))) for v in low]
    stop = [min(n, int(np.floor(v)) + 1) for v, n in zip(high, size_ijk)]
    if any(a >= b for a, b in zip(start, stop)):
        raise E2MISegError(f"the ROI {corners} lies outside the image (size {list(size_ijk)}); give voxel indices inside it")
    mask[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] = True
    return mask


def box_mask_lps(image: sitk.Image, corners_mm: list[float]) -> np.ndarray:
    """Mask of voxels whose centre lies in the axis-aligned LPS box x0,y0,z0,x1,y1,z1 (mm)."""
    if len(corners_mm) != 6:
        raise E2MISegError("an ROI in mm needs six numbers x0,y0,z0,x1,y1,z1 (LPS)")
    low = np.minimum(corners_mm[:3], corners_mm[3:])
    high = np.maximum(corners_mm[:3], corners_mm[3:])
    points_lps = voxel_centres_lps(image)
    inside = np.all((points_lps >= low - 1e-6) & (points_lps <= high + 1e-6), axis=-1)
    if not inside.any():
        raise E2MISegError(f"the ROI {corners_mm} (LPS mm) contains no voxel centre of the image; check its coordinates")
    return inside


def voxel_centres_lps(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) LPS coordinates of every voxel centre."""
    from ..io import ijk_to_lps

    matrix = ijk_to_lps(image)
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1)
    return ijk @ matrix[:3, :3].T + matrix[:3, 3]


def stroke_region(shape_zyx: tuple[int, int, int], points_ijk: np.ndarray, spacing_zyx: tuple[float, float, float],
                  radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of a painted polyline given as continuous (i, j, k) indices.

    The line is sampled at a fraction of the smallest voxel so fast strokes leave no gaps; the
    distance is physical (index steps times spacing), which is exact for oblique grids too.
    """
    points = np.asarray(points_ijk, dtype=np.float64).reshape(-1, 3)
    region = np.zeros(shape_zyx, dtype=bool)
    if points.size == 0:
        return region
    spacing_ijk = np.asarray(spacing_zyx[::-1], dtype=np.float64)
    samples = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        length_mm = np.linalg.norm((b - a) * spacing_ijk)
        steps = max(1, int(np.ceil(length_mm / (0.5 * spacing_ijk.min()))))
        samples.append(a + np.outer(np.arange(1, steps + 1) / steps, b - a))
    samples = np.rint(np.concatenate(samples)).astype(int)
    size_ijk = np.asarray(shape_zyx[::-1])
    inside = np.all((samples >= 0) & (samples < size_ijk), axis=1)
    seeds = np.zeros(shape_zyx, dtype=bool)
    seeds[samples[inside, 2], samples[inside, 1], samples[inside, 0]] = True
    if not seeds.any():
        return region
    reach = [int(np.ceil(radius_mm / s)) + 1 for s in spacing_zyx]
    hits = np.argwhere(seeds)
    box = tuple(slice(max(0, lo - r), min(n, hi + r + 1)) for lo, hi, r, n in zip(hits.min(0), hits.max(0), reach, shape_zyx))
    distance = ndimage.distance_transform_edt(~seeds[box], sampling=spacing_zyx)
    region[box] = distance <= radius_mm
    return region
