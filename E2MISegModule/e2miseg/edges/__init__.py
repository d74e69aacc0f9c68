"""Edges: refinement of segment boundaries against the image, boundary uncertainty, boundary metrics.

- ``refine``: the refinement stage (network probabilities or soft maps from a label map), restricted
  to a narrow band in mm and optionally to labels, a box or a painted region.
- ``uncertainty``: entropy map and ranked uncertain boundary regions.
- ``metrics``: Dice, HD95, ASSD and boundary F1 in mm.

Names are imported on first use so ``e2miseg --help`` does not load numpy and scipy.
"""
from __future__ import annotations

from .defaults import DEFAULT_BAND_MM, DEFAULT_METHOD, DEFAULT_STRENGTH, METHOD_NAMES

_LAZY = {
    "band_mask": "band", "soft_probabilities": "band",
    "EdgeOptions": "refine", "refine_in_region": "refine", "refine_label_array": "refine",
    "refine_prediction": "refine", "refine_segmentation": "refine", "refine_with_uncertainty": "refine",
    "box_mask_ijk": "region", "box_mask_lps": "region", "stroke_region": "region",
    "refine_under_stroke": "stroke",
    "entropy_map": "uncertainty", "ranked_components": "uncertainty", "uncertain_regions": "uncertainty",
    "uncertainty_image": "uncertainty",
    "write_uncertainty": "uncertainty",
}

__all__ = ["DEFAULT_BAND_MM", "DEFAULT_METHOD", "DEFAULT_STRENGTH", "METHOD_NAMES", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
