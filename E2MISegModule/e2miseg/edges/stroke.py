"""A painted stroke (Segment Editor effect "E2MISeg edge refine") to voxels to add and remove.

Lives in the engine, not beside the effect: Slicer loads the effect file as a module named after its
folder, not as a package member (qSlicerScriptedUtils::loadSourceAsModule), so the effect cannot import
its own folder's modules; the engine is on sys.path and is tested in plain Python.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .refine import refine_in_region
from .region import stroke_region


def refine_under_stroke(source_kji: np.ndarray, segment_kji: np.ndarray, stroke_ijk: np.ndarray,
                        extent_start_ijk: Sequence[int], spacing_ijk: Sequence[float], radius_mm: float,
                        strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxels to add to and remove from the segment so its edge follows the image under the stroke.

    :param source_kji: source volume intensities on the segment's grid, (k, j, i).
    :param segment_kji: the selected segment's mask on that grid.
    :param stroke_ijk: stroke points as continuous (i, j, k) indices of the grid (extent-based).
    :param extent_start_ijk: the grid's extent start (vtkOrientedImageData extents need not start at 0).
    :param spacing_ijk: voxel size (mm) along i, j, k.
    """
    spacing_zyx = tuple(float(s) for s in spacing_ijk[::-1])
    points = np.asarray(stroke_ijk, dtype=np.float64).reshape(-1, 3) - np.asarray(extent_start_ijk, dtype=np.float64)
    region = stroke_region(segment_kji.shape, points, spacing_zyx, radius_mm)
    segment = segment_kji.astype(bool)
    if not region.any():
        return np.zeros_like(segment), np.zeros_like(segment)
    refined = refine_in_region(source_kji.astype(np.float32), segment, region, spacing_zyx, strength=strength)
    return refined & ~segment, segment & ~refined
