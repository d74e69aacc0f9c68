"""Where a model's false positives lie, on its plan's validation cases (issues 24 and 25).

Each case goes through ``e2miseg.predict`` with the card's defaults (as the Slicer module runs it).
Per case: Dice per label, predicted / reference foreground volume, and the false-positive voxels split
by where they are: within 5 voxels of the reference ("near": boundary over-extension), farther
("far"), on slices where the reference has no foreground ("outside the reference's slices"), and in
connected components that touch no reference voxel ("stray islands"). Run by hand:

    .venv/bin/python benchmarks/false_positives.py MODEL PLAN.json --name NAME [--cases N] [--settings JSON]

``--settings`` overrides the card's defaults (e.g. '{"keep_largest": false, "quality": "normal"}' for the
network's own output), so each fix can be measured on its own.

Writes benchmarks/results/NAME.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import finish_machine, machine, write_results  # noqa: E402

NEAR_VOXELS = 5


def where_false_positives_lie(prediction: np.ndarray, reference: np.ndarray) -> dict[str, int]:
    predicted, truth = prediction > 0, reference > 0
    false_positive = predicted & ~truth
    near = ndimage.binary_dilation(truth, iterations=NEAR_VOXELS) if truth.any() else truth
    reference_slices = truth.any(axis=(1, 2))
    components, _ = ndimage.label(predicted)
    touching = np.unique(components[predicted & truth])
    stray = predicted & ~np.isin(components, touching)
    return {"false_positive": int(false_positive.sum()), "false_negative": int((truth & ~predicted).sum()),
            "near": int((false_positive & near).sum()), "far": int((false_positive & ~near).sum()),
            "outside_reference_slices": int(false_positive[~reference_slices].sum()), "stray_islands": int(stray.sum())}


def score_case(prediction: np.ndarray, reference: np.ndarray, values: list[int]) -> dict:
    dice = {}
    for value in values:
        a, b = reference == value, prediction == value
        dice[str(value)] = float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    volume_ratio = float((prediction > 0).sum() / max((reference > 0).sum(), 1))
    return {"dice": dice, "volume_ratio": volume_ratio, **where_false_positives_lie(prediction, reference)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="checkpoint path or store name")
    parser.add_argument("plan", help="plan JSON from e2miseg-train plan (dataset and validation split)")
    parser.add_argument("--name", required=True, help="results file stem")
    parser.add_argument("--cases", type=int, help="at most N validation cases")
    parser.add_argument("--settings", help="JSON of e2miseg.Settings fields that override the card's defaults")
    args = parser.parse_args()

    import torch

    import e2miseg

    info = machine(torch.get_num_threads())
    plan = json.loads(Path(args.plan).read_text(encoding="utf-8"))
    root = Path(plan["dataset"])
    model, card = e2miseg.load_model(args.model, device="cpu")
    overrides = json.loads(args.settings) if args.settings else {}
    values = [label["value"] for label in card["labels"]]
    rows = []
    for case in plan["split"]["val"][: args.cases]:
        labels = e2miseg.predict(str(root / "imagesTr" / f"{case}.nii.gz"), model, **overrides)
        prediction = sitk.GetArrayFromImage(labels)
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / f"{case}.nii.gz")))
        rows.append({"case": case, **score_case(prediction, reference, values)})
        print(json.dumps(rows[-1]), flush=True)
    totals = {key: sum(r[key] for r in rows) for key in ("false_positive", "false_negative", "near", "far",
                                                          "outside_reference_slices", "stray_islands")}
    mean_dice = {card_label["name"]: statistics.mean(r["dice"][str(card_label["value"])] for r in rows)
                 for card_label in card["labels"]}
    summary = {"model": f"{card['name']} {card['version']}", "cases": len(rows),
               "settings": overrides or "card defaults", "mean_dice": mean_dice,
               "median_volume_ratio": statistics.median(r["volume_ratio"] for r in rows), "totals": totals}
    fp = max(totals["false_positive"], 1)
    described = ", ".join(f"{k} {v}" for k, v in overrides.items()) if overrides else "card defaults"
    lines = [f"**{summary['model']}**, {len(rows)} validation cases, {described}",
             "",
             "| mean Dice | median predicted / reference volume | false-positive voxels | false negatives | "
             f"within {NEAR_VOXELS} voxels | farther | on slices without reference | in stray islands |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| {', '.join(f'{k} {v:.3f}' for k, v in mean_dice.items())} | {summary['median_volume_ratio']:.2f} | "
             f"{totals['false_positive']} | {totals['false_negative']} | {100 * totals['near'] / fp:.0f} % | "
             f"{100 * totals['far'] / fp:.0f} % | {100 * totals['outside_reference_slices'] / fp:.0f} % | "
             f"{100 * totals['stray_islands'] / fp:.0f} % |"]
    write_results(args.name, {"machine": finish_machine(info), "summary": summary, "rows": rows}, lines,
                  [f"`benchmarks/false_positives.py {args.model} {args.plan} --name {args.name}"
                   + (f" --settings '{args.settings}'" if args.settings else "") + "`"])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
