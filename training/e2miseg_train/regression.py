"""Regression figures of shipped models: per-case Dice on a few of their validation cases.

Each case is segmented the way a user gets it by default - ``e2miseg.predict`` with the card's
defaults, on the default runtime and precision of this machine - and scored per label. The table is
written by ``e2miseg-train export --regression-table`` and by ``e2miseg-train regression-table`` (for
models already exported), never by hand; ``Testing/test_shipped_models.py`` re-runs the same cases and
asserts the same Dice within 0.01, so a preprocessing or runtime change that moves accuracy fails CI.
Each entry names the file's sha256: a re-exported model with an old entry fails until the table is
regenerated with ``REGENERATE``.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from e2miseg.errors import E2MISegError

from .dataset import list_cases

TABLE_FORMAT = 1
DEFAULT_CASES = 3
REGENERATE = ("e2miseg-train regression-table E2MISegModule/Resources/Models/*.safetensors "
              "--out Testing/fixtures/shipped_models.json")


def dice(prediction: np.ndarray, reference: np.ndarray, value: int) -> float:
    """Dice of one label; 1.0 when the label is absent from both."""
    pred, ref = prediction == value, reference == value
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / total


def case_dice(model, card: dict[str, Any], images: list[Path], label: Path) -> dict[str, float]:
    """Per-label Dice of one case segmented with every setting at its default (``e2miseg.predict``)."""
    from e2miseg.api import predict

    prediction = sitk.GetArrayFromImage(predict([str(p) for p in images], model, card))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    return {str(entry["value"]): round(dice(prediction, reference, entry["value"]), 6) for entry in card["labels"]}


def dataset_folder(card: dict[str, Any], data_root: str | Path | None) -> Path:
    """The model's dataset: ``data_root/<folder name in the card>`` if given, else the card's path."""
    recorded = card.get("provenance", {}).get("dataset_path")
    if not recorded:
        raise E2MISegError(f"the card of {card['name']} names no dataset_path; pass the dataset with --data-root")
    folder = Path(data_root) / Path(recorded).name if data_root else Path(recorded)
    if not folder.is_dir():
        raise E2MISegError(f"{folder} (the dataset of {card['name']}) is absent; pass the folder holding it with --data-root")
    return folder


def regression_cases(card: dict[str, Any], count: int) -> list[str]:
    """The first ``count`` validation cases in the card's split (never training cases)."""
    cases = card.get("provenance", {}).get("split", {}).get("val_cases") or []
    if not cases:
        raise E2MISegError(f"the card of {card['name']} lists no validation cases; export it with its run's plan")
    return list(cases[:count])


def model_entry(checkpoint: str | Path, data_root: str | Path | None = None, count: int = DEFAULT_CASES) -> dict[str, Any]:
    """The table entry of one exported checkpoint: identity, how it ran, and Dice per case and label."""
    import torch

    from e2miseg.api import load_model
    from e2miseg.inference import InferenceOptions, Predictor
    from e2miseg.runtime import resolve_runtime
    from e2miseg.checkpoint import sha256_of

    checkpoint = Path(checkpoint)
    model, card = load_model(checkpoint, "cpu")
    folder = dataset_folder(card, data_root)
    by_name = {case.name: case for case in list_cases(folder)}
    names = regression_cases(card, count)
    absent = [n for n in names if n not in by_name]
    if absent:
        raise E2MISegError(f"validation cases {', '.join(absent)} of {card['name']} are not in {folder}")
    precision = getattr(Predictor(model, card, InferenceOptions(device="cpu")).forward, "precision", "f32")
    return {
        "name": card["name"], "version": card["version"], "sha256": sha256_of(checkpoint),
        "dataset": folder.name, "runtime": resolve_runtime(None, torch.device("cpu")), "precision": precision,
        # the settings the figures were measured with (the card's comparison that chose them stays in the card)
        "defaults": {k: v for k, v in (card.get("defaults") or {}).items() if k != "comparison"},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "cases": {name: case_dice(model, card, list(by_name[name].images), by_name[name].label) for name in names},
    }


def update_table(table_path: str | Path, checkpoints: list[str | Path], data_root: str | Path | None = None,
                 count: int = DEFAULT_CASES) -> dict[str, Any]:
    """Add or replace the entries of ``checkpoints`` (keyed by file name) in the table at ``table_path``."""
    table_path = Path(table_path)
    table = json.loads(table_path.read_text(encoding="utf-8")) if table_path.exists() else {}
    table = {"format": TABLE_FORMAT, "regenerate": REGENERATE, "tolerance": 0.01, "models": table.get("models", {})}
    for checkpoint in checkpoints:
        table["models"][Path(checkpoint).name] = model_entry(checkpoint, data_root, count)
    table["models"] = dict(sorted(table["models"].items()))
    table_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = table_path.with_name(f".{table_path.name}.tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, table_path)
    return table
