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
from e2miseg.settings import ENGINE_DEFAULTS, Settings, resolve  # noqa: E402
from e2miseg.store import sha256_of  # noqa: E402
from e2miseg_train.cli import main as train_main  # noqa: E402
from e2miseg_train.defaults import BASELINE, candidate_name, compare, pick  # noqa: E402
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
    # refinement was judged against the chosen cleanup alone, which heads its table
    cleanup = Settings(**comparison["chosen"]).replace(refine_edges=False, quality="normal").over(ENGINE_DEFAULTS)
    assert comparison["refinement"][0]["candidate"] == candidate_name(cleanup)
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


def test_refinement_must_help_beyond_the_chosen_cleanup():
    """'largest component + refine' beats the engine default only through the largest component: refinement
    stays off unless it measurably helps against the chosen cleanup alone (it did not for ehanet-acdc 0.2.0)."""
    from e2miseg.settings import ENGINE_DEFAULTS
    from e2miseg_train.defaults import candidate_name, choose_postprocessing

    off = Settings(keep_largest=False, min_island_mm3=0.0, refine_edges=False).over(ENGINE_DEFAULTS)
    largest = off.replace(keep_largest=True)
    refined = largest.replace(refine_edges=True, edge_method="meanfield", edge_strength=0.3)
    refined_alone = off.replace(refine_edges=True, edge_method="meanfield", edge_strength=0.3)
    base = [(0.70, 9.0), (0.72, 8.0), (0.69, 10.0), (0.71, 9.5), (0.73, 8.5), (0.70, 9.0)]
    lifted = [(d + 0.05, h - 3) for d, h in base]
    noise = [0.004, -0.003, 0.002, -0.004, 0.003, -0.001]  # up and down: +0.0002 on average, not measurable
    table = {candidate_name(off): scores(base), candidate_name(largest): scores(lifted),
             candidate_name(refined): scores([(d + e, h) for (d, h), e in zip(lifted, noise)]),
             candidate_name(refined_alone): scores([(d + e, h) for (d, h), e in zip(base, noise)])}
    # judged against the engine default, the refined candidate "measurably helps" and has the top Dice...
    rows = compare(table, BASELINE, resamples=500, seed=0)
    assert pick(rows, BASELINE) == candidate_name(refined)
    # ...but the two-step rule keeps the cleanup and turns refinement off
    chosen, refinement_rows = choose_postprocessing(table, [off, largest, refined, refined_alone], resamples=500, seed=0)
    assert chosen == largest and not chosen.refine_edges
    assert [r["candidate"] for r in refinement_rows] == [candidate_name(largest), candidate_name(refined)]
    # a refinement that lifts every case on top of the cleanup is kept
    table[candidate_name(refined)] = scores([(d + 0.01, h - 0.5) for d, h in lifted])
    chosen, _ = choose_postprocessing(table, [off, largest, refined, refined_alone], resamples=500, seed=0)
    assert chosen == refined
