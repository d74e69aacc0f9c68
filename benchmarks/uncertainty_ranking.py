"""Does "Next uncertain edge" point at real errors? The share of all error voxels inside the top 5 regions
the engine ranks, against 5 regions of the same sizes placed at random along the predicted boundary.

The regions are exactly the ones the module walks through after a Segment run with the uncertainty
overlay on (``write_prediction_uncertainty``: normalised entropy of the network's probabilities,
voxels >= 0.3 within 2 mm of a predicted boundary, cut into patches of about 15 mm, ranked by summed
uncertainty), taken as voxels through ``e2miseg.edges.uncertainty.ranked_components``.

- Error voxels: every voxel whose predicted label differs from the reference's (all labels).
- Random regions: for each top region in turn, a random voxel of the predicted boundary (a voxel with
  a 6-neighbour of another label) not yet used, and the region's number of voxels nearest to it (mm)
  among the voxels within 2 mm of the boundary (the ranking's own candidates) not yet used; repeated
  ``--repeats`` times. With fewer than 5 ranked regions, as many random ones.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/uncertainty_ranking.py --model e2miseg-hippocampus --cases 6

Writes benchmarks/results/uncertainty_ranking.json (one entry per model; a run replaces only its
model's entry) and uncertainty_ranking.md. Predictions are shared with correction_effort.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from validation_predictions import ROOT, BenchmarkInputError, add_case_options, command_line, load_cases  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOCS_PAGE = ROOT / "docs" / "edges.md"  # quotes the table between <!-- NAME:start/end --> markers
NAME = "uncertainty_ranking"
TOP = 5


def top_regions(uncertainty: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, float, float],
                top: int = TOP) -> list[np.ndarray]:
    """The first ``top`` regions "Next uncertain edge" visits, as (N, 3) voxel indices (z, y, x), most uncertain first."""
    from scipy import ndimage

    from e2miseg.edges.uncertainty import ranked_components

    components, _sums, order = ranked_components(uncertainty, labels, spacing_zyx)
    boxes = ndimage.find_objects(components)
    regions = []
    for position in order[:top]:
        box = boxes[position]
        regions.append(np.argwhere(components[box] == position + 1) + [s.start for s in box])
    return regions


def share_inside(errors: np.ndarray, regions: list[np.ndarray]) -> float:
    """Share of the error voxels that lie in the union of ``regions`` ((N, 3) indices); 1 when there is no error."""
    total = int(np.count_nonzero(errors))
    if total == 0:
        return 1.0
    if not regions:
        return 0.0
    flat = np.unique(np.ravel_multi_index(tuple(np.concatenate(regions).T), errors.shape))
    return float(np.count_nonzero(errors.ravel()[flat])) / total


def random_regions(band: np.ndarray, boundary: np.ndarray, spacing_zyx: tuple[float, float, float], sizes: list[int],
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint regions of the given voxel counts, each the ``band`` voxels nearest (mm) a random ``boundary``
    voxel that no earlier region took; (N, 3) indices."""
    spacing = np.asarray(spacing_zyx)
    band_points = np.argwhere(band)  # C order, so flat indices are sorted
    band_mm = band_points * spacing
    band_flat = np.ravel_multi_index(tuple(band_points.T), band.shape)
    seeds = np.argwhere(boundary & band)
    seed_in_band = np.searchsorted(band_flat, np.ravel_multi_index(tuple(seeds.T), band.shape))
    free = np.ones(len(band_points), dtype=bool)
    regions = []
    for size in sizes:
        available = np.flatnonzero(free[seed_in_band])
        if not len(available):
            break
        seed_mm = seeds[rng.choice(available)] * spacing
        candidates = np.flatnonzero(free)
        distance = np.sum((band_mm[candidates] - seed_mm) ** 2, axis=1)
        count = min(size, len(candidates))
        take = candidates[np.argpartition(distance, count - 1)[:count]]
        free[take] = False
        regions.append(band_points[take])
    return regions


def measure_case(labels: np.ndarray, reference: np.ndarray, uncertainty: np.ndarray, spacing_zyx: tuple[float, float, float],
                 repeats: int, seed: int) -> dict:
    from e2miseg.edges.band import band_mask, boundary_mask
    from e2miseg.edges.uncertainty import DEFAULT_REGION_BAND_MM

    errors = labels != reference
    top = top_regions(uncertainty, labels, spacing_zyx)
    sizes = [len(r) for r in top]
    band = band_mask(labels, spacing_zyx, DEFAULT_REGION_BAND_MM)  # the ranking's own candidate voxels
    boundary = boundary_mask(labels)
    rng = np.random.default_rng(seed)
    random_shares = [share_inside(errors, random_regions(band, boundary, spacing_zyx, sizes, rng)) for _ in range(repeats)]
    return {"error_voxels": int(np.count_nonzero(errors)), "regions": len(top), "region_voxels": sizes,
            "top_share": share_inside(errors, top), "random_shares": random_shares,
            "band_share": share_inside(errors, [np.argwhere(band)]), "band_voxels": int(np.count_nonzero(band))}


