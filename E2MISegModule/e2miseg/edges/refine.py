"""Edge refinement on the input grid: which voxels may change, and the one function that changes them.

``refine_label_array`` is the core (numpy in, numpy out); the functions below it adapt it to the
network pipeline (``refine_prediction``), to a segmentation someone drew (``refine_segmentation``)
and to a painted stroke in the Segment Editor (``refine_in_region``). Only voxels within
``band_mm`` of a boundary of a selected label, not locked by a label outside the selection and
inside the optional editable region can change; everything else is returned bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import E2MISegError
from .defaults import DEFAULT_BAND_MM, DEFAULT_METHOD, DEFAULT_STRENGTH, LEARNED_METHOD, METHOD_NAMES
from .band import band_mask, bounding_box, margin_voxels, soft_probabilities
from .methods import METHODS, normalise_image
from .uncertainty import entropy_map

# Width of the soft maps made from a label map: ~0.88 confidence one width from the edge.
SOFT_WIDTH_MM = 1.0
# Extra crop margin so filters near the band see real neighbours, not the crop edge.
FILTER_MARGIN_MM = 3.0


MAX_BAND_MM = 100.0  # beyond it the "band" is the whole image: a typo, not a choice


@dataclass
class EdgeOptions:
    """How to refine. ``method="learned"`` needs ``refiner`` (a model's ``LearnedRefiner``); it ignores
    ``strength`` (except 0 = off) and, when ``band_mm`` is None, uses the band it was trained for."""

    method: str = DEFAULT_METHOD
    strength: float = DEFAULT_STRENGTH
    band_mm: float | None = None  # None: the method's own (the refiner's training band, else DEFAULT_BAND_MM)
    soft_width_mm: float = SOFT_WIDTH_MM
    refiner: Any = None

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise E2MISegError(f"unknown edge refinement method '{self.method}'; use one of {', '.join(METHOD_NAMES)}")
        if self.method == LEARNED_METHOD and self.refiner is None:
            raise E2MISegError("edge method 'learned' needs a model with a learned refiner (give --model NAME); "
                               f"without one use {', '.join(METHODS)}")
        if not 0.0 <= self.strength <= 1.0:
            raise E2MISegError(f"edge strength {self.strength} is outside 0..1; use 0 (off) to 1 (strongest)")
        if self.band_mm is not None and not 0.0 < self.band_mm <= MAX_BAND_MM:  # also refuses NaN
            raise E2MISegError(f"edge band (--band-mm) {self.band_mm} mm is outside 0..{MAX_BAND_MM:g} mm (0 excluded); "
                               f"a few mm is typical")

    @property
    def band(self) -> float:
        if self.band_mm is not None:
            return float(self.band_mm)
        return self.refiner.band_mm if self.method == LEARNED_METHOD else DEFAULT_BAND_MM


def refine_label_array(image: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, float, float],
                       probabilities: np.ndarray | None = None, values: list[int] | None = None,
                       editable: np.ndarray | None = None, options: EdgeOptions | None = None) -> np.ndarray:
    """Refined copy of ``labels`` (z, y, x).

    :param image: the intensities the edges should follow, same shape as ``labels``.
    :param probabilities: class probabilities (C, z, y, x) indexed by label value; None builds soft
        maps from ``labels`` (signed distances), for segmentations that did not come from a network.
    :param values: labels to refine; None means all. Other non-zero labels are locked: their voxels
        stay and nothing grows into them.
    :param editable: optional bool mask; voxels outside it never change (an ROI or a painted stroke).
    """
    return refine_with_uncertainty(image, labels, spacing_zyx, probabilities, values, editable, options)[0]


def refine_with_uncertainty(image: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, float, float],
                            probabilities: np.ndarray | None = None, values: list[int] | None = None,
                            editable: np.ndarray | None = None, options: EdgeOptions | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """``refine_label_array`` plus the normalised entropy of the refined probabilities (0 outside the band's box)."""
    options = options or EdgeOptions()
    spacing_zyx = tuple(float(s) for s in spacing_zyx)
    uncertainty = np.zeros(labels.shape, dtype=np.float32)
    if options.strength <= 0:
        return labels.copy(), uncertainty
    present = sorted(int(v) for v in np.unique(labels) if v != 0)
    if probabilities is not None:
        present = sorted(set(present) | set(range(1, probabilities.shape[0])))
    selected = present if values is None else sorted(int(v) for v in values if v != 0)
    allowed = [0] + selected
    locked = ~np.isin(labels, allowed)
    if editable is not None:
        locked |= ~editable
    changeable = band_mask(labels, spacing_zyx, options.band, selected) & ~locked
    box = bounding_box(changeable, margin_voxels(options.band + FILTER_MARGIN_MM, spacing_zyx))
    if box is None:
        return labels.copy(), uncertainty
    crop_labels = labels[box]
    if options.method == LEARNED_METHOD:
        # the model's refiner decides from the labels themselves; network probabilities are not its input
        refined = options.refiner.probabilities(image, labels, spacing_zyx, box, allowed, changeable[box])
    elif probabilities is None:
        probs = soft_probabilities(crop_labels, allowed, spacing_zyx, options.soft_width_mm)
    else:
        probs = probabilities[(allowed,) + box].astype(np.float32) + 1e-6
        probs /= probs.sum(axis=0, keepdims=True)
    if options.method != LEARNED_METHOD:
        refined = METHODS[options.method](probs, normalise_image(image[box]), spacing_zyx, options.strength, changeable[box])
    winner = np.asarray(allowed, dtype=labels.dtype)[refined.argmax(axis=0)]
    result = labels.copy()
    result[box] = np.where(changeable[box], winner, crop_labels)
    uncertainty[box] = np.where(locked[box], 0.0, entropy_map(refined))
    return result, uncertainty


def spacing_zyx_of(image: sitk.Image) -> tuple[float, float, float]:
    return tuple(float(s) for s in image.GetSpacing()[::-1])


def image_on_grid(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``image`` on ``reference``'s grid (linear); itself when the grids already match."""
    from ..io import same_grid

    if same_grid(image, reference):
        return image
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def refine_segmentation(image: sitk.Image, labels: sitk.Image, values: list[int] | None = None,
                        editable: np.ndarray | None = None, probabilities: np.ndarray | None = None,
                        options: EdgeOptions | None = None) -> sitk.Image:
    """Refine a label image against ``image``; the result has exactly ``labels``' geometry and pixel type."""
    guide = sitk.GetArrayFromImage(image_on_grid(image, labels)).astype(np.float32)
    array = sitk.GetArrayFromImage(labels)
    refined = refine_label_array(guide, array, spacing_zyx_of(labels), probabilities, values, editable, options)
    result = sitk.GetImageFromArray(refined)
    result.CopyInformation(labels)
    return result


def refine_prediction(image: sitk.Image, labels: sitk.Image, probabilities: sitk.Image | None,
                      strength: float | None = None, method: str | None = None, refiner: Any = None) -> sitk.Image:
    """The pipeline's refinement stage: network probabilities (vector image on the input grid) + image.

    ``refiner`` is the model's learned refiner (None if it has none); ``method`` "learned" uses it and
    needs no ``probabilities`` (the pipeline then does not keep them).
    """
    options = EdgeOptions(method=method or DEFAULT_METHOD, strength=DEFAULT_STRENGTH if strength is None else strength,
                          refiner=refiner)
    probs = None if probabilities is None else np.moveaxis(sitk.GetArrayViewFromImage(probabilities), -1, 0)
    return refine_segmentation(image, labels, probabilities=probs, options=options)


def refine_in_region(image: np.ndarray, segment: np.ndarray, region: np.ndarray, spacing_zyx: tuple[float, float, float],
                     strength: float | None = None, method: str | None = None, band_mm: float | None = None) -> np.ndarray:
    """One segment's mask refined only inside ``region`` (a painted stroke); bool (z, y, x).

    Outside ``region`` the mask is returned unchanged. Other segments are not considered here: the
    Segment Editor applies its own masking and overwrite rules when the result is written.
    """
    options = EdgeOptions(method=method or DEFAULT_METHOD, strength=DEFAULT_STRENGTH if strength is None else strength,
                          band_mm=band_mm or DEFAULT_BAND_MM)
    labels = segment.astype(np.uint8)
    refined = refine_label_array(image, labels, spacing_zyx, values=[1], editable=region.astype(bool), options=options)
    return refined == 1
