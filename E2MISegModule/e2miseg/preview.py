"""A PNG overlay preview: mid slices in three orientations with the segment colours on the image.

Slices are shown in radiological convention (the volume is reoriented to LPS first, so the preview
looks the same whatever the file's direction matrix) with square pixels in millimetres.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .io import atomic_output, verify_image

PANEL_HEIGHT = 320  # pixels for the largest physical extent of the volume
FILL_ALPHA = 0.4


def _to_display(plane: np.ndarray, spacing_rows: float, spacing_cols: float, pixels_per_mm: float, order: int) -> np.ndarray:
    """Resample a slice to square pixels at one scale shared by all views."""
    zoom = (spacing_rows * pixels_per_mm, spacing_cols * pixels_per_mm)
    return ndimage.zoom(plane, zoom, order=order, mode="nearest", grid_mode=True)


def _mid_planes(image: sitk.Image, labels: sitk.Image):
    image = sitk.DICOMOrient(image, "LPS")
    labels = sitk.DICOMOrient(labels, "LPS")
    voxels = sitk.GetArrayViewFromImage(image).astype(np.float32)  # (S, P, L) index order
    classes = sitk.GetArrayFromImage(labels)  # a copy: a view would dangle once `labels` is freed
    sx, sy, sz = image.GetSpacing()
    # centre the views on the segmentation if there is one, else on the volume
    centre = np.array(ndimage.center_of_mass(classes > 0)) if classes.any() else np.array(classes.shape) / 2
    z, y, x = (int(round(c)) for c in centre)
    return [
        (voxels[z], classes[z], sy, sx),                              # axial: anterior up, patient left on the right
        (voxels[::-1, y, :], classes[::-1, y, :], sz, sx),            # coronal: superior up
        (voxels[::-1, :, x], classes[::-1, :, x], sz, sy),            # sagittal: superior up, anterior left
    ]


def overlay_rgb(image: sitk.Image, labels: sitk.Image, colors: Mapping[int, Sequence[float]]) -> np.ndarray:
    """The three-view overlay as an (H, W, 3) uint8 array."""
    panels = []
    extent_mm = max(n * s for n, s in zip(image.GetSize(), image.GetSpacing()))
    pixels_per_mm = PANEL_HEIGHT / extent_mm
    for grey, classes, spacing_rows, spacing_cols in _mid_planes(image, labels):
        grey = _to_display(grey, spacing_rows, spacing_cols, pixels_per_mm, order=1)
        classes = _to_display(classes, spacing_rows, spacing_cols, pixels_per_mm, order=0)
        low, high = np.percentile(grey, [0.5, 99.5])
        grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        for value, color in colors.items():
            mask = classes == value
            if not mask.any():
                continue
            color = np.asarray(color, dtype=np.float32)
            rgb[mask] = (1 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * color
            edge = mask & ~ndimage.binary_erosion(mask)
            rgb[edge] = color
        panels.append((rgb * 255).astype(np.uint8))
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in panels]
    gap = np.zeros((height, 8, 3), dtype=np.uint8)
    row = [panels[0]]
    for panel in panels[1:]:
        row += [gap, panel]
    return np.concatenate(row, axis=1)


def write_preview(image: sitk.Image, labels: sitk.Image, colors: Mapping[int, Sequence[float]], path: str | os.PathLike) -> None:
    rgb = overlay_rgb(image, labels, colors)
    image = sitk.GetImageFromArray(rgb, isVector=True)
    with atomic_output(path, verify_image(image)) as tmp:
        sitk.WriteImage(image, str(tmp))
