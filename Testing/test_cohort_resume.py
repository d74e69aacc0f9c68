"""A cohort interrupted mid-run continues where it stopped, retries its failed cases and keeps one
summary row per case."""
from __future__ import annotations

import csv
import shutil

import pytest

from conftest import shared_file
from e2miseg import api
from e2miseg.cli import main
from helpers import make_e2miseg_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_e2miseg_checkpoint(tmp_path_factory.mktemp("models") / "tiny.safetensors", spacing=(3.0, 3.0, 3.0))


def summary_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_interrupted_cohort_continues_retries_failures_and_keeps_one_row_per_case(tmp_path, checkpoint, monkeypatch):
    source = shared_file("fixtures/Hippocampus_mini/imagesTr")
    folder, out = tmp_path / "cases", tmp_path / "out"
    folder.mkdir()
    for image in sorted(source.glob("*.nii.gz")):
        shutil.copy(image, folder / image.name)
    names = sorted(p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz"))
    assert names == ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    (folder / "hippocampus_003.nii.gz").write_bytes(b"not an image")  # fails on the first run
    args = ["predict", str(folder), "-o", str(out), "--model", str(checkpoint), "--device", "cpu"]

    predicted = []
    interrupt_at = ["hippocampus_004"]
    real_predict = api.predict

    def interrupting(images, *a, **k):  # the user presses Ctrl+C while the third case runs
        case = images[0].split("/")[-1][: -len(".nii.gz")]
        predicted.append(case)
        if case in interrupt_at:
            raise KeyboardInterrupt
        return real_predict(images, *a, **k)

    monkeypatch.setattr(api, "predict", interrupting)
    assert main(args) == 130
    assert predicted == names
    first = summary_rows(out / "summary.csv")
    assert [(r["case"], r["status"][:6]) for r in first] == [("hippocampus_001", "ok"), ("hippocampus_003", "error:")]
    assert not (out / "hippocampus_004.seg.nrrd").exists()
    done = (out / "hippocampus_001.seg.nrrd").stat().st_mtime_ns

    shutil.copy(source / "hippocampus_003.nii.gz", folder / "hippocampus_003.nii.gz")  # the user fixes the bad case
    predicted.clear()
    interrupt_at.clear()
    assert main(args) == 0
    assert predicted == ["hippocampus_003", "hippocampus_004"]  # the finished case is not run again
    assert (out / "hippocampus_001.seg.nrrd").stat().st_mtime_ns == done
    rows = summary_rows(out / "summary.csv")
    assert [r["case"] for r in rows] == names  # one row per case: the failure's row was replaced
    assert all(r["status"] == "ok" and float(r["Anterior hippocampus_mm3"]) >= 0 for r in rows)
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.seg.nrrd" for n in names] + ["summary.csv"]
