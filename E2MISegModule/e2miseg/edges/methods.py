"""Three ways to move class probabilities towards the image's own edges, inside a cropped band.

Each takes probabilities ``(C, z, y, x)`` on a crop, the crop's image normalised to unit spread, the
voxel spacing in mm and a ``strength`` in (0, 1], and returns refined probabilities of the same shape.
Which one the engine uses by default was picked by measurement (benchmarks/results/edges_*.md).

- ``meanfield``: a dense-CRF-like mean-field on a local window (Potts model with a bilateral kernel
  on position and intensity) plus a per-class intensity likelihood learnt from the crop itself.
- ``guided``: He et al.'s guided filter on each class's probability with the image as guide.
- ``geodesic``: SimpleITK's geodesic active contour per label, seeded from the current label.
"""
from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

EPS = 1e-4
HISTOGRAM_RANGE = (-4.0, 4.0)
HISTOGRAM_BINS = 48
MIN_VOXELS_FOR_HISTOGRAM = 20


def normalise_image(image: np.ndarray) -> np.ndarray:
    """Robust z-score: median and inter-quartile spread, so a few bright voxels do not squash the rest."""
    image = image.astype(np.float32, copy=False)
    low, median, high = np.percentile(image, [25, 50, 75])
    spread = (high - low) / 1.349 if high > low else float(image.std()) or 1.0
    return (image - median) / spread


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


