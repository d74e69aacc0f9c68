"""Refining a segmentation file against its image: label maps and Slicer ``.seg.nrrd`` files.

A label map comes back with the same geometry and pixel type; a ``.seg.nrrd`` comes back with the same
geometry, segments, names, colours, terminology and layers: only the refined voxels (and the refined
segments' extents, which must cover them) differ. ``e2miseg refine`` and the Slicer module call
``refine_file``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import E2MISegError, InputImageError
from .refine import EdgeOptions


def reference_from_ijk_to_lps(matrix: np.ndarray, size_ijk: tuple[int, int, int]) -> sitk.Image:
    """An empty image with the geometry of a slicerio ijkToLPS matrix."""
    matrix = np.asarray(matrix, dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    direction = matrix[:3, :3] / spacing
    image = sitk.Image([int(n) for n in size_ijk], sitk.sitkUInt8)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.ravel()])
    image.SetOrigin([float(v) for v in matrix[:3, 3]])
    return image


def _read_label_map(path: Path) -> sitk.Image:
    from ..io import read_image

    labels = read_image(path)
    if labels.GetNumberOfComponentsPerPixel() != 1 or labels.GetDimension() != 3:
        raise InputImageError(f"{path.name} is not a 3D label map; give a single-component 3D label image or a .seg.nrrd")
    if labels.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        array = sitk.GetArrayViewFromImage(labels)
        if not np.array_equal(array, np.round(array)):
            raise InputImageError(f"{path.name} holds fractional values, not labels; give an integer label map")
    return labels


def _values_for_label_map(requested: Sequence[str] | None, present: list[int], name: str) -> list[int] | None:
    if requested is None:
        return None
    values = []
    for item in requested:
        try:
            value = int(item)
        except ValueError:
            raise E2MISegError(f"--labels {item}: a label map has no segment names; give label values ({', '.join(map(str, present))})") from None
        if value not in present:
            raise E2MISegError(f"label {value} is not in {name} (it has {', '.join(map(str, present)) or 'no labels'}); check --labels")
        values.append(value)
    return values


def parse_roi(text: str) -> list[float]:
    try:
        corners = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise E2MISegError(f"--roi {text} is not six finite numbers; give six comma-separated numbers, e.g. 10,20,5,40,60,12") from None
    if len(corners) != 6 or not all(math.isfinite(v) for v in corners):
        raise E2MISegError(f"--roi {text} is not six finite numbers; give six comma-separated numbers, e.g. 10,20,5,40,60,12")
    return corners


def roi_mask(reference: sitk.Image, roi: Sequence[float] | None, roi_space: str = "ijk") -> np.ndarray | None:
    """The editable mask of an ROI on ``reference``'s grid: inclusive voxel corners or an LPS box in mm."""
    from .region import box_mask_ijk, box_mask_lps

    if roi is None:
        return None
    corners = [float(v) for v in roi]
    if roi_space == "lps":
        return box_mask_lps(reference, corners)
    return box_mask_ijk(reference.GetSize()[::-1], corners)


