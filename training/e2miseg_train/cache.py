"""Preprocessed cases on the network grid, cached as .npy.

Images go through ``e2miseg.preprocess.preprocess`` - the function inference runs - so the network
trains on exactly what it will see in Slicer. Labels follow the same crop and are resampled onto the
same grid with nearest neighbour.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from e2miseg.card import validate_card
from e2miseg.io import read_channels
from e2miseg.preprocess import preprocess, resample_array

from .dataset import Case


def cache_key(card: dict[str, Any], dataset: str) -> str:
    """Changes whenever anything that shapes the network-grid arrays changes."""
    relevant = {"dataset": str(dataset), "preprocessing": card["preprocessing"],
                "channels": card["channels"], "kind": card["inference"]["kind"],
                "slice_axis": card["inference"].get("slice_axis")}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def preprocess_case(case: Case, card: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(image (C, z, y, x) float32, labels (z, y, x) uint8) on the network grid."""
    card = validate_card(card)
    channels = read_channels(list(case.images))
    image, grid = preprocess(channels, card)
    label_image = sitk.ReadImage(str(case.label))
    labels = sitk.GetArrayFromImage(label_image)
    if labels.shape != sitk.GetArrayViewFromImage(channels[0]).shape:
        raise ValueError(f"{case.label.name}: label grid {labels.shape} differs from the image grid; the dataset is inconsistent")
    box = tuple(slice(a, b) for a, b in zip(grid.crop_start_zyx, grid.crop_stop_zyx))
    labels = labels[box].astype(np.float32)
    if grid.resampled is not None:
        labels = resample_array(labels, grid.cropped, grid.resampled, sitk.sitkNearestNeighbor)
    return image, np.rint(labels).astype(np.uint8)


def load_cases(cases: list[Case], card: dict[str, Any], dataset: str, cache_root: str | Path,
               verbose: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every case's network-grid arrays, preprocessing (and caching) those not cached yet."""
    folder = Path(cache_root) / cache_key(card, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for index, case in enumerate(cases):
        image_path, label_path = folder / f"{case.name}_image.npy", folder / f"{case.name}_label.npy"
        if image_path.exists() and label_path.exists():
            out[case.name] = (np.load(image_path), np.load(label_path))
            continue
        image, labels = preprocess_case(case, card)
        # write-then-rename so a killed run never leaves a half-written cache entry
        for path, array in ((image_path, image), (label_path, labels)):
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, array)
            tmp.replace(path)
        out[case.name] = (image, labels)
        if verbose and (index + 1) % 50 == 0:
            print(f"preprocessed {index + 1}/{len(cases)} cases", flush=True)
    return out
