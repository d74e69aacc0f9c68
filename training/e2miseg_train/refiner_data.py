"""Training samples of the learned boundary refiner: cases on their own grid, perturbed masks, patches.

A sample is a patch of (image, input labels, reference labels) around a boundary. The input labels
are either the model's own prediction of the case (cached by ``train-refiner``) or the reference
perturbed the way hand-drawn and imported masks are wrong: each label dilated, eroded or shifted by
1-3 voxels, over the whole structure or only in a local ball. Everything random comes from the
generator handed in, so a run is reproducible from its seed and iteration count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from e2miseg.edges.band import band_mask
from e2miseg.edges.learned import THIN_AXIS_MM, refiner_features

OPERATIONS = ("dilate", "erode", "shift", "keep")
OPERATION_WEIGHTS = (0.27, 0.27, 0.26, 0.2)  # "keep" teaches the refiner to leave right edges alone
MAX_PERTURB_VOXELS = 3


@dataclass
class RefinerCase:
    """One case on its own grid, cropped around its structures (and padded so any patch fits)."""

    name: str
    image: np.ndarray  # normalised as the model normalises, float32 (z, y, x)
    reference: np.ndarray  # uint8 label values
    prediction: np.ndarray | None  # the model's labels, or None (perturbed references only)
    spacing_zyx: tuple[float, float, float]


def crop_case(name: str, image_norm: np.ndarray, reference: np.ndarray, prediction: np.ndarray | None,
              spacing_zyx: tuple[float, float, float], margin_zyx: tuple[int, int, int]) -> RefinerCase:
    """Keep the box of all labelled voxels plus ``margin_zyx``, padding beyond the volume (image: edge values,
    labels: background), so memory follows the structures, not the scan."""
    labelled = reference != 0
    if prediction is not None:
        labelled |= prediction != 0
    hits = np.argwhere(labelled)
    if len(hits) == 0:
        low, high = np.zeros(3, int), np.array(reference.shape)
    else:
        low, high = hits.min(axis=0), hits.max(axis=0) + 1
    low, high = low - np.array(margin_zyx), high + np.array(margin_zyx)
    pad_before = np.maximum(0, -low)
    pad_after = np.maximum(0, high - np.array(reference.shape))
    box = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(low, high, reference.shape))
    widths = list(zip(pad_before, pad_after))

    def cut(array: np.ndarray | None, mode: str) -> np.ndarray | None:
        return None if array is None else np.pad(array[box], widths, mode=mode)

    return RefinerCase(name, cut(image_norm.astype(np.float32), "edge"), cut(reference.astype(np.uint8), "constant"),
                       cut(None if prediction is None else prediction.astype(np.uint8), "constant"), tuple(spacing_zyx))


def _distances(mask: np.ndarray, in_plane: bool) -> np.ndarray:
    """Distance in voxels to the mask (0 inside), per slice for in-plane refiners."""
    sampling = (THIN_AXIS_MM, 1.0, 1.0) if in_plane else (1.0, 1.0, 1.0)
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask, sampling=sampling)


def perturb_mask(mask: np.ndarray, rng: np.random.Generator, in_plane: bool) -> np.ndarray:
    """``mask`` dilated, eroded or shifted by 1-3 voxels (or kept), everywhere or only in a local ball."""
    operation = OPERATIONS[rng.choice(len(OPERATIONS), p=OPERATION_WEIGHTS)]
    amount = int(rng.integers(1, MAX_PERTURB_VOXELS + 1))
    if operation == "keep" or not mask.any():
        return mask.copy()
    if operation == "dilate":
        changed = _distances(mask, in_plane) <= amount
    elif operation == "erode":
        changed = _distances(~mask, in_plane) > amount
    else:
        direction = rng.normal(size=3)
        if in_plane:
            direction[0] = 0.0
        direction *= amount / max(np.linalg.norm(direction), 1e-6)
        changed = ndimage.shift(mask.astype(np.uint8), np.round(direction), order=0, mode="constant", cval=0) > 0
    if rng.random() < 0.5:  # a local error, as a wrong brush stroke or a leak makes
        surface = np.argwhere(mask ^ ndimage.binary_erosion(mask))
        centre = surface[rng.integers(len(surface))] if len(surface) else np.array(mask.shape) // 2
        radius = float(rng.uniform(4, 12))
        grid = np.ogrid[tuple(slice(0, n) for n in mask.shape)]
        ball = sum(((g - c) * (0 if in_plane and axis == 0 else 1)) ** 2
                   for axis, (g, c) in enumerate(zip(grid, centre))) <= radius ** 2
        changed = np.where(ball, changed, mask)
    return changed


def perturb_labels(labels: np.ndarray, rng: np.random.Generator, in_plane: bool) -> np.ndarray:
    """Each foreground label perturbed on its own (in random order, later labels painted over earlier ones)."""
    out = labels.copy()
    values = [int(v) for v in np.unique(labels) if v != 0]
    for value in rng.permutation(values) if values else []:
        mask = labels == value
        changed = perturb_mask(mask, rng, in_plane)
        out[mask & ~changed & (out == value)] = 0
        out[changed] = value
    return out


@dataclass
class PatchShape:
    core_zyx: tuple[int, int, int]  # voxels the loss is computed on
    halo_zyx: tuple[int, int, int]  # the refiner's receptive field around them

    @property
    def input_zyx(self) -> tuple[int, int, int]:
        return tuple(c + 2 * h for c, h in zip(self.core_zyx, self.halo_zyx))


def clip_margin(spacing_zyx, clip_mm: float, in_plane: bool) -> tuple[int, int, int]:
    margin = [int(np.ceil(clip_mm / s)) for s in spacing_zyx]
    if in_plane:
        margin[0] = 0
    return tuple(margin)


def case_margin(shape: PatchShape, spacing_zyx, clip_mm: float, in_plane: bool) -> tuple[int, int, int]:
    """How far a case must reach beyond its structures so every patch centred near them fits."""
    clip = clip_margin(spacing_zyx, clip_mm, in_plane)
    return tuple(i // 2 + 1 + c + MAX_PERTURB_VOXELS for i, c in zip(shape.input_zyx, clip))


def sample_patch(case: RefinerCase, rng: np.random.Generator, shape: PatchShape, num_classes: int, clip_mm: float,
                 band_mm: float, in_plane: bool, prediction_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (F, *input), target (core) int64, loss mask (core) bool) of one random boundary patch."""
    use_prediction = case.prediction is not None and rng.random() < prediction_fraction
    source = case.prediction if use_prediction else case.reference
    clip = clip_margin(case.spacing_zyx, clip_mm, in_plane)
    outer_half = tuple(i // 2 + c + MAX_PERTURB_VOXELS for i, c in zip(shape.input_zyx, clip))
    boundary = np.argwhere(source != ndimage.grey_erosion(source, size=(1, 3, 3) if in_plane else (3, 3, 3)))
    low = np.array(outer_half)
    high = np.array(source.shape) - np.array([i - i // 2 + c + MAX_PERTURB_VOXELS for i, c in zip(shape.input_zyx, clip)])
    inside = boundary[np.all((boundary >= low) & (boundary <= high), axis=1)] if len(boundary) else boundary
    if len(inside):
        centre = inside[rng.integers(len(inside))] + rng.integers(-2, 3, size=3) * np.array([0 if in_plane else 1, 1, 1])
        centre = np.clip(centre, low, high)
    else:
        centre = np.array([int(rng.integers(lo, hi + 1)) if hi >= lo else n // 2 for lo, hi, n in zip(low, high, source.shape)])
    start = centre - np.array(outer_half)
    region = tuple(slice(max(0, a), max(0, a) + 2 * h + (i % 2)) for a, h, i in zip(start, outer_half, shape.input_zyx))
    labels = source[region]
    if not use_prediction:
        labels = perturb_labels(labels, rng, in_plane)
    features = refiner_features(case.image[region], labels, num_classes, case.spacing_zyx, clip_mm, in_plane)
    trim = tuple(slice(c + MAX_PERTURB_VOXELS, c + MAX_PERTURB_VOXELS + i) for c, i in zip(clip, shape.input_zyx))
    features = features[(slice(None),) + trim]
    core = tuple(slice(t.start + h, t.start + h + c) for t, h, c in zip(trim, shape.halo_zyx, shape.core_zyx))
    mask = band_mask(labels, case.spacing_zyx, band_mm)[core]
    return features, case.reference[region][core].astype(np.int64), mask