def check_grid_agreement(image: sitk.Image, labels: sitk.Image, labelled_zyx: np.ndarray, image_name: str,
                         segmentation_name: str) -> None:
    """Refuse a segmentation whose labelled voxels do not all lie on the image; warn when the grids differ.

    The image is only the guide: refinement reads it on the segmentation's grid, and the output keeps
    the segmentation's grid (what the user edits). A segmentation on another grid that the image covers
    (a crop, another spacing, Slicer's segment editor on a resampled volume) is common and safe to
    refine after linear resampling, so it is refined with a one-line warning. Labelled voxels outside
    the image (shifted, another patient's scan) would be refined against zero-filled intensities: a
    wrong result reported as success, so that is refused.
    """
    from ..io import same_grid
    from ..preprocess import nonzero_box

    if same_grid(image, labels) or not labelled_zyx.any():
        return
    start, stop = nonzero_box([labelled_zyx])
    corners_zyx = np.array([[z, y, x] for z in (start[0], stop[0] - 1) for y in (start[1], stop[1] - 1)
                            for x in (start[2], stop[2] - 1)], dtype=float)
    outside = 0.0
    size = np.array(image.GetSize(), dtype=float)
    for corner in corners_zyx:
        point = labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in corner[::-1]])
        index = np.array(image.TransformPhysicalPointToContinuousIndex(point))
        outside = max(outside, float(np.max(np.maximum(-0.5 - index, index - (size - 0.5)))))
    if outside > 0.5:  # more than half a voxel beyond the image's edge
        raise InputImageError(f"{segmentation_name} does not lie on {image_name}: its labelled voxels reach {outside:.1f} voxels "
                              f"beyond the image (another grid or another scan); give the image the segmentation was drawn on")
    logging.getLogger("e2miseg").warning(
        f"warning: {segmentation_name} is on another grid than {image_name} (size, spacing, origin or direction differ); "
        f"the image was resampled onto the segmentation's grid (linear) to refine it, and the output keeps the segmentation's grid")


def refine_file(image_path: str | Path, segmentation_path: str | Path, output: str | Path,
                labels: Sequence[str] | None = None, roi: Sequence[float] | None = None, roi_space: str = "ijk",
                options: EdgeOptions | None = None, uncertainty_path: str | Path | None = None) -> Path:
    """Refine a label map or ``.seg.nrrd`` against ``image_path`` and write ``output`` (same kind).

    :param labels: label values (label map) or segment names/IDs (``.seg.nrrd``) to refine; others
        stay bit-identical. None refines all.
    :param roi: six numbers; voxel corners i0,j0,k0,i1,j1,k1 of the segmentation grid, or with
        ``roi_space="lps"`` an LPS box in mm. Nothing outside it changes.
    :param uncertainty_path: also write the uncertainty of the refined edges and its ranked regions.
    """
    from ..io import SEGMENTATION_SUFFIX, read_image, split_channels, suffix_of, write_labelmap

    from ..paths import check_refine_paths

    options = options or EdgeOptions()
    segmentation_path, output = Path(segmentation_path), Path(output)
    check_refine_paths(Path(image_path), segmentation_path, output, None if uncertainty_path is None else str(uncertainty_path))
    image = read_image(image_path)
    if image.GetNumberOfComponentsPerPixel() > 1 or image.GetDimension() != 3:
        image = split_channels(image)[0]  # edges follow the first channel
    if suffix_of(segmentation_path) == SEGMENTATION_SUFFIX:
        uncertainty, label_array, reference = _refine_seg_nrrd(image, segmentation_path, output, labels, roi, roi_space, options)
    else:
        label_image = _read_label_map(segmentation_path)
        check_grid_agreement(image, label_image, sitk.GetArrayViewFromImage(label_image) != 0, Path(image_path).name,
                             segmentation_path.name)
        present = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(label_image)) if v != 0]
        values = _values_for_label_map(labels, present, segmentation_path.name)
        refined, uncertainty = _refine_image(image, label_image, values, roi_mask(label_image, roi, roi_space), options)
        write_labelmap(refined, output)
        reference, label_array = label_image, sitk.GetArrayViewFromImage(refined)
    if uncertainty_path:
        _write_refine_uncertainty(uncertainty, label_array, reference, uncertainty_path)
    return output


def _refine_image(image: sitk.Image, labels: sitk.Image, values, editable, options) -> tuple[sitk.Image, np.ndarray]:
    from .refine import image_on_grid, refine_with_uncertainty, spacing_zyx_of

    guide = sitk.GetArrayFromImage(image_on_grid(image, labels)).astype(np.float32)
    array = sitk.GetArrayFromImage(labels)
    refined, uncertainty = refine_with_uncertainty(guide, array, spacing_zyx_of(labels), None, values, editable, options)
    result = sitk.GetImageFromArray(refined)
    result.CopyInformation(labels)
    return result, uncertainty


