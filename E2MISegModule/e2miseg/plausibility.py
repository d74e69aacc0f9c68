"""Is a result plausible? An empty segmentation, or a label volume far outside what the model's card
recorded on its validation split, is reported in one line. Not an error: the output is still written,
but a wrong result must not pass as an ordinary success."""
from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

# "Far outside": below half the smallest or above twice the largest validation volume.
VOLUME_FACTOR = 2.0


def plausibility_warning(labels: sitk.Image, card: dict[str, Any]) -> str | None:
    """One line describing what looks wrong with ``labels``, or None."""
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=256)
    voxel_mm3 = float(np.prod(labels.GetSpacing()))
    values = [entry["value"] for entry in card["labels"]]
    if not any(counts[v] for v in values):
        return (f"warning: the segmentation is empty: model '{card['name']}' found none of its labels; check that the image "
                f"shows what the model expects ({', '.join(c['name'] for c in card['channels'])})")
    odd = []
    for entry in card["labels"]:
        recorded = entry.get("validation_volume_mm3")
        if not recorded:
            continue
        volume = counts[entry["value"]] * voxel_mm3
        if volume < recorded["min"] / VOLUME_FACTOR or volume > recorded["max"] * VOLUME_FACTOR:
            odd.append(f"{entry['name']} {volume:.0f} mm³ (validation {recorded['min']:.0f}-{recorded['max']:.0f})")
    if odd:
        return (f"warning: label volumes far outside the validation range of model '{card['name']}': {'; '.join(odd)}; "
                f"review the result")
    return None
