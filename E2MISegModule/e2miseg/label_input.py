"""Refuse a label map passed as the image, before the network runs on it and returns nonsense.

An image whose voxels are integers with only a handful of distinct values, the model's own label
values among them, is almost certainly a segmentation (a reference or an earlier result), not a scan.
``accept_label_map`` (``--accept-label-map``) runs it anyway, e.g. for a synthetic phantom.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError

MAX_DISTINCT_VALUES = 8  # a scan has hundreds of grey values; a label map a few
_INTEGER_TYPES = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
                  sitk.sitkUInt64, sitk.sitkInt64}


def distinct_values(array: np.ndarray, limit: int = MAX_DISTINCT_VALUES) -> list[int] | None:
    """The distinct values when there are at most ``limit``; None as soon as there are more.

    A strided sample is checked first, so a real scan is cleared without a pass over all its voxels.
    """
    flat = array.ravel()
    if np.unique(flat[:: max(1, flat.size // 65536)]).size > limit:
        return None
    values = np.unique(flat)
    return values.tolist() if values.size <= limit else None


def check_not_label_map(channels: Sequence[sitk.Image], card: dict[str, Any], names: Sequence[str] | None = None) -> None:
    label_values = {label["value"] for label in card["labels"]}
    for index, image in enumerate(channels):
        if image.GetPixelID() not in _INTEGER_TYPES:
            continue
        values = distinct_values(sitk.GetArrayViewFromImage(image))
        if values is None or not label_values & set(values):
            continue
        name = names[index] if names and len(names) == len(channels) else f"input channel {index}"
        shown = ", ".join(str(v) for v in values)
        raise InputImageError(f"{name} looks like a label map, not an image (integer voxels with only the values {shown}, "
                              f"which include this model's label values); pass the scan the labels belong to, or add "
                              f"--accept-label-map (accept_label_map=True) if it really is the image")