def summarise(rows: list[dict]) -> dict:
    repeats = len(rows[0]["random_shares"])
    per_repeat = [float(np.mean([r["random_shares"][k] for r in rows])) for k in range(repeats)]
    top = float(np.mean([r["top_share"] for r in rows]))
    random_mean = float(np.mean(per_repeat))
    return {"cases": len(rows), "top_share": top, "random_share_mean": random_mean,
            "random_share_sd": float(np.std(per_repeat, ddof=1)) if repeats > 1 else 0.0,
            "random_share_min": float(min(per_repeat)), "random_share_max": float(max(per_repeat)),
            "top_over_random": top / random_mean if random_mean else float("nan"),
            "top_beats_every_repeat": bool(all(top > p for p in per_repeat)),
            "band_share": float(np.mean([r["band_share"] for r in rows])),
            # how much of what the button shows is wrong: errors inside the top 5 over their voxels (pooled)
            "top_precision": float(sum(r["top_share"] * r["error_voxels"] for r in rows)
                                   / max(1, sum(sum(r["region_voxels"]) for r in rows))),
            "mean_regions": float(np.mean([r["regions"] for r in rows])),
            "mean_top5_voxels": float(np.mean([sum(r["region_voxels"]) for r in rows])),
            "mean_error_voxels": float(np.mean([r["error_voxels"] for r in rows]))}


def markdown(results: dict) -> str:
    lines = ["# Does \"Next uncertain edge\" point at real errors?", "",
             "Share of all error voxels (predicted label differs from the reference) inside the top 5 regions the engine "
             "ranks (the regions \"Next uncertain edge\" visits after a Segment run, as voxels), against 5 regions of the "
             "same sizes placed at random along the predicted boundary (nearest voxels within 2 mm of the boundary to a "
             "random boundary voxel; mean and SD over repeats of the per-case mean). Predictions: card defaults on "
             "validation cases of the card's split. Definitions: `benchmarks/uncertainty_ranking.py`.", "",
             "| model | cases | error voxels per case | top 5 regions: voxels | share in top 5 | share in random 5 (mean ± SD) | "
             "random min–max | top / random | top 5 voxels that are errors | errors within 2 mm of the boundary |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(results["models"]):
        entry = results["models"][name]
        s = summarise(entry["rows"])  # from the per-case rows, so the table follows these definitions
        lines.append(f"| {entry['model']} | {s['cases']} | {s['mean_error_voxels']:.0f} | {s['mean_top5_voxels']:.0f} | "
                     f"{100 * s['top_share']:.1f} % | {100 * s['random_share_mean']:.1f} ± {100 * s['random_share_sd']:.1f} % | "
                     f"{100 * s['random_share_min']:.1f}–{100 * s['random_share_max']:.1f} % | {s['top_over_random']:.2f} | "
                     f"{100 * s['top_precision']:.1f} % | "
                     f"{100 * s['band_share']:.1f} % |")
    lines += ["", "Commands (from the repository root):", ""]
    for name in sorted(results["models"]):
        entry = results["models"][name]
        lines.append(f"- `{entry['command']}` ({entry['repeats']} random placements, seed {entry['seed']}; "
                     f"cases: {', '.join(entry['cases'])})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_options(parser, RESULTS)
    parser.add_argument("--repeats", type=int, default=20, help="random placements per case (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.repeats < 2:
            raise BenchmarkInputError(f"--repeats must be at least 2 (a spread needs two), not {args.repeats}")
        card, cases = load_cases(args.model, args.cases, args.data, args.cache, log=lambda m: print(m, file=sys.stderr, flush=True))
    except BenchmarkInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = []
    for index, case in enumerate(cases):
        row = measure_case(case.labels, case.reference, case.uncertainty, case.spacing_zyx, args.repeats, args.seed + index)
        rows.append({"case": case.name, **row})
        print(f"{args.model} {case.name}: top 5 {100 * row['top_share']:.1f} %, random {100 * np.mean(row['random_shares']):.1f} %",
              file=sys.stderr, flush=True)
    entry = {"model": f"{card['name']} {card['version']}", "cases": [c.name for c in cases], "repeats": args.repeats,
             "seed": args.seed, "summary": summarise(rows), "rows": rows,
             "command": command_line("uncertainty_ranking.py", argv)}
    from bench_common import publish_model_results

    print(publish_model_results(NAME, args.model, entry, markdown, args.results, DOCS_PAGE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
