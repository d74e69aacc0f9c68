"""The bundled models as users get them: index.json is true to the files, and each model still gives
the Dice recorded for a few of its validation cases when it was exported.

The figures come from ``Testing/fixtures/shipped_models.json``, written by ``e2miseg-train export
--regression-table`` / ``e2miseg-train regression-table`` (see ``e2miseg_train.regression``), never by
hand. Cases run through ``e2miseg.predict`` with every setting at its default: the card's defaults,
the default runtime (OpenVINO on the CPU) and automatic precision of this machine.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, SHARED_DATA, require_module, shared_file

require_module("e2miseg_train", "the regression table's case scoring lives in the training package")

from e2miseg.checkpoint import read_checkpoint  # noqa: E402
from e2miseg_train.dataset import list_cases  # noqa: E402
from e2miseg_train.regression import REGENERATE, case_dice, dice  # noqa: E402

MODELS = ROOT / "E2MISegModule" / "Resources" / "Models"
TABLE_PATH = ROOT / "Testing" / "fixtures" / "shipped_models.json"
TABLE = json.loads(TABLE_PATH.read_text(encoding="utf-8"))
BUNDLED = sorted(p.name for p in MODELS.glob("*.safetensors"))
# OpenVINO in bfloat16 (the default) against eager PyTorch in fp32: share of voxels with the same label,
# the bound precision="auto" is held to (Testing/test_runtime.py, benchmarks/results/precision.md)
RUNTIME_AGREEMENT = 0.998

_loaded: dict = {}


def bundled_model(file_name: str):
    """Each bundled model loaded once per session (``e2miseg.load_model``, as Slicer loads it)."""
    if file_name not in _loaded:
        import e2miseg

        _loaded[file_name] = e2miseg.load_model(MODELS / file_name, device="cpu")
    return _loaded[file_name]


def dataset_cases(name: str) -> dict:
    return {case.name: case for case in list_cases(shared_file(name))}


def test_index_matches_every_bundled_file():
    index = json.loads((MODELS / "index.json").read_text(encoding="utf-8"))
    assert sorted(index) == BUNDLED  # every file listed, nothing listed that is not there
    for name, entry in index.items():
        path = MODELS / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], f"{name}: sha256 in index.json is stale"
        _, card = read_checkpoint(path)
        assert entry["version"] == card["version"], name
        assert entry["license"] == card["license"], name


@pytest.mark.parametrize("file_name", BUNDLED)
def test_refinement_is_on_by_default_only_where_its_measured_targets_hold(file_name):
    """Issue 19: a card may turn edge refinement on by default only with its learned refiner's measurement
    on the validation split showing every target met; a card that keeps it off says which targets failed."""
    _, card = read_checkpoint(MODELS / file_name)
    refiner = card.get("refiner")
    defaults = card.get("defaults", {})
    if defaults.get("refine_edges"):
        assert refiner and refiner["evaluation"]["targets_met"], f"{file_name}: refinement on without its targets met"
    if refiner:
        targets = refiner["evaluation"]["targets"]
        assert set(targets) == {"assd_10pct_lower", "hd95_not_worse", "dice_within_0.002", "perturbed_recovery_40pct",
                                "cpu_cost_15pct"}, file_name
        assert refiner["evaluation"]["targets_met"] == all(targets.values()), file_name
        assert refiner["evaluation"]["cases"] == len(card["provenance"]["split"]["val_cases"]), file_name


def test_regression_table_covers_the_bundled_files_as_they_are():
    assert sorted(TABLE["models"]) == BUNDLED, f"regenerate the table: {REGENERATE}"
    for name, entry in TABLE["models"].items():
        sha = hashlib.sha256((MODELS / name).read_bytes()).hexdigest()
        assert entry["sha256"] == sha, f"{name} changed since its figures were recorded; regenerate: {REGENERATE}"
        assert len(entry["cases"]) >= 3


REGRESSION_CASES = [(name, case) for name, entry in sorted(TABLE["models"].items()) for case in entry["cases"]]


@pytest.mark.parametrize("file_name,case_name", REGRESSION_CASES, ids=[f"{m.split('.')[0]}-{c}" for m, c in REGRESSION_CASES])
def test_shipped_model_gives_its_recorded_dice(file_name, case_name):
    entry = TABLE["models"][file_name]
    case = dataset_cases(entry["dataset"])[case_name]
    model, card = bundled_model(file_name)
    measured = case_dice(model, card, list(case.images), case.label)
    recorded = entry["cases"][case_name]
    assert set(measured) == set(recorded)
    for label, value in recorded.items():
        assert abs(measured[label] - value) <= TABLE["tolerance"], (
            f"{entry['name']} {case_name} label {label}: Dice {measured[label]:.4f}, recorded {value:.4f} "
            f"({entry['runtime']}, {entry['precision']})")


@pytest.mark.parametrize("file_name", BUNDLED)
def test_default_runtime_agrees_with_pytorch_on_a_real_case(file_name, monkeypatch):
    """One real validation case per bundled network: the default runtime and precision against eager
    PyTorch in fp32 (the path the networks were trained and validated on)."""
    import e2miseg
    from e2miseg.runtime import resolve_runtime

    import torch

    assert resolve_runtime(None, torch.device("cpu")) == "openvino"  # the default really is the other runtime
    entry = TABLE["models"][file_name]
    case_name = next(iter(entry["cases"]))
    case = dataset_cases(entry["dataset"])[case_name]
    model, card = bundled_model(file_name)
    images = [str(p) for p in case.images]
    default = sitk.GetArrayFromImage(e2miseg.predict(images, model, card))
    eager = sitk.GetArrayFromImage(e2miseg.predict(images, model, card, runtime="torch", precision="f32"))
    assert default.any()
    assert (default == eager).mean() >= RUNTIME_AGREEMENT
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
    for label in card["labels"]:
        assert abs(dice(default, reference, label["value"]) - dice(eager, reference, label["value"])) <= TABLE["tolerance"]


def test_shared_data_is_where_the_table_expects_it():
    for entry in TABLE["models"].values():
        folder = shared_file(entry["dataset"])
        assert folder.parent == SHARED_DATA and np.all([c in dataset_cases(entry["dataset"]) for c in entry["cases"]])
