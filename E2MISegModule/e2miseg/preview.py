"""The PNG preview: the input and the segmentation together, in axial, coronal and sagittal views.

What a radiologist expects of a key image:
- every view at its physical aspect, from the spacing (a 10 mm slice is drawn ten times taller than a
  1 mm pixel is wide; nearest-neighbour, so thick slices show as the slabs they are);
- radiological convention (the volume is reoriented to LPS first, so the file's direction matrix does
  not change the picture): patient left on the image's right, anterior up in axial, superior up in
  coronal and sagittal; orientation letters at the edges and a 10 mm scale bar per view;
- the views through the centre of the segmentation, each cropped to the body (air around it is not
  drawn) and to the segmentation with generous context, all drawn at the same height, so no panel
  sits in dead black space;
- the plain input above, the same views with the segments (filled and outlined) below, and a legend
  with the segment names, colours and volumes.

matplotlib draws it (text needs a font renderer); it is imported only when a preview is asked for.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import E2MISegError
from .io import atomic_output, verify_image

ROW_INCHES = 2.6  # height of one row of views
DPI = 110
FILL_ALPHA = 0.35
BACKGROUND = "#101010"


@dataclass
class View:
    name: str
    grey: np.ndarray  # rows x columns, display orientation
    classes: np.ndarray
    row_mm: float  # spacing along rows (vertical) and columns (horizontal)
    col_mm: float
    letters: tuple[str, str, str, str]  # top, bottom, left, right

    @property
    def aspect(self) -> float:
        """Physical width / height of the drawn view."""
        return self.grey.shape[1] * self.col_mm / (self.grey.shape[0] * self.row_mm)


def views_through_segmentation(image: sitk.Image, labels: sitk.Image) -> list[View]:
    """Axial, coronal and sagittal slices through the segmentation's centre (the volume's, if empty)."""
    image = sitk.DICOMOrient(image, "LPS")
    labels = sitk.DICOMOrient(labels, "LPS")
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)  # (S, P, L) index order after LPS
    if voxels.ndim == 4:
        voxels = voxels[..., 0]
    classes = sitk.GetArrayFromImage(labels)
    sx, sy, sz = image.GetSpacing()[:3]
    centre = np.array(ndimage.center_of_mass(classes > 0)) if classes.any() else (np.array(classes.shape) - 1) / 2
    z, y, x = (int(round(c)) for c in centre)
    views = [
        View("Axial", voxels[z], classes[z], sy, sx, ("A", "P", "R", "L")),
        View("Coronal", voxels[::-1, y, :], classes[::-1, y, :], sz, sx, ("S", "I", "R", "L")),
        View("Sagittal", voxels[::-1, :, x], classes[::-1, :, x], sz, sy, ("S", "I", "A", "P")),
    ]
    return [_cropped_to_content(view) for view in views]


def _display_range(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _cropped_to_content(view: View, margin_mm: float = 4.0, context: float = 0.6, min_context_mm: float = 25.0) -> View:
    """Crop away the air around the body, and far-away anatomy around the segmentation: each view
    keeps the segments with context on every side (``context`` times their extent, at least
    ``min_context_mm``), so a small structure in a large field of view is not drawn as a speck."""
    low, high = _display_range(view.grey)
    segmented = view.classes > 0
    content = ndimage.binary_opening(view.grey > low + 0.08 * (high - low), iterations=1) | segmented
    if not content.any():
        return view
    window = []
    for axis, spacing in ((0, view.row_mm), (1, view.col_mm)):
        other = 1 - axis
        present = np.flatnonzero(content.any(axis=other))
        start, stop = present[0] - int(np.ceil(margin_mm / spacing)), present[-1] + int(np.ceil(margin_mm / spacing)) + 1
        if segmented.any():
            # the bulk of the segments (2nd to 98th percentile of their pixels): a stray false positive
            # at the edge of the field of view must not widen the view back to everything
            first, last = np.percentile(np.nonzero(segmented)[axis], [2, 98]).round().astype(int)
            around = int(np.ceil(max(context * (last - first + 1) * spacing, min_context_mm) / spacing))
            start, stop = max(start, first - around), min(stop, last + around + 1)
        window.append(slice(max(start, 0), min(stop, content.shape[axis])))
    rows, cols = window
    return View(view.name, view.grey[rows, cols], view.classes[rows, cols], view.row_mm, view.col_mm, view.letters)


def overlay(grey: np.ndarray, classes: np.ndarray, colors: Mapping[int, Sequence[float]],
            display_range: tuple[float, float] | None = None) -> np.ndarray:
    """An (H, W, 3) float image: the grey image with each label filled translucently and outlined opaquely."""
    low, high = display_range or _display_range(grey)
    grey = np.clip((grey - low) / (high - low), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for value, color in colors.items():
        mask = classes == value
        if not mask.any():
            continue
        color = np.asarray(color, dtype=np.float32)
        rgb[mask] = (1 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * color
        rgb[mask & ~ndimage.binary_erosion(mask)] = color
    return rgb


def overlay_rgb(image: sitk.Image, labels: sitk.Image, colors: Mapping[int, Sequence[float]]) -> np.ndarray:
    """The three overlaid views side by side as one (H, W, 3) uint8 array, pixels square in mm (no text)."""
    panels = []
    views = views_through_segmentation(image, labels)
    height = max(int(round(v.grey.shape[0] * v.row_mm)) for v in views)
    for view in views:
        pixels_per_mm = height / (view.grey.shape[0] * view.row_mm)
        zoom = (view.row_mm * pixels_per_mm, view.col_mm * pixels_per_mm)
        grey = ndimage.zoom(view.grey, zoom, order=0)
        classes = ndimage.zoom(view.classes, zoom, order=0)
        panels.append((overlay(grey, classes, colors, _display_range(view.grey)) * 255).astype(np.uint8))
    height = min(p.shape[0] for p in panels)
    return np.concatenate([p[:height] for p in panels], axis=1)


def render_preview(image: sitk.Image, labels: sitk.Image, card: Mapping[str, Any], title: str | None = None,
                   volumes: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
    """The whole preview (views, names, orientation, scale bars, legend) as an (H, W, 3) uint8 array."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise E2MISegError("the preview needs matplotlib; install it (pip install matplotlib) or leave out --preview") from None
    colors = {label["value"]: label["color"] for label in card["labels"]}
    views = views_through_segmentation(image, labels)
    ratios = [view.aspect for view in views]
    legend_inches = 0.32 * (1 + (len(card["labels"]) - 1) // 3) + 0.2
    title_inches = 0.35 if title else 0.0
    height = 2 * ROW_INCHES + legend_inches + title_inches + 0.3
    figure = Figure(figsize=(ROW_INCHES * sum(ratios) + 0.1 * len(views), height), dpi=DPI, facecolor=BACKGROUND)
    bottom = (legend_inches + 0.05) / height
    top = 1 - (title_inches + 0.25) / height
    grid = figure.add_gridspec(2, len(views), width_ratios=ratios, left=0.005, right=0.995, bottom=bottom, top=top,
                               wspace=0.03 * len(views) / max(sum(ratios), 1e-6), hspace=0.02)
    for column, view in enumerate(views):
        display = _display_range(view.grey)
        extent = (0, view.grey.shape[1] * view.col_mm, view.grey.shape[0] * view.row_mm, 0)
        for row, picture in enumerate((overlay(view.grey, np.zeros_like(view.classes), {}, display),
                                       overlay(view.grey, view.classes, colors, display))):
            axes = figure.add_subplot(grid[row, column])
            axes.imshow(picture, extent=extent, interpolation="nearest", aspect="equal")
            axes.set_axis_off()
            _orientation_letters(axes, view.letters)
            if row == 0:
                axes.set_title(view.name, color="white", fontsize=10, pad=3)
            else:
                _scale_bar(axes, extent)
    handles = [Patch(facecolor=label["color"], edgecolor="white", label=_legend_text(label, volumes))
               for label in card["labels"]]
    figure.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), frameon=False, fontsize=9,
                  labelcolor="white", handlelength=1.2, bbox_to_anchor=(0.5, 0.0))
    if title:
        figure.suptitle(title, color="white", fontsize=10, y=1 - 0.12 / height)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _legend_text(label: Mapping[str, Any], volumes: Sequence[Mapping[str, Any]] | None) -> str:
    volume = next((v for v in volumes or () if v["value"] == label["value"]), None)
    return f"{label['name']} ({volume['ml']:.2f} mL)" if volume else label["name"]


