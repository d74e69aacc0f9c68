"""``e2miseg-train compare``: paired per-case Dice of two evaluations (synthetic per_case.csv files)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from e2miseg.errors import E2MISegError
from e2miseg_train.cli import main
from e2miseg_train.paired import paired_dice, read_per_case, verdict

LABELS = ("Anterior", "Posterior")


def write_eval(folder, dice_by_label, model="m"):
    """An ``evaluate`` folder: per_case.csv rows as evaluate writes them, and a summary.json."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "per_case.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "label", "label_name", "dice", "hd95_mm", "pred_voxels", "ref_voxels"])
        writer.writeheader()
        for value, (name, scores) in enumerate(dice_by_label.items(), start=1):
            for i, dice in enumerate(scores):
                writer.writerow({"case": f"case_{i:03d}", "label": value, "label_name": name, "dice": f"{dice:.6f}",
                                 "hd95_mm": "1.0", "pred_voxels": 10, "ref_voxels": 10})
    (folder / "summary.json").write_text(json.dumps({"model": model}), encoding="utf-8")
    return folder


@pytest.fixture
def base_scores():
    rng = np.random.default_rng(3)
    return {name: list(np.clip(rng.normal(0.87, 0.03, 41), 0, 1)) for name in LABELS}


def test_a_model_better_on_every_case_is_called_better(tmp_path, base_scores):
    rng = np.random.default_rng(4)
    better = {name: [s + 0.02 + rng.uniform(0, 0.004) for s in scores] for name, scores in base_scores.items()}
    results = paired_dice(read_per_case(write_eval(tmp_path / "a", better)), read_per_case(write_eval(tmp_path / "b", base_scores)))
    for r in results:
        assert r["cases"] == 41 and r["a_wins"] == 41 and r["b_wins"] == 0
        assert 0.02 <= r["mean_difference"] <= 0.024
        assert 0.02 <= r["ci95"][0] <= r["mean_difference"] <= r["ci95"][1] <= 0.024
        assert r["wilcoxon_p"] < 1e-6
        assert verdict(r) == "A better"


def test_swapping_the_models_negates_the_difference_and_its_interval(tmp_path, base_scores):
    rng = np.random.default_rng(5)
    other = {name: [s + rng.normal(0, 0.01) for s in scores] for name, scores in base_scores.items()}
    a, b = read_per_case(write_eval(tmp_path / "a", other)), read_per_case(write_eval(tmp_path / "b", base_scores))
    forward, backward = paired_dice(a, b, seed=1), paired_dice(b, a, seed=1)
    for f, r in zip(forward, backward):
        assert f["mean_difference"] == pytest.approx(-r["mean_difference"])
        assert f["ci95"][0] == pytest.approx(-r["ci95"][1]) and f["ci95"][1] == pytest.approx(-r["ci95"][0])
        assert f["wilcoxon_p"] == pytest.approx(r["wilcoxon_p"])
        assert (f["a_wins"], f["b_wins"]) == (r["b_wins"], r["a_wins"])


def test_noise_around_the_same_scores_is_not_significant_and_identical_scores_tie(tmp_path, base_scores):
    rng = np.random.default_rng(6)
    noisy = {name: [s + rng.choice([-0.01, 0.01]) for s in scores] for name, scores in base_scores.items()}
    b = read_per_case(write_eval(tmp_path / "b", base_scores))
    for r in paired_dice(read_per_case(write_eval(tmp_path / "a", noisy)), b):
        assert r["ci95"][0] < 0 < r["ci95"][1]
        assert "CI spans 0" in verdict(r)
    for r in paired_dice(b, b):
        assert r["ties"] == 41 and r["mean_difference"] == 0 and r["ci95"] == [0.0, 0.0] and r["wilcoxon_p"] == 1.0
        assert verdict(r) == "even"


def test_evaluations_of_different_cases_are_refused_with_the_case_named(tmp_path, base_scores):
    shorter = {name: scores[:40] for name, scores in base_scores.items()}
    with pytest.raises(E2MISegError, match="case_040"):
        paired_dice(read_per_case(write_eval(tmp_path / "a", base_scores)), read_per_case(write_eval(tmp_path / "b", shorter)))


def test_cli_prints_and_writes_the_table_and_fails_in_one_line(tmp_path, base_scores, capsys):
    a = write_eval(tmp_path / "a", {n: [s + 0.01 for s in v] for n, v in base_scores.items()}, model="e2miseg-x")
    b = write_eval(tmp_path / "b", base_scores, model="monai-dynunet-x")
    assert main(["compare", str(a), str(b / "per_case.csv"), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "e2miseg-x" in printed and "monai-dynunet-x" in printed
    assert printed.count("| A better |") == 2
    saved = json.loads((tmp_path / "cmp" / "paired.json").read_text(encoding="utf-8"))
    assert [r["label"] for r in saved["labels"]] == list(LABELS)
    assert (tmp_path / "cmp" / "paired.md").read_text(encoding="utf-8") == printed
    # Reproducible: the bootstrap is seeded.
    main(["compare", str(a), str(b)])
    assert capsys.readouterr().out == printed

    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no per-case scores at") and "\n" not in err
