"""Perturbation experiment: reference masks with moved boundaries, refined against the image.

For each validation case (Task04_Hippocampus, ACDC), each perturbation (dilate / erode / shift by 1
and 2 voxels; in-plane only for thick-slice ACDC) and each refinement method and strength, this
measures per label Dice, HD95, ASSD and boundary F1 at 1 mm before and after refinement, and the
refinement time. Run by hand (single thread is enough):

    .venv/bin/python benchmarks/edges_perturbation.py --methods meanfield guided geodesic --strengths 0.5
    .venv/bin/python benchmarks/edges_perturbation.py --limit 4      # quick look

Writes benchmarks/results/edges_perturbation[_TAG].json and .md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "E2MISegModule"))

from edges_common import RESULTS, compact_rows, markdown_table, perturbations, summarise, validation_cases, write_json  # noqa: E402
from e2miseg.edges import EdgeOptions, refine_label_array  # noqa: E402
from e2miseg.edges.metrics import label_metrics  # noqa: E402


def run_case(image_path: Path, label_path: Path, methods: list[str], strengths: list[float], seed: int) -> list[dict]:
    image = sitk.ReadImage(str(image_path))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))).astype(np.uint8)
    guide = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    values = [int(v) for v in np.unique(reference) if v]
    rows = []
    for name, perturbed in perturbations(reference, spacing, seed):
        before = label_metrics(perturbed, reference, spacing, values)
        for method in methods:
            for strength in strengths:
                start = time.perf_counter()
                refined = refine_label_array(guide, perturbed, spacing, options=EdgeOptions(method=method, strength=strength))
                seconds = time.perf_counter() - start
                after = label_metrics(refined, reference, spacing, values)
                for value in values:
                    rows.append({"case": image_path.name, "perturbation": name, "method": method, "strength": strength,
                                 "label": value, "seconds": seconds, "before": before[value], "after": after[value]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["Task04_Hippocampus", "ACDC"])
    parser.add_argument("--methods", nargs="+", default=["meanfield", "guided", "geodesic"])
    parser.add_argument("--strengths", nargs="+", type=float, default=[0.5])
    parser.add_argument("--limit", type=int, default=0, help="only the first N validation cases per dataset")
    parser.add_argument("--tag", default="", help="suffix of the output file names")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        cases = validation_cases(dataset)
        if args.limit:
            cases = cases[: args.limit]
        for index, (image_path, label_path) in enumerate(cases):
            start = time.perf_counter()
            case_rows = run_case(image_path, label_path, args.methods, args.strengths, seed=index)
            for row in case_rows:
                row["dataset"] = dataset
            rows.extend(case_rows)
            print(f"{dataset} {index + 1}/{len(cases)} {image_path.name} {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    keys = ("dataset", "method", "strength", "label")
    by_method = summarise(rows, keys)
    by_perturbation = summarise(rows, ("dataset", "method", "strength", "perturbation"))
    timing = {}
    for row in rows:
        timing.setdefault((row["dataset"], row["method"], row["strength"]), {})[(row["case"], row["perturbation"])] = row["seconds"]
    time_table = [{"dataset": d, "method": m, "strength": s, "seconds_per_refinement_mean": float(np.mean(list(t.values()))),
                   "seconds_per_refinement_max": float(np.max(list(t.values())))} for (d, m, s), t in sorted(timing.items())]
    suffix = f"_{args.tag}" if args.tag else ""
    write_json(RESULTS / f"edges_perturbation{suffix}.json",
               {"by_label": by_method, "by_perturbation": by_perturbation, "timing": time_table, "rows": compact_rows(rows),
                "cases": {d: [p.name for p, _ in validation_cases(d)][: args.limit or None] for d in args.datasets}})
    lines = ["# Edge refinement: perturbation experiment (validation cases only)", "",
             "Reference masks perturbed (dilate / erode / shift by 1 and 2 voxels; in-plane for ACDC), refined from soft maps",
             "against the image; metrics against the reference. Means over cases and perturbations.", "",
             "## Per label", "", markdown_table(by_method, keys), "",
             "## Per perturbation (labels pooled)", "", markdown_table(by_perturbation, ("dataset", "method", "strength", "perturbation")), "",
             "## Time per refinement (one case, one perturbation)", "",
             "| dataset | method | strength | mean s | max s |", "|---|---|---|---|---|"]
    lines += [f"| {t['dataset']} | {t['method']} | {t['strength']} | {t['seconds_per_refinement_mean']:.3f} | {t['seconds_per_refinement_max']:.3f} |"
              for t in time_table]
    (RESULTS / f"edges_perturbation{suffix}.md").write_text("\n".join(lines) + "\n")
    print(markdown_table(by_method, keys))


if __name__ == "__main__":
    main()
