"""Correction effort, simulated: how many strokes a robot corrector needs to bring a bundled model's output
to Dice >= 0.95 with plain Paint/Erase, and with the "E2MISeg edge refine" Segment Editor effect.

Definitions (error regions, stroke placement, Segment Editor semantics, Dice) are in
benchmarks/robot_corrector.py. Both tools use the same brush radius (the effect's default) and the
same stroke centres; at most 20 strokes per case and tool. Predictions are the card's defaults,
made once per case and cached (benchmarks/validation_predictions.py). Run one model at a time:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/correction_effort.py --model e2miseg-hippocampus --cases 6

Writes benchmarks/results/correction_effort.json (one entry per model; a run replaces only its
model's entry) and correction_effort.md (the table of every model in the json). The issue's goal:
the effect needs at most half the strokes of painting, at under 1 s per stroke on the CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robot_corrector import MAX_STROKES, TARGET_DICE, TOOLS, correct, effect_defaults  # noqa: E402
from validation_predictions import (ROOT, BenchmarkInputError, add_case_options, command_line,  # noqa: E402
                                    label_values, load_cases, model_path)

RESULTS = ROOT / "benchmarks" / "results"
DOCS_PAGE = ROOT / "docs" / "edges.md"  # quotes the table between <!-- NAME:start/end --> markers
NAME = "correction_effort"
AFTER = (1, 3, 5)


def summarise(runs: list[dict]) -> dict:
    """Per tool: means over cases (a case that never reached the target counts MAX_STROKES strokes)."""
    summary = {}
    for tool in TOOLS:
        mine = [r for r in runs if r["tool"] == tool]
        seconds = [s for r in mine for s in r["seconds"]]
        summary[tool] = {
            "cases": len(mine),
            "dice_start": float(np.mean([r["dice"][0] for r in mine])),
            "mean_strokes": float(np.mean([r["strokes_used"] if r["reached"] else MAX_STROKES for r in mine])),
            "reached": int(sum(r["reached"] for r in mine)),
            **{f"dice_after_{k}": float(np.mean([r["dice"][min(k, len(r["dice"]) - 1)] for r in mine])) for k in AFTER},
            "dice_end": float(np.mean([r["dice"][-1] for r in mine])),
            "median_s_per_stroke": float(np.median(seconds)) if seconds else 0.0,
            "strokes": len(seconds),
            "strokes_changing_nothing": int(sum(s["changed_voxels"] == 0 for r in mine for s in r["strokes"])),
        }
    paint, effect = summary["paint"]["mean_strokes"], summary["effect"]["mean_strokes"]
    summary["effect_to_paint_strokes"] = effect / paint if paint else float("nan")
    # when neither tool ever reached the target, both counts are the cap and their ratio says nothing
    summary["ratio_meaningful"] = bool(summary["paint"]["reached"] or summary["effect"]["reached"])
    summary["goal_half_the_strokes"] = bool(effect <= 0.5 * paint) and summary["ratio_meaningful"]
    summary["goal_under_1_s"] = bool(summary["effect"]["median_s_per_stroke"] < 1.0)
    return summary


def run_model(name: str, count: int, data: Path, cache: Path, radius_mm: float | None = None) -> dict:
    from bench_common import finish_machine, machine

    defaults = effect_defaults()
    radius_mm = defaults["radius_mm"] if radius_mm is None else radius_mm
    if not 0 < radius_mm <= 50:
        raise BenchmarkInputError(f"--radius-mm {radius_mm} is outside 0..50 mm (0 excluded)")
    model_path(name)  # a wrong name is refused before anything slow starts
    info = machine(threads=1)
    card, cases = load_cases(name, count, data, cache, log=lambda m: print(m, file=sys.stderr, flush=True))
    values = label_values(card)
    runs = []
    for case in cases:
        image = sitk.GetArrayFromImage(case.image).astype(np.float32)
        for tool in TOOLS:
            result = correct(case.labels, case.reference, values, case.spacing_zyx, tool, image=image, radius_mm=radius_mm)
            runs.append({"case": case.name, "tool": tool, "reached": result.reached, "strokes_used": result.count,
                         "dice": [round(d, 5) for d in result.dice], "seconds": [round(s, 4) for s in result.seconds],
                         "strokes": result.strokes})
            print(f"{name} {case.name} {tool}: Dice {result.dice[0]:.3f} -> {result.dice[-1]:.3f} in {result.count} strokes"
                  f"{'' if result.reached else ' (target not reached)'}", file=sys.stderr, flush=True)
    return {"model": f"{card['name']} {card['version']}", "cases": [c.name for c in cases], "labels": values,
            "spacing_zyx_mm": [list(c.spacing_zyx) for c in cases], "brush_radius_mm": radius_mm,
            "effect_strength": defaults["strength"], "target_dice": TARGET_DICE, "max_strokes": MAX_STROKES,
            "summary": summarise(runs), "runs": runs, "machine": finish_machine(info)}


def markdown(results: dict) -> str:
    lines = ["# Correction effort, simulated (robot corrector)", "",
             "Strokes until the mean Dice over the model's labels reaches 0.95 against the reference (at most 20; a case "
             "that never reaches it counts 20; Dice after k strokes is the last Dice where the robot stopped sooner), starting from the model's output with its card's defaults on validation "
             "cases of its card's split. Each stroke: one sphere brush (radius in the table; by default the effect's default "
             "brush radius) at the voxel of the largest connected error region (per label, missed and extra voxels apart, "
             "26-connected) farthest from that region's border. `paint` = Segment Editor Paint (missed) or Erase (extra) "
             "with default masking; `effect` = the E2MISeg edge refine effect's engine call with its default strength. A "
             "stroke that changes nothing is not repeated (its region is passed over from then on). Time per stroke is the "
             "tool's own work on the CPU (1 thread). Definitions: `benchmarks/robot_corrector.py`.", "",
             "| model | brush radius | tool | cases | Dice at start | mean strokes | reached 0.95 | Dice after 1 | after 3 | "
             "after 5 | Dice at the end | median time per stroke | strokes that changed nothing |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(results["models"]):
        entry = results["models"][name]
        summary = summarise(entry["runs"])  # from the per-stroke records, so the table follows these definitions
        for tool in TOOLS:
            s = summary[tool]
            lines.append(f"| {entry['model']} | {entry['brush_radius_mm']:g} mm | {tool} | {s['cases']} | {s['dice_start']:.3f} | "
                         f"{s['mean_strokes']:.1f} | {s['reached']}/{s['cases']} | {s['dice_after_1']:.3f} | "
                         f"{s['dice_after_3']:.3f} | {s['dice_after_5']:.3f} | {s['dice_end']:.3f} | {1000 * s['median_s_per_stroke']:.1f} ms | "
                         f"{s['strokes_changing_nothing']}/{s['strokes']} |")
    lines += ["", "| model | effect/paint strokes | effect needs at most half the strokes | effect under 1 s per stroke | brush radius | effect strength |",
              "|---|---|---|---|---|---|"]
    for name in sorted(results["models"]):
        entry = results["models"][name]
        s = summarise(entry["runs"])
        ratio = f"{s['effect_to_paint_strokes']:.2f}" if s.get("ratio_meaningful", True) else "n/a (neither reached 0.95)"
        half = ("yes" if s["goal_half_the_strokes"] else "no") if s.get("ratio_meaningful", True) else "no (never reached 0.95)"
        lines.append(f"| {entry['model']} | {ratio} | {half} | "
                     f"{'yes' if s['goal_under_1_s'] else 'no'} | {entry['brush_radius_mm']:g} mm | {entry['effect_strength']:g} |")
    lines += ["", "Commands (from the repository root):", ""]
    for name in sorted(results["models"]):
        entry = results["models"][name]
        state = "quiet" if entry["machine"].get("quiet") else "loaded (timings are upper bounds)"
        lines.append(f"- `{entry['command']}` ({entry['machine']['date_utc']}, {entry['machine']['cpu']}, machine {state}; "
                     f"cases: {', '.join(entry['cases'])})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_options(parser, RESULTS)
    parser.add_argument("--radius-mm", type=float, default=None,
                        help="brush radius of both tools (default: the effect's default brush radius)")
    args = parser.parse_args(argv)
    try:
        entry = run_model(args.model, args.cases, args.data, args.cache, args.radius_mm)
    except BenchmarkInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    entry["command"] = command_line("correction_effort.py", argv)
    from bench_common import publish_model_results

    key = args.model if args.radius_mm is None else f"{args.model} radius {args.radius_mm:g} mm"
    text = publish_model_results(NAME, key, entry, markdown, args.results, DOCS_PAGE)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
