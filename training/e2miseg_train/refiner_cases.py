"""The refiner's cases: the model's split, its cached predictions, and cases on their own grid.

The refiner learns the model's errors where the user sees them: on the input grid, after the
network's probabilities were resampled and turned into labels, before any clean-up (refinement runs
before keep-largest and island removal in ``finish_labels``). Each training case is predicted once
and cached as ``PREDICTIONS/<case>.nii.gz``; a rerun or a resumed run reads the cache.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from e2miseg.card import channel_normalization
from e2miseg.edges.learned import normalised_image
from e2miseg.errors import E2MISegError

from .dataset import Case, list_cases, split_cases
from .refiner_data import RefinerCase, crop_case

RAW = {"refine_edges": False, "keep_largest": False, "min_island_mm3": 0.0}  # the network's labels, nothing after


def model_split(card: dict[str, Any], dataset: str | Path) -> tuple[list[Case], list[Case]]:
    """(training, validation) cases: the card's recorded validation cases when it has them, else the split rule."""
    cases = list_cases(dataset)
    names = (card.get("provenance") or {}).get("split", {}).get("val_cases")
    if not names:
        return split_cases(cases)
    held = set(names)
    return [c for c in cases if c.name not in held], [c for c in cases if c.name in held]


def spacing_of(path: Path) -> tuple[float, float, float]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(float(s) for s in reader.GetSpacing()[:3][::-1])


def auto_config(cases: list[Case], in_plane: str = "auto", band_mm: float | None = None) -> dict[str, Any]:
    """Kernel shape and band from the cases' median spacing: thick slices (z > 2x in-plane) get in-plane
    kernels; the band reaches 3.5 in-plane voxels, so a 3-voxel error is inside it."""
    spacings = np.median(np.array([spacing_of(c.label) for c in cases]), axis=0)
    flat = bool(spacings[0] > 2.0 * max(spacings[1:])) if in_plane == "auto" else in_plane == "yes"
    return {"in_plane": flat, "band_mm": float(band_mm) if band_mm else round(3.5 * float(min(spacings[1:])), 1)}


def cached_prediction(model, card: dict[str, Any], case: Case, folder: Path) -> np.ndarray:
    """The model's raw labels of ``case`` on its grid, predicted once and cached."""
    from e2miseg.api import predict
    from e2miseg.settings import Settings

    path = folder / f"{case.name}.nii.gz"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        labels = predict([str(p) for p in case.images], model, card, Settings(**RAW))
        tmp = folder / f".{case.name}.{os.getpid()}.tmp.nii.gz"
        sitk.WriteImage(labels, str(tmp), True)
        os.replace(tmp, path)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def read_case(case: Case, card: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(image normalised as the model normalises it, reference labels, spacing zyx) on the case's own grid."""
    from e2miseg.io import read_channels

    channel = read_channels(list(case.images))[0]
    reference_image = sitk.ReadImage(str(case.label))
    image = sitk.GetArrayFromImage(channel)
    reference = sitk.GetArrayFromImage(reference_image)
    if image.shape != reference.shape:
        raise E2MISegError(f"{case.label.name}: label grid {reference.shape} differs from the image grid {image.shape}; "
                           f"the dataset is inconsistent")
    spacing = tuple(float(s) for s in reference_image.GetSpacing()[::-1])
    return normalised_image(image, channel_normalization(card, 0)), reference, spacing


def refiner_cases(cases: list[Case], card: dict[str, Any], margin_of: Callable[[tuple[float, float, float]], tuple[int, int, int]],
                  model=None, predictions: Path | None = None, log: Callable[[str], None] = print) -> list[RefinerCase]:
    """Cases cropped around their structures, with the model's cached predictions when a model is given."""
    out = []
    for index, case in enumerate(cases, 1):
        image, reference, spacing = read_case(case, card)
        prediction = cached_prediction(model, card, case, predictions) if model is not None else None
        out.append(crop_case(case.name, image, reference, prediction, spacing, margin_of(spacing)))
        if index % 20 == 0 or index == len(cases):
            log(f"prepared {index}/{len(cases)} cases")
    return out