def _write_refine_uncertainty(uncertainty: np.ndarray, labels: np.ndarray, reference: sitk.Image, path: str) -> None:
    from .uncertainty import uncertain_regions, write_uncertainty

    image = sitk.GetImageFromArray(uncertainty)
    image.CopyInformation(reference)
    # the map is non-zero only in the refinement band, so no further boundary restriction is needed
    regions = uncertain_regions(uncertainty, labels, None, reference, band_mm=None)
    write_uncertainty(image, regions, path)


def _selected_segments(segmentation: dict[str, Any], requested: Sequence[str] | None, name: str) -> list[dict[str, Any]]:
    segments = segmentation["segments"]
    if requested is None:
        return list(segments)
    chosen = []
    for item in requested:
        item = str(item)
        matches = [s for s in segments if item in (s.get("name"), s.get("id"))]
        if not matches and item.isdigit() and segmentation["voxels"].ndim == 3:
            matches = [s for s in segments if int(s.get("labelValue", -1)) == int(item)]
        if not matches:
            known = ", ".join(f"'{s.get('name')}'" for s in segments)
            raise E2MISegError(f"no segment '{item}' in {name} (it has {known}); check --labels")
        chosen.extend(matches)
    return chosen


def _refine_seg_nrrd(image: sitk.Image, path: Path, output: Path, labels: Sequence[str] | None, roi, roi_space: str,
                     options: EdgeOptions) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """Refine the selected segments layer by layer; returns the uncertainty, the first refined layer (z, y, x), the grid."""
    import slicerio

    from ..io import atomic_output, verify_segmentation

    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio/pynrrd raise many types for a broken header
        raise InputImageError(f"{path.name} cannot be read as a Slicer segmentation ({exc}); export it again from Slicer") from None
    voxels = segmentation["voxels"]
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    reference = reference_from_ijk_to_lps(segmentation["ijkToLPS"], layers.shape[1:])
    check_grid_agreement(image, reference, (layers != 0).any(axis=0).T, "the image", path.name)
    selected = _selected_segments(segmentation, labels, path.name)
    editable = roi_mask(reference, roi, roi_space)
    uncertainty = np.zeros(reference.GetSize()[::-1], dtype=np.float32)
    refined_layers = layers.copy()
    for layer in range(layers.shape[0]):
        values = sorted({int(s["labelValue"]) for s in selected if int(s.get("layer", 0)) == layer})
        if not values:
            continue
        labels = sitk.GetImageFromArray(np.ascontiguousarray(layers[layer].transpose(2, 1, 0)))
        labels.CopyInformation(reference)
        refined, layer_uncertainty = _refine_image(image, labels, values, editable, options)
        refined_layers[layer] = sitk.GetArrayViewFromImage(refined).transpose(2, 1, 0)
        np.maximum(uncertainty, layer_uncertainty, out=uncertainty)
    segmentation["voxels"] = refined_layers if voxels.ndim == 4 else refined_layers[0]
    _grow_extents(segmentation, selected)
    with atomic_output(output, verify_segmentation(segmentation["voxels"])) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=1)
    return uncertainty, refined_layers[0].transpose(2, 1, 0), reference


def _grow_extents(segmentation: dict[str, Any], refined: list[dict[str, Any]]) -> None:
    """A refined segment's extent (i0 i1 j0 j1 k0 k1) must cover its new voxels or Slicer crops them;
    it only grows, and other segments' headers stay as they were."""
    voxels = segmentation["voxels"]
    for segment in refined:
        layer = voxels[int(segment.get("layer", 0))] if voxels.ndim == 4 else voxels
        hits = np.argwhere(layer == int(segment["labelValue"]))
        if len(hits) == 0:
            continue
        low, high = hits.min(axis=0), hits.max(axis=0)
        old = segment.get("extent")
        if old is not None and old[1] >= old[0] and old[3] >= old[2] and old[5] >= old[4]:
            low = np.minimum(low, old[0::2])
            high = np.maximum(high, old[1::2])
        segment["extent"] = [int(low[0]), int(high[0]), int(low[1]), int(high[1]), int(low[2]), int(high[2])]
