"""Per-label volumes (mm³) on the validation split, and the range the model card records from them.

``e2miseg.plausibility`` warns when a result's label volume is far outside the card's
``labels[].validation_volume_mm3`` range (below half its min or above twice its max). The range is
taken from the *reference* labels of the validation cases, not from the model's predictions: it
describes the anatomy as annotated on this kind of image, so it does not depend on the model, and a
model that fails on a validation case (an empty or doubled structure) cannot widen its own range and
so hide the very failures the warning is there to catch. ``evaluate`` records both (reference and
predicted, per case and label) so the two can be compared; only the reference range goes into the card.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import SimpleITK as sitk

from e2miseg.checkpoint import read_card
from e2miseg.errors import E2MISegError
from e2miseg.store import resolve

from .amend import amend_card, replace_markdown_section

SECTION = "## Validation volumes"


def label_volumes_mm3(labels: sitk.Image, card_labels: list[dict[str, Any]]) -> dict[str, float]:
    """Volume (mm³) of each of the card's labels in a label image, by label name."""
    array = sitk.GetArrayViewFromImage(labels)
    counts = np.bincount(np.asarray(array, dtype=np.int64).ravel(), minlength=256)
    voxel_mm3 = float(np.prod(labels.GetSpacing()))
    return {label["name"]: float(counts[label["value"]]) * voxel_mm3 for label in card_labels}


def reference_volumes(cases: Iterable, card_labels: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{case name: {label name: mm³}} of the cases' reference labels (no network needed)."""
    return {case.name: label_volumes_mm3(sitk.ReadImage(str(case.label)), card_labels) for case in cases}


def volume_ranges(per_case: dict[str, dict[str, float]], card_labels: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{label name: {"min", "max", "cases"}} over the cases, in the card's ``validation_volume_mm3`` shape
    (rounded to 0.1 mm³; a label that no case has is left out)."""
    ranges = {}
    for label in card_labels:
        values = [volumes[label["name"]] for volumes in per_case.values() if label["name"] in volumes]
        if values:
            ranges[label["name"]] = {"min": round(min(values), 1), "max": round(max(values), 1), "cases": len(values)}
    return ranges


def ranges_from_summary(summary: dict[str, Any], card_labels: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The reference ranges from an ``evaluate`` summary.json; empty when it predates volume recording."""
    per_case = {case: {name: entry["reference"] for name, entry in labels.items()}
                for case, labels in summary.get("volumes_mm3", {}).items()}
    return volume_ranges(per_case, card_labels)


def put_ranges(card: dict[str, Any], ranges: dict[str, dict[str, Any]]) -> None:
    """Write ``ranges`` into the card's labels (labels without a range keep none)."""
    for label in card["labels"]:
        if label["name"] in ranges:
            label["validation_volume_mm3"] = dict(ranges[label["name"]])
        else:
            label.pop("validation_volume_mm3", None)


def spread(values: list[float]) -> dict[str, float]:
    """min / median / max of some volumes, for the evaluate summary."""
    if not values:
        return {"min": math.nan, "median": math.nan, "max": math.nan}
    return {"min": round(min(values), 1), "median": round(float(np.median(values)), 1), "max": round(max(values), 1)}


def markdown_section(card: dict[str, Any]) -> str:
    """The Markdown card's section listing the recorded ranges, or "" when the card has none."""
    rows = [(label["name"], label["validation_volume_mm3"]) for label in card["labels"] if "validation_volume_mm3" in label]
    if not rows:
        return ""
    lines = [f"{SECTION} (reference labels of the validation split)", "",
             "A result with a label below half the smallest or above twice the largest of these volumes is reported "
             "as implausible (one line; the result is still written).", "",
             "| label | cases | min (mm³) | max (mm³) |", "|---|---|---|---|"]
    lines += [f"| {name} | {r.get('cases', '')} | {r['min']:.1f} | {r['max']:.1f} |" for name, r in rows]
    return "\n".join(lines) + "\n"


def record_volume_ranges(model: str, dataset: str | None = None, cases: str = "card", metrics: str | None = None,
                         write: bool = False, record: bool = False) -> dict[str, dict[str, Any]]:
    """The per-label ranges of ``model``'s validation cases: from an ``evaluate`` summary.json (``metrics``),
    else from the reference label files of the card's validation cases (only labels are read: no network
    runs, so a shipped model gets its ranges in seconds). ``write`` puts them into the checkpoint's card
    (weights unchanged) and its Markdown card; ``record`` refreshes the sha256 in index.json."""
    from .evaluate import card_cases  # evaluate imports this module

    card = read_card(resolve(model).path)
    if metrics:
        summary = json.loads(Path(metrics).read_text(encoding="utf-8"))
        ranges = ranges_from_summary(summary, card["labels"])
        if not ranges:
            raise E2MISegError(f"{metrics} has no reference volumes (made before evaluate recorded them); run evaluate "
                               f"again or leave out --metrics to read the validation labels")
    else:
        _, selected = card_cases(card, dataset, cases)
        ranges = volume_ranges(reference_volumes(selected, card["labels"]), card["labels"])
    if write:
        path = amend_card(model, lambda amended: put_ranges(amended, ranges), record=record)
        amended = read_card(path)
        replace_markdown_section(path, SECTION, markdown_section(amended))
    return ranges
