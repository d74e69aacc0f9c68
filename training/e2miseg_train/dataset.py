"""MSD-layout datasets (``imagesTr/``, ``labelsTr/``, ``dataset.json``) and the patient-level split.

Split rule (deterministic, no randomness, so every tool and every session agrees): group cases by
patient, sort the patient ids, and hold out every patient whose index % 5 == 4 (20 %). For datasets
with one case per patient (Task04_Hippocampus) the patient id is the case name; for ACDC both frames
of ``patientNNN_frameMM`` belong to ``patientNNN``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2miseg.errors import E2MISegError

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
VALIDATION_FOLD = 4
FOLDS = 5


class DatasetError(E2MISegError):
    """The dataset folder is not in the expected MSD layout."""


@dataclass(frozen=True)
class Case:
    name: str
    images: tuple[Path, ...]  # one file per channel (or one 4D file)
    label: Path

    @property
    def patient(self) -> str:
        return patient_id(self.name)


def strip_suffix(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def patient_id(case_name: str) -> str:
    """The patient a case belongs to: ``patient021_frame01`` -> ``patient021``; otherwise the name."""
    match = re.match(r"^(.*?)_frame\d+$", case_name)
    return match.group(1) if match else case_name


def read_dataset_json(root: Path) -> dict[str, Any]:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{root} has no dataset.json; point to an MSD-layout folder (imagesTr/, labelsTr/, dataset.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def list_cases(root: str | Path) -> list[Case]:
    """Every labelled case, sorted by name; channels come from ``_0000`` files or one file per case."""
    root = Path(root)
    meta = read_dataset_json(root)
    cases = []
    for entry in meta.get("training", []):
        image = root / entry["image"]
        label = root / entry["label"]
        name = strip_suffix(image.name)
        channel_files = sorted(image.parent.glob(f"{name}_0[0-9][0-9][0-9]*"))
        images = tuple(channel_files) if not image.exists() and channel_files else (image,)
        missing = [p for p in (*images, label) if not p.exists()]
        if missing:
            raise DatasetError(f"{missing[0]} is listed in {root / 'dataset.json'} but missing; fix the dataset folder")
        cases.append(Case(name, images, label))
    if not cases:
        raise DatasetError(f"{root / 'dataset.json'} lists no training cases")
    return sorted(cases, key=lambda c: c.name)


def split_cases(cases: list[Case]) -> tuple[list[Case], list[Case]]:
    """(train, validation) by the module's patient rule; both sorted by name."""
    patients = sorted({c.patient for c in cases})
    held_out = {p for i, p in enumerate(patients) if i % FOLDS == VALIDATION_FOLD}
    if len(patients) < FOLDS:  # tiny fixtures: keep the last patient out so validation is never empty
        held_out = {patients[-1]} if len(patients) > 1 else set()
    ordered = sorted(cases, key=lambda c: c.name)
    train = [c for c in ordered if c.patient not in held_out]
    val = [c for c in ordered if c.patient in held_out]
    return train, val


def label_names(meta: dict[str, Any]) -> dict[int, str]:
    """Foreground label values -> names from dataset.json (background excluded)."""
    return {int(k): str(v) for k, v in meta.get("labels", {}).items() if int(k) != 0}


def channel_names(meta: dict[str, Any]) -> list[str]:
    modality = meta.get("modality") or meta.get("channel_names") or {"0": "image"}
    return [str(modality[k]) for k in sorted(modality, key=int)]