def _orientation_letters(axes, letters: tuple[str, str, str, str]) -> None:
    style = {"color": "#ffd54f", "fontsize": 8, "fontweight": "bold", "transform": axes.transAxes}
    top, bottom, left, right = letters
    axes.text(0.5, 0.98, top, ha="center", va="top", **style)
    axes.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    axes.text(0.02, 0.5, left, ha="left", va="center", **style)
    axes.text(0.98, 0.5, right, ha="right", va="center", **style)


def _scale_bar(axes, extent) -> None:
    width, height = extent[1], extent[2]
    length = 10.0 if width >= 25 else 5.0
    x0, y0 = width - length - 0.04 * width, height - 0.05 * height
    axes.plot([x0, x0 + length], [y0, y0], color="white", linewidth=2, solid_capstyle="butt")
    axes.text(x0 + length / 2, y0 - 0.02 * height, f"{length:g} mm", color="white", fontsize=7, ha="center", va="bottom")


def write_preview(image: sitk.Image, labels: sitk.Image, card: Mapping[str, Any], path: str | os.PathLike,
                  title: str | None = None, volumes: Sequence[Mapping[str, Any]] | None = None) -> None:
    rgb = render_preview(image, labels, card, title, volumes)
    picture = sitk.GetImageFromArray(rgb, isVector=True)
    with atomic_output(path, verify_image(picture)) as tmp:
        sitk.WriteImage(picture, str(tmp))
