"""The effect's arithmetic without Slicer: a painted stroke in index space to voxels to add and remove.

Kept apart from SegmentEditorEffect.py (which needs the Slicer application) so it is tested in plain
Python; the refinement itself is the engine's ``e2miseg.edges.refine_in_region``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from e2miseg.edges import refine_in_region, stroke_region


def strokeRefinement(source_kji: np.ndarray, segment_kji: np.ndarray, strokeIjk: np.ndarray, extentStartIjk: Sequence[int],
                     spacingIjk: Sequence[float], radiusMm: float, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxels to add to and remove from the segment so its edge follows the image under the stroke.

    :param source_kji: source volume intensities on the segment's grid, (k, j, i).
    :param segment_kji: the selected segment's mask on that grid.
    :param strokeIjk: stroke points as continuous (i, j, k) indices of the grid (extent-based).
    :param extentStartIjk: the grid's extent start (vtkOrientedImageData extents need not start at 0).
    :param spacingIjk: voxel size (mm) along i, j, k.
    """
    spacingZyx = tuple(float(s) for s in spacingIjk[::-1])
    points = np.asarray(strokeIjk, dtype=np.float64).reshape(-1, 3) - np.asarray(extentStartIjk, dtype=np.float64)
    region = stroke_region(segment_kji.shape, points, spacingZyx, radiusMm)
    segment = segment_kji.astype(bool)
    if not region.any():
        return np.zeros_like(segment), np.zeros_like(segment)
    refined = refine_in_region(source_kji.astype(np.float32), segment, region, spacingZyx, strength=strength)
    return refined & ~segment, segment & ~refined
