"""``e2miseg-train choose-defaults``: the comparison, the rule that keeps the engine default unless a
candidate measurably helps, and the card rewritten with the same weights and a right index.json."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import require_module  # noqa: E402

require_module("e2miseg_train")

from conftest import shared_file  # noqa: E402
from e2miseg.checkpoint import read_checkpoint  # noqa: E402
from e2miseg.settings import Settings, resolve  # noqa: E402
from e2miseg.store import sha256_of  # noqa: E402
from e2miseg_train.cli import main as train_main  # noqa: E402
from e2miseg_train.defaults import BASELINE, compare, pick  # noqa: E402
from helpers import make_e2miseg_checkpoint  # noqa: E402


def scores(values):
    return {f"case{i}": {"dice": d, "hd95_mm": h} for i, (d, h) in enumerate(values)}


def test_the_default_stays_unless_a_candidate_measurably_helps():
    base = scores([(0.80, 5.0), (0.70, 6.0), (0.75, 4.0), (0.82, 5.0), (0.78, 5.5)])
    noisy = scores([(0.82, 5.0), (0.68, 6.0), (0.76, 4.0), (0.80, 5.0), (0.79, 5.5)])  # up and down: not measurable
    rows = compare({BASELINE: base, "noisy": noisy}, BASELINE, resamples=500, seed=0)
    assert not next(r for r in rows if r["candidate"] == "noisy")["measurably_helps"]
    assert pick(rows, BASELINE) == BASELINE
    better = scores([(0.82, 5.0), (0.72, 6.0), (0.77, 4.0), (0.83, 5.0), (0.80, 5.5)])  # higher on every case
    closer = scores([(0.80, 4.0), (0.70, 5.0), (0.75, 3.0), (0.82, 4.5), (0.78, 5.0)])  # same Dice, HD95 lower on every case
    rows = compare({BASELINE: base, "noisy": noisy, "better": better, "closer": closer}, BASELINE, resamples=500, seed=0)
    helps = {r["candidate"]: r["measurably_helps"] for r in rows}
    assert helps == {BASELINE: False, "noisy": False, "better": True, "closer": True}
    assert pick(rows, BASELINE) == "better"


def test_choose_defaults_writes_the_card_with_the_same_weights(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    path = make_e2miseg_checkpoint(folder / "tiny.safetensors", spacing=(3.0, 3.0, 3.0))
    before, _ = read_checkpoint(path)
    dataset = shared_file("fixtures/Hippocampus_mini")
    code = train_main(["choose-defaults", str(path), str(dataset), "--cases", "hippocampus_001,hippocampus_003",
                       "--qualities", "normal", "--strengths", "0.5", "--resamples", "200", "--out", str(tmp_path / "out"),
                       "--write", "--record"])
    assert code == 0
    after, card = read_checkpoint(path)
    assert before.keys() == after.keys() and all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    defaults = card["defaults"]
    comparison = defaults["comparison"]
    assert comparison["case_names"] == ["hippocampus_001", "hippocampus_003"]
    names = [row["candidate"] for row in comparison["postprocessing"]]
    assert BASELINE in names and "largest component" in names and "refine meanfield 0.5" in names
    assert len(comparison["island_sizes_mm3"]) == 2
    # whatever was chosen is what the engine now resolves with no options, and it came from the table
    chosen = resolve(None, card)
    assert {k: getattr(chosen, k) for k in comparison["chosen"]} == comparison["chosen"]
    assert Settings.from_card(card).refine_edges == comparison["chosen"]["refine_edges"]
    index = json.loads((folder / "index.json").read_text())
    assert index["tiny.safetensors"]["sha256"] == sha256_of(path)
    assert (tmp_path / "out" / "defaults.md").read_text().count("|") > 20


def test_bad_dataset_is_one_line(tmp_path, capsys):
    path = make_e2miseg_checkpoint(tmp_path / "tiny.safetensors")
    shutil.rmtree(tmp_path / "nothing", ignore_errors=True)
    assert train_main(["choose-defaults", str(path), str(tmp_path / "nothing")]) == 2
    assert "dataset folder" in capsys.readouterr().err
