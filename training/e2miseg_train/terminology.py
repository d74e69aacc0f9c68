"""Label names, colours and SNOMED-CT codes for the datasets this package trains on.

Matched by dataset name and the label name in dataset.json; unknown labels get a name and colour but
no terminology (the card schema allows that, and Slicer then shows the plain name).
"""
from __future__ import annotations

from typing import Any

ANATOMICAL_STRUCTURE = {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"}
HIPPOCAMPUS = {"scheme": "SCT", "code": "5366008", "meaning": "Hippocampus"}


def _sct(code: str, meaning: str) -> dict[str, str]:
    return {"scheme": "SCT", "code": code, "meaning": meaning}


# (dataset-name prefix, label name in dataset.json, lower case) -> card label (without value)
KNOWN_LABELS: dict[tuple[str, str], dict[str, Any]] = {
    ("hippocampus", "anterior"): {
        "name": "Anterior hippocampus", "color": [0.9, 0.6, 0.2],
        "terminology": {"category": ANATOMICAL_STRUCTURE, "type": HIPPOCAMPUS, "type_modifier": _sct("255549009", "Anterior")}},
    ("hippocampus", "posterior"): {
        "name": "Posterior hippocampus", "color": [0.2, 0.6, 0.9],
        "terminology": {"category": ANATOMICAL_STRUCTURE, "type": HIPPOCAMPUS, "type_modifier": _sct("255551008", "Posterior")}},
    ("acdc", "rv"): {
        "name": "Right ventricle", "color": [0.85, 0.35, 0.35],
        "terminology": {"category": ANATOMICAL_STRUCTURE, "type": _sct("53085002", "Right ventricle")}},
    ("acdc", "myo"): {
        "name": "Myocardium", "color": [0.95, 0.8, 0.3],
        "terminology": {"category": ANATOMICAL_STRUCTURE, "type": _sct("74281007", "Myocardium")}},
    ("acdc", "lv"): {
        "name": "Left ventricle", "color": [0.3, 0.5, 0.95],
        "terminology": {"category": ANATOMICAL_STRUCTURE, "type": _sct("87878005", "Left ventricle")}},
    ("leftatrium", "left atrium"): {
        "name": "Left atrium", "color": [0.8, 0.3, 0.6],
        "terminology": {"category": ANATOMICAL_STRUCTURE, "type": _sct("82471001", "Left atrium")}},
}

FALLBACK_COLOURS = [[0.9, 0.3, 0.3], [0.3, 0.8, 0.3], [0.3, 0.4, 0.9], [0.9, 0.8, 0.2], [0.7, 0.3, 0.8], [0.2, 0.8, 0.8]]


def dataset_key(dataset_name: str) -> str:
    name = dataset_name.lower().replace("_", "").replace("-", "")
    for prefix in ("hippocampus", "acdc", "leftatrium"):
        if prefix in name:
            return prefix
    return name


def card_labels(dataset_name: str, names: dict[int, str]) -> list[dict[str, Any]]:
    """Card ``labels`` entries for dataset.json's foreground labels."""
    key = dataset_key(dataset_name)
    labels = []
    for index, value in enumerate(sorted(names)):
        known = KNOWN_LABELS.get((key, names[value].lower()))
        entry = {"value": int(value), **known} if known else {
            "value": int(value), "name": names[value], "color": FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)]}
        labels.append(entry)
    return labels


def modality_code(description: str) -> str:
    """The card's channel modality (MR, CT, PT, US, OT) from dataset.json's free-text modality."""
    text = description.upper()
    if "CT" in text.split() or text.startswith("CT"):
        return "CT"
    if any(word in text for word in ("MR", "MRI", "T1", "T2", "FLAIR", "CINE", "LGE")):
        return "MR"
    if "PET" in text:
        return "PT"
    if "US" in text.split() or "ULTRASOUND" in text:
        return "US"
    return "OT"
