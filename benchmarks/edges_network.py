"""Network predictions with and without edge refinement, on validation cases only.

For each validation case the network runs once (probabilities kept); the prediction is then refined
at each requested strength. Per label Dice, HD95, ASSD and boundary F1 at 1 mm against the reference,
the network's time and the refinement's time per case. Run by hand:

    .venv/bin/python benchmarks/edges_network.py                       # the bundled hippocampus model
    .venv/bin/python benchmarks/edges_network.py --checkpoint tiny.safetensors --limit 2 --tag smoke
    E2MISEG_RUNTIME=openvino OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edges_network.py --strengths 0.15 0.3 0.5 0.75

Writes benchmarks/results/edges_network[_TAG].json and .md. Acceptance (issue 6): no label's mean
Dice may drop by more than 0.005; the boundary metrics should improve.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "E2MISegModule"))

from edges_common import RESULTS, ROOT, compact_rows, markdown_table, summarise, validation_cases, write_json  # noqa: E402

DEFAULT_CHECKPOINT = ROOT / "E2MISegModule" / "Resources" / "Models" / "e2miseg-hippocampus.safetensors"


def run(args) -> dict:
    import torch

    import e2miseg
    from e2miseg.edges import refine_prediction
    from e2miseg.edges.metrics import label_metrics
    from e2miseg.edges.uncertainty import uncertainty_image

    torch.set_num_threads(args.threads)
    model, card = e2miseg.load_model(str(args.checkpoint), device="cpu")
    values = [entry["value"] for entry in card["labels"]]
    cases = validation_cases(args.dataset)[: args.limit or None]
    rows, timing = [], []
    for index, (image_path, label_path) in enumerate(cases):
        image = sitk.ReadImage(str(image_path))
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
        spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
        start = time.perf_counter()
        labels, probabilities = e2miseg.predict(image, model, card, return_probabilities=True)
        network_s = time.perf_counter() - start
        raw = sitk.GetArrayFromImage(labels)
        before = label_metrics(raw, reference, spacing, values)
        start = time.perf_counter()
        uncertainty_image(probabilities)
        case_timing = {"case": image_path.name, "network_s": network_s, "uncertainty_s": time.perf_counter() - start}
        for strength in args.strengths:
            start = time.perf_counter()
            refined = refine_prediction(image, labels, probabilities, strength=strength, method=args.method)
            case_timing[f"refine_s@{strength}"] = time.perf_counter() - start
            after = label_metrics(sitk.GetArrayFromImage(refined), reference, spacing, values)
            for value in values:
                rows.append({"dataset": args.dataset, "case": image_path.name, "method": args.method, "strength": strength,
                             "label": value, "before": before[value], "after": after[value]})
        timing.append(case_timing)
        print(f"{index + 1}/{len(cases)} {image_path.name} network {network_s:.1f}s "
              + " ".join(f"{k}={v:.2f}" for k, v in case_timing.items() if k.startswith("refine")), file=sys.stderr, flush=True)
    from e2miseg.runtime import resolve_runtime

    runtime = resolve_runtime(None, torch.device("cpu"))  # what predict() used (E2MISEG_RUNTIME, else auto)
    return {"checkpoint": str(args.checkpoint), "model": f"{card['name']}-{card['version']}", "runtime": runtime,
            "threads": args.threads, "rows": rows, "timing": timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--dataset", default="Task04_Hippocampus")
    parser.add_argument("--strengths", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--method", default="meanfield")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    if not args.checkpoint.exists():
        sys.exit(f"no checkpoint at {args.checkpoint}; pass --checkpoint")
    result = run(args)
    keys = ("dataset", "method", "strength", "label")
    table = summarise(result["rows"], keys)
    for entry in table:
        entry["dice_change"] = entry["dice_after"] - entry["dice_before"]
        entry["accepted"] = entry["dice_change"] >= -0.005
    timing = result["timing"]
    time_summary = {key: float(np.mean([t[key] for t in timing])) for key in timing[0] if key != "case"} if timing else {}
    if timing:  # the first case also pays the runtime's one-time model conversion
        time_summary["network_s median"] = float(np.median([t["network_s"] for t in timing]))
    suffix = f"_{args.tag}" if args.tag else ""
    write_json(RESULTS / f"edges_network{suffix}.json", {**result, "rows": compact_rows(result["rows"]), "by_label": table,
                                                          "mean_seconds": time_summary})
    lines = [f"# Edge refinement on network predictions ({result['model']}, validation cases only)", "",
             f"Checkpoint `{Path(result['checkpoint']).name}`; {len(timing)} cases of {args.dataset}; method {args.method}; "
             f"network runtime {result['runtime']}, {result['threads']} thread(s) "
             f"(E2MISEG_RUNTIME={os.environ.get('E2MISEG_RUNTIME', '')}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}).", "",
             markdown_table(table, keys), "",
             "Acceptance (mean Dice may not drop by more than 0.005 on any label): "
             + ", ".join(f"strength {e['strength']} label {e['label']}: {'ok' if e['accepted'] else 'FAILS'} ({e['dice_change']:+.4f})"
                         for e in table), "",
             f"## Mean time per case (s, CPU, {result['threads']} thread(s))", "",
             "| " + " | ".join(time_summary) + " |", "|" + "---|" * len(time_summary),
             "| " + " | ".join(f"{v:.3f}" for v in time_summary.values()) + " |"]
    (RESULTS / f"edges_network{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
