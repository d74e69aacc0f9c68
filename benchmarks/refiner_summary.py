"""The bundled models' learned boundary refiners side by side, as ``attach-refiner`` measured and recorded them.

Runs no network: it reads each bundled file's card (``refiner`` section: training and evaluation on the
card's validation split) and writes one table with the differences issue 19's targets are about, so
the docs quote one results file rather than three cards. Rerun after ``attach-refiner``:

    .venv/bin/python benchmarks/refiner_summary.py

Writes benchmarks/results/learned_refiners.{json,md}.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, write_results  # noqa: E402

MODELS = ROOT / "E2MISegModule" / "Resources" / "Models"
TARGETS = ("ASSD >= 10 % lower with refinement, HD95 not worse, Dice not lower by more than 0.002, >= 40 % of ASSD "
           "recovered on each reference damaged by 2 voxels, refinement <= 15 % of the network's time")


def summarise(path: Path) -> dict[str, Any] | None:
    from e2miseg.checkpoint import read_checkpoint

    _, card = read_checkpoint(path)
    refiner = card.get("refiner")
    if not refiner:
        return None
    evaluation, training = refiner["evaluation"], refiner["training"]
    without, with_ = evaluation["without"], evaluation["with"]
    return {"model": card["name"], "version": card["version"], "cases": evaluation["cases"],
            "training_minutes": training["minutes"], "iterations": training["iterations"],
            "without": without, "with": with_,
            "dice_change": round(with_["dice"] - without["dice"], 4),
            "hd95_change_mm": round(with_["hd95_mm"] - without["hd95_mm"], 3),
            "assd_change_percent": round(100 * (with_["assd_mm"] / without["assd_mm"] - 1), 1),
            "perturbed_2_voxels": evaluation["perturbed_2_voxels"],
            "cost_percent_of_network": round(100 * evaluation["cost_fraction"], 1),
            "failed_targets": [name for name, ok in evaluation["targets"].items() if not ok],
            "refine_edges_default": bool(card.get("defaults", {}).get("refine_edges"))}


def row(s: dict[str, Any]) -> str:
    damaged = s["perturbed_2_voxels"]
    recovered = " / ".join(f"{100 * damaged[k]['recovery']:.0f} % (from {damaged[k]['assd_before_mm']:.3f})"
                           for k in ("dilate", "erode", "shift"))
    default = "yes" if s["refine_edges_default"] else "no: " + ", ".join(s["failed_targets"]) + " missed"
    return (f"| {s['model']} {s['version']} | {s['cases']} | {s['iterations']} in {s['training_minutes']} min | "
            f"{s['without']['dice']:.4f} → {s['with']['dice']:.4f} ({s['dice_change']:+.4f}) | "
            f"{s['without']['hd95_mm']:.3f} → {s['with']['hd95_mm']:.3f} | "
            f"{s['without']['assd_mm']:.3f} → {s['with']['assd_mm']:.3f} ({s['assd_change_percent']:+.1f} %) | "
            f"{recovered} | {s['cost_percent_of_network']:.1f} % | {default} |")


def main() -> int:
    rows = [s for s in (summarise(p) for p in sorted(MODELS.glob("*.safetensors"))) if s]
    if not rows:
        print("no bundled model carries a refiner", file=sys.stderr)
        return 1
    table = ["| model | validation cases | training | Dice without → with | HD95 (mm) without → with | "
             "ASSD (mm) without → with | ASSD recovered on references dilated / eroded / shifted by 2 voxels "
             "(from ASSD mm) | refinement / network wall time | refinement on by default |",
             "|---|---:|---|---|---|---|---|---:|---|", *map(row, rows)]
    notes = [f"Issue 19's targets: {TARGETS}.",
             "Figures from each bundled file's card (`refiner.evaluation`, written by `e2miseg-train attach-refiner` "
             "on the card's validation cases with its other defaults); the machine line is the summary's, not the "
             "measurement's (see each card's Learned boundary refiner section)."]
    from bench_common import machine

    write_results("learned_refiners", {"machine": machine(1), "targets": TARGETS, "models": rows}, table, notes)
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
