"""Back to the input grid through probabilities, then per-label clean-up.

Resampling class probabilities (not labels) and taking the argmax on the input grid keeps edges
smooth at native resolution. It runs one class at a time with a running maximum, so memory holds
two input-grid arrays, never one float array per class.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .preprocess import NetworkGrid, resample_array


def probabilities_on_input_crop(probabilities: np.ndarray, grid: NetworkGrid, label: int) -> np.ndarray:
    """One class's probabilities resampled from the network grid onto the cropped input grid."""
    if grid.resampled is None:
        return probabilities[label]
    return resample_array(probabilities[label], grid.resampled, grid.cropped)


def labels_on_input_grid(probabilities: np.ndarray, grid: NetworkGrid, reference: sitk.Image) -> sitk.Image:
    """Argmax of the probabilities resampled onto ``reference``'s grid; uint8 labels, same geometry."""
    if grid.resampled is None:
        crop_labels = np.argmax(probabilities, axis=0).astype(np.uint8)
    else:
        best = probabilities_on_input_crop(probabilities, grid, 0).copy()
        crop_labels = np.zeros(best.shape, dtype=np.uint8)
        for label in range(1, probabilities.shape[0]):
            candidate = probabilities_on_input_crop(probabilities, grid, label)
            better = candidate > best
            crop_labels[better] = label
            np.maximum(best, candidate, out=best)
    labels = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    box = tuple(slice(a, b) for a, b in zip(grid.crop_start_zyx, grid.crop_stop_zyx))
    labels[box] = crop_labels
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    return image


def probability_image(probabilities: np.ndarray, grid: NetworkGrid, reference: sitk.Image) -> sitk.Image:
    """All class probabilities on the input grid as a vector image (background 1 outside the crop)."""
    shape = reference.GetSize()[::-1]
    box = tuple(slice(a, b) for a, b in zip(grid.crop_start_zyx, grid.crop_stop_zyx))
    planes = []
    for label in range(probabilities.shape[0]):
        plane = np.full(shape, 1.0 if label == 0 else 0.0, dtype=np.float32)
        plane[box] = probabilities_on_input_crop(probabilities, grid, label)
        planes.append(plane)
    image = sitk.GetImageFromArray(np.stack(planes, axis=-1), isVector=True)
    image.CopyInformation(reference)
    return image


def keep_largest_component(labels: np.ndarray, values: list[int]) -> np.ndarray:
    """For each label value, keep only its largest 26-connected component."""
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in values:
        mask = labels == value
        components, count = ndimage.label(mask, structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        labels[mask & (components != sizes.argmax())] = 0
    return labels


def remove_islands(labels: np.ndarray, values: list[int], min_volume_mm3: float, spacing_xyz: tuple[float, ...]) -> np.ndarray:
    """Drop components of each label smaller than ``min_volume_mm3``."""
    voxel_mm3 = float(np.prod(spacing_xyz))
    min_voxels = int(np.ceil(min_volume_mm3 / voxel_mm3))
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in values:
        mask = labels == value
        components, count = ndimage.label(mask, structure)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())
        small = np.flatnonzero(sizes < min_voxels)
        small = small[small != 0]
        if small.size:
            labels[np.isin(components, small)] = 0
    return labels


def clean_labels(label_image: sitk.Image, values: list[int], keep_largest: bool = False, min_island_mm3: float = 0.0) -> sitk.Image:
    if not keep_largest and min_island_mm3 <= 0:
        return label_image
    labels = sitk.GetArrayFromImage(label_image)
    if keep_largest:
        labels = keep_largest_component(labels, values)
    if min_island_mm3 > 0:
        labels = remove_islands(labels, values, min_island_mm3, label_image.GetSpacing())
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(label_image)
    return result