def intensity_log_posterior(probabilities: np.ndarray, image: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
    """log p(class | intensity) from per-class histograms of the crop (equal priors), (C, z, y, x).

    Each voxel adds its probability of a class to that class's histogram (optionally only voxels in
    ``context``), so partial-volume voxels the prior puts inside a class count for it: the
    annotation's convention at the edge is learnt along with the intensities (hard, confident-only
    histograms grew hippocampus masks by a voxel layer on unperturbed references). Classes with too
    few voxels get a flat histogram (no opinion).
    """
    winner = probabilities.argmax(axis=0)
    clipped = np.clip(image, *HISTOGRAM_RANGE)
    bins = np.minimum(((clipped - HISTOGRAM_RANGE[0]) / (HISTOGRAM_RANGE[1] - HISTOGRAM_RANGE[0]) * HISTOGRAM_BINS).astype(np.int32),
                      HISTOGRAM_BINS - 1)
    log_likelihood = np.zeros(probabilities.shape, dtype=np.float32)
    for index in range(probabilities.shape[0]):
        if (winner == index).sum() < MIN_VOXELS_FOR_HISTOGRAM:
            continue
        weights = probabilities[index] if context is None else probabilities[index] * context
        histogram = np.bincount(bins.ravel(), weights=weights.ravel(), minlength=HISTOGRAM_BINS)
        histogram = ndimage.gaussian_filter1d(histogram, 1.0, mode="nearest") + 1e-3 * histogram.sum() / HISTOGRAM_BINS
        log_likelihood[index] = np.log(histogram / histogram.sum())[bins]
    log_likelihood -= log_likelihood.max(axis=0, keepdims=True)
    return np.log(softmax(log_likelihood) + EPS)


def window_offsets(radius_mm: float, spacing_zyx: tuple[float, float, float]) -> list[tuple[int, int, int]]:
    radii = [int(np.floor(radius_mm / s)) for s in spacing_zyx]
    offsets = []
    for offset in itertools.product(*(range(-r, r + 1) for r in radii)):
        distance = np.sqrt(sum((o * s) ** 2 for o, s in zip(offset, spacing_zyx)))
        if 0 < distance <= radius_mm:
            offsets.append(offset)
    return offsets


def _shifted(padded: np.ndarray, offset: tuple[int, ...], pads: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """View of the (padded) array moved by ``offset``: element i is the original at i + offset."""
    lead = (slice(None),) * (padded.ndim - len(shape))
    return padded[lead + tuple(slice(p + o, p + o + n) for o, p, n in zip(offset, pads, shape))]


def meanfield(probabilities: np.ndarray, image: np.ndarray, spacing_zyx: tuple[float, float, float], strength: float,
              changeable: np.ndarray, context: np.ndarray | None = None, radius_mm: float = 2.0, intensity_sigma: float = 0.2,
              pairwise_weight: float = 3.0, intensity_weight: float = 2.0, iterations: int = 5) -> np.ndarray:
    """Mean-field inference of a Potts CRF whose pairwise kernel is local and bilateral.

    Unary: log network (or soft-map) probability + ``strength * intensity_weight`` x the intensity
    log posterior. Pairwise: neighbours within ``radius_mm`` that look alike (intensity difference
    small against ``intensity_sigma``) pull towards the same class, with weight
    ``strength * pairwise_weight``. Voxels outside ``changeable`` keep their probabilities and act as
    the boundary condition.
    """
    unary = np.log(probabilities + EPS)
    if intensity_weight > 0:
        unary += strength * intensity_weight * intensity_log_posterior(probabilities, image, context)
    offsets = window_offsets(radius_mm, spacing_zyx)
    if not offsets:
        return softmax(unary)
    shape = image.shape
    pads = tuple(max(abs(o[axis]) for o in offsets) for axis in range(3))
    padded_image = np.pad(image, [(p, p) for p in pads], mode="edge")
    spatial_sigma = radius_mm / 2.0
    kernels, spatial_total = [], 0.0
    for offset in offsets:
        spatial = float(np.exp(-sum((o * s) ** 2 for o, s in zip(offset, spacing_zyx)) / (2 * spatial_sigma ** 2)))
        difference = _shifted(padded_image, offset, pads, shape) - image
        kernels.append((spatial * np.exp(-difference * difference / (2 * intensity_sigma ** 2))).astype(np.float32))
        spatial_total += spatial
    weight = strength * pairwise_weight / spatial_total
    fixed = probabilities
    q = probabilities.copy()
    for _ in range(iterations):
        padded_q = np.pad(q, [(0, 0)] + [(p, p) for p in pads], mode="edge")
        message = np.zeros_like(q)
        for offset, kernel in zip(offsets, kernels):
            message += kernel * _shifted(padded_q, offset, pads, shape)
        q = softmax(unary + weight * message)
        q = np.where(changeable, q, fixed)
    return q


def _box_mean(array: np.ndarray, radii: tuple[int, ...]) -> np.ndarray:
    return ndimage.uniform_filter(array, size=[2 * r + 1 for r in radii], mode="nearest")


def guided(probabilities: np.ndarray, image: np.ndarray, spacing_zyx: tuple[float, float, float], strength: float,
           changeable: np.ndarray, context: np.ndarray | None = None, radius_mm: float = 2.0, epsilon: float = 0.05) -> np.ndarray:
    """Guided filter (He, Sun, Tang 2013) of each class probability with the image as guide.

    Locally the output is a linear function of the image, so probability transitions snap to image
    edges; ``epsilon`` (in normalised intensity squared) is how strong an edge must be to be kept.
    The result is blended with the input by ``strength``.
    """
    radii = tuple(int(np.floor(radius_mm / s)) for s in spacing_zyx)
    mean_i = _box_mean(image, radii)
    var_i = _box_mean(image * image, radii) - mean_i * mean_i
    filtered = np.empty_like(probabilities)
    for index in range(probabilities.shape[0]):
        p = probabilities[index]
        mean_p = _box_mean(p, radii)
        a = (_box_mean(image * p, radii) - mean_i * mean_p) / (var_i + epsilon)
        b = mean_p - a * mean_i
        filtered[index] = _box_mean(a, radii) * image + _box_mean(b, radii)
    np.clip(filtered, 0.0, 1.0, out=filtered)
    filtered /= np.maximum(filtered.sum(axis=0, keepdims=True), EPS)
    refined = (1.0 - strength) * probabilities + strength * filtered
    return np.where(changeable, refined, probabilities)


def geodesic(probabilities: np.ndarray, image: np.ndarray, spacing_zyx: tuple[float, float, float], strength: float,
             changeable: np.ndarray, context: np.ndarray | None = None, width_mm: float = 1.0, iterations: int = 40, sigma_mm: float = 1.0) -> np.ndarray:
    """Geodesic active contour (Caselles et al.) per foreground class, seeded from its current region.

    The edge map is 1 / (1 + (|grad I| / K)^2) with K the median gradient in the crop; the contour is
    pulled to edges (advection) and kept smooth (curvature). The final level sets become
    probabilities through a logistic of width ``width_mm``; background takes what is left.
    """
    spacing_xyz = tuple(float(s) for s in spacing_zyx[::-1])
    guide = sitk.GetImageFromArray(image.astype(np.float32))
    guide.SetSpacing(spacing_xyz)
    gradient = sitk.GradientMagnitudeRecursiveGaussian(guide, sigma_mm)
    magnitude = sitk.GetArrayViewFromImage(gradient)
    k = float(np.median(magnitude)) or 1.0
    speed = sitk.BoundedReciprocal(gradient / k)  # 1 / (1 + |grad| / K): small on edges
    speed = speed * speed
    winner = probabilities.argmax(axis=0)
    foreground = np.empty(probabilities.shape[1:] + (probabilities.shape[0] - 1,), dtype=np.float32)
    for index in range(1, probabilities.shape[0]):
        mask = sitk.GetImageFromArray((winner == index).astype(np.uint8))
        mask.SetSpacing(spacing_xyz)
        if not sitk.GetArrayViewFromImage(mask).any():
            foreground[..., index - 1] = 0.0
            continue
        initial = sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
        # Maurer gives 0 on the object's own border voxels: move the zero level half a voxel outwards
        initial = initial - 0.5 * min(spacing_zyx)
        contour = sitk.GeodesicActiveContourLevelSetImageFilter()
        contour.SetPropagationScaling(0.0)
        contour.SetCurvatureScaling(1.0)
        contour.SetAdvectionScaling(2.0 * strength)
        contour.SetNumberOfIterations(max(1, int(round(iterations * strength))))
        contour.SetMaximumRMSError(0.002)
        level = sitk.GetArrayFromImage(contour.Execute(sitk.Cast(initial, sitk.sitkFloat32), sitk.Cast(speed, sitk.sitkFloat32)))
        foreground[..., index - 1] = 1.0 / (1.0 + np.exp(np.clip(level / width_mm, -30, 30)))
    refined = np.empty_like(probabilities)
    refined[0] = np.prod(1.0 - foreground, axis=-1)
    refined[1:] = np.moveaxis(foreground, -1, 0)
    refined /= np.maximum(refined.sum(axis=0, keepdims=True), EPS)
    return np.where(changeable, refined, probabilities)


METHODS = {"meanfield": meanfield, "guided": guided, "geodesic": geodesic}  # keys are defaults.METHOD_NAMES
