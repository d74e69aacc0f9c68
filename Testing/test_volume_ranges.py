"""Issue 21 point 4, the card's side: per-label volumes of the validation split recorded by ``evaluate``,
the reference range written into a card by ``export --metrics`` (test_training) and by ``volume-ranges
--write`` on an already exported file (weights unchanged), and the engine warning outside it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import require_module  # noqa: E402

require_module("e2miseg_train")

from conftest import shared_file  # noqa: E402
from e2miseg.checkpoint import read_checkpoint  # noqa: E402
from e2miseg.store import sha256_of  # noqa: E402
from e2miseg_train.cli import main as train_main  # noqa: E402
from helpers import HIPPOCAMPUS_LABELS, make_e2miseg_checkpoint  # noqa: E402

CASES = ["hippocampus_001", "hippocampus_003"]


@pytest.fixture(scope="module")
def dataset():
    return shared_file("fixtures/Hippocampus_mini")


def reference_mm3(dataset, case: str, value: int) -> float:
    """Counted here without the training package: voxels of ``value`` times the voxel volume."""
    image = sitk.ReadImage(str(dataset / "labelsTr" / f"{case}.nii.gz"))
    return float(np.count_nonzero(sitk.GetArrayFromImage(image) == value) * np.prod(image.GetSpacing()))


def test_volume_ranges_write_the_reference_range_into_an_exported_card_with_the_same_weights(tmp_path, dataset, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    path = make_e2miseg_checkpoint(folder / "tiny.safetensors", spacing=(3.0, 3.0, 3.0))
    (folder / "tiny.md").write_text("# tiny\n\n## Validation\n\nscores\n\n## Notes\n\nkept\n")
    before, _ = read_checkpoint(path)
    args = ["volume-ranges", str(path), str(dataset), "--cases", ",".join(CASES)]
    assert train_main(args) == 0  # without --write: printed only
    assert "validation_volume_mm3" not in read_checkpoint(path)[1]["labels"][0]
    assert train_main(args + ["--write", "--record"]) == 0
    printed = capsys.readouterr().out
    after, card = read_checkpoint(path)
    assert before.keys() == after.keys() and all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    for label in card["labels"]:
        volumes = [reference_mm3(dataset, case, label["value"]) for case in CASES]
        assert label["validation_volume_mm3"] == {"min": pytest.approx(min(volumes), abs=0.05),
                                                  "max": pytest.approx(max(volumes), abs=0.05), "cases": 2}
        assert f"{label['name']}: {min(volumes):.1f} - {max(volumes):.1f} mm³ over 2 validation case(s)" in printed
    assert min(volumes) < max(volumes)  # two different cases: a real range, not one value twice
    assert json.loads((folder / "index.json").read_text())["tiny.safetensors"]["sha256"] == sha256_of(path)
    assert train_main(args + ["--write"]) == 0  # again: the Markdown section is replaced, not added twice
    markdown = (folder / "tiny.md").read_text()
    assert markdown.count("## Validation volumes") == 1 and markdown.index("## Notes") < markdown.index("## Validation volumes")
    assert "## Validation\n\nscores" in markdown and "kept" in markdown
    assert f"| {HIPPOCAMPUS_LABELS[0]['name']} | 2 |" in markdown


def test_evaluate_records_reference_and_predicted_volumes_and_they_give_the_same_range(tmp_path, dataset):
    path = make_e2miseg_checkpoint(tmp_path / "tiny.safetensors", spacing=(3.0, 3.0, 3.0))
    out = tmp_path / "eval"
    assert train_main(["evaluate", str(path), str(dataset), "--out", str(out), "--cases", ",".join(CASES),
                       "--device", "cpu", "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    import csv

    rows = list(csv.DictReader(open(out / "per_case.csv")))
    for case in CASES:
        for label in HIPPOCAMPUS_LABELS:
            recorded = summary["volumes_mm3"][case][label["name"]]
            assert recorded["reference"] == pytest.approx(reference_mm3(dataset, case, label["value"]), abs=0.05)
            row = next(r for r in rows if r["case"] == case and r["label"] == str(label["value"]))
            assert float(row["ref_volume_mm3"]) == pytest.approx(recorded["reference"], abs=0.05)
            assert float(row["pred_volume_mm3"]) == pytest.approx(recorded["predicted"], abs=0.05)
            assert recorded["predicted"] == pytest.approx(int(row["pred_voxels"]), abs=0.05)  # 1 mm³ voxels
    spread = summary["labels"][HIPPOCAMPUS_LABELS[0]["name"]]["reference_volume_mm3"]
    first = [summary["volumes_mm3"][c][HIPPOCAMPUS_LABELS[0]["name"]]["reference"] for c in CASES]
    assert spread["min"] == min(first) and spread["max"] == max(first)
    # the range from the summary is the one read from the label files
    from e2miseg_train.volumes import record_volume_ranges

    assert record_volume_ranges(str(path), metrics=str(out / "summary.json")) == \
        record_volume_ranges(str(path), str(dataset), cases=",".join(CASES))


def test_volume_ranges_from_an_old_summary_is_a_one_line_error(tmp_path, capsys):
    path = make_e2miseg_checkpoint(tmp_path / "tiny.safetensors")
    old = tmp_path / "summary.json"
    old.write_text(json.dumps({"labels": {}, "num_cases": 1}))
    assert train_main(["volume-ranges", str(path), "--metrics", str(old), "--write"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no reference volumes" in err and "\n" not in err
    assert "validation_volume_mm3" not in read_checkpoint(path)[1]["labels"][0]
    assert train_main(["volume-ranges", str(path)]) == 2  # a test card names no dataset folder
    assert "dataset folder" in capsys.readouterr().err


def test_card_cases_are_the_cards_own_validation_cases_and_a_missing_folder_is_never_guessed(tmp_path, dataset, monkeypatch):
    """choose-defaults and volume-ranges pick their cases the same way (e2miseg_train.evaluate.card_cases)."""
    from e2miseg.errors import E2MISegError
    from e2miseg_train.evaluate import card_cases

    card = {"name": "tiny", "provenance": {"dataset_path": str(dataset), "split": {"val_cases": list(reversed(CASES))}}}
    folder, cases = card_cases(card, None, "card")
    assert folder == dataset and [c.name for c in cases] == list(reversed(CASES))  # the card's order, not sorted
    assert [c.name for c in card_cases(card, dataset, CASES[0])[1]] == [CASES[0]]
    monkeypatch.chdir(dataset)  # a card without a dataset path must not read whatever folder it is run from
    with pytest.raises(E2MISegError, match="dataset folder '' not found; give the model's dataset folder as DATASET"):
        card_cases({"name": "tiny", "provenance": {}}, None, "val")
    with pytest.raises(E2MISegError, match="tiny lists no validation cases"):
        card_cases({"name": "tiny", "provenance": {"split": {}}}, dataset, "card")
