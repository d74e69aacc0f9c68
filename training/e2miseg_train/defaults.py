"""``choose-defaults``: measure a model's postprocessing and quality candidates on its validation split
and record the comparison and the chosen defaults in its card (``defaults`` section, ``e2miseg.settings``).

Each validation case runs through the network once per quality, with every postprocessing step off;
each candidate (largest component per label, island removal, edge refinement at each method and
strength) is then applied to that same output with ``e2miseg.postprocess.finish_labels``, the function
``e2miseg.predict`` applies them with, and scored against the reference on the input grid.

The rule, the same for every setting: the engine's default (everything off, quality normal) stays
unless a candidate *measurably* helps, that is its paired difference to the engine default over the
cases (case-mean Dice over labels) has a bootstrap 95 % interval above zero, or its Dice is not lower
and its HD95 interval is below zero. Among those that help, the highest mean Dice wins.

Postprocessing is chosen in two steps, so that one step cannot ride on another's gain: first the cleanup
(largest component, islands, or none) against the engine default, with refinement off; then edge
refinement on top of that chosen cleanup, against the cleanup alone. So edge refinement stays off for a
model where it does not measurably help beyond the cleanup.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import SimpleITK as sitk
from scipy.stats import bootstrap

from e2miseg.errors import E2MISegError
from e2miseg.postprocess import finish_labels
from e2miseg.settings import ENGINE_DEFAULTS, QUALITIES, Settings
from e2miseg.validate import read_checked_channels

from .amend import amend_card, replace_markdown_section
from .evaluate import card_cases, label_scores, load_any
from .volumes import reference_volumes

POST_FIELDS = ("keep_largest", "min_island_mm3", "refine_edges", "edge_method", "edge_strength")
BASELINE = "engine default"


def candidate_name(settings: Settings) -> str:
    parts = []
    if settings.keep_largest:
        parts.append("largest component")
    if settings.min_island_mm3:
        parts.append(f"islands < {settings.min_island_mm3:g} mm³")
    if settings.refine_edges:
        parts.append(f"refine {settings.edge_method} {settings.edge_strength:g}")
    if settings.quality != ENGINE_DEFAULTS.quality:
        parts.append(f"quality {settings.quality}")
    return " + ".join(parts) or BASELINE


def postprocessing_candidates(island_sizes_mm3: Iterable[float], methods: Iterable[str],
                              strengths: Iterable[float]) -> list[Settings]:
    """Largest component, or islands below each size, or neither; each without or with refinement."""
    cleanups = [Settings(keep_largest=False, min_island_mm3=0.0), Settings(keep_largest=True, min_island_mm3=0.0)]
    cleanups += [Settings(keep_largest=False, min_island_mm3=float(size)) for size in island_sizes_mm3 if size > 0]
    refinements = [Settings(refine_edges=False)]
    refinements += [Settings(refine_edges=True, edge_method=m, edge_strength=float(s)) for m in methods for s in strengths if s > 0]
    return [refine.over(clean).over(ENGINE_DEFAULTS) for clean in cleanups for refine in refinements]


def island_sizes(reference_volumes_mm3: list[float], fractions: Iterable[float]) -> list[float]:
    """Island thresholds as fractions of the smallest structure's median volume, rounded to 2 significant digits."""
    if not reference_volumes_mm3:
        return []
    median = float(np.median(reference_volumes_mm3))
    return sorted({float(f"{median * f:.2g}") for f in fractions if median * f > 0})


def smallest_structure_volumes(cases, card: dict) -> list[float]:
    """Reference volumes (mm³) of the label with the smallest median volume, over ``cases``."""
    per_case = reference_volumes(cases, card["labels"])
    volumes = [[case[label["name"]] for case in per_case.values()] for label in card["labels"]]
    return min(volumes, key=lambda v: float(np.median(v)))


def case_scores(prediction: np.ndarray, reference: np.ndarray, labels: list[dict], spacing_zyx) -> dict[str, float]:
    """Mean Dice and mean HD95 (mm) over the labels of one case (HD95 inf when a label is missing on one side)."""
    rows = [label_scores(prediction, reference, label["value"], spacing_zyx) for label in labels]
    return {"dice": float(np.mean([r["dice"] for r in rows])), "hd95_mm": float(np.mean([r["hd95_mm"] for r in rows]))}


def _interval(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    if len(values) < 2 or np.all(values == values[0]):
        value = float(values[0]) if len(values) else math.nan
        return value, value
    result = bootstrap((values,), np.mean, n_resamples=resamples, method="percentile",
                       random_state=np.random.default_rng(seed), vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare(scores: dict[str, dict[str, dict[str, float]]], baseline: str, resamples: int, seed: int) -> list[dict[str, Any]]:
    """Per candidate: means and paired differences to ``baseline`` with bootstrap 95 % intervals; sorted best first."""
    cases = sorted(scores[baseline])
    rows = []
    for name, per_case in scores.items():
        dice = np.array([per_case[c]["dice"] for c in cases])
        base_dice = np.array([scores[baseline][c]["dice"] for c in cases])
        hd = np.array([per_case[c]["hd95_mm"] for c in cases])
        base_hd = np.array([scores[baseline][c]["hd95_mm"] for c in cases])
        finite = np.isfinite(hd) & np.isfinite(base_hd)  # a missing structure has no distance to pair
        d_dice, d_hd = dice - base_dice, hd[finite] - base_hd[finite]
        dice_ci = _interval(d_dice, resamples, seed)
        hd_ci = _interval(d_hd, resamples, seed) if finite.any() else (math.nan, math.nan)
        helps = name != baseline and (dice_ci[0] > 0 or (d_dice.mean() >= 0 and hd_ci[1] < 0))
        rows.append({"candidate": name, "cases": len(cases), "dice_mean": round(float(dice.mean()), 4),
                     "dice_difference": round(float(d_dice.mean()), 4), "dice_difference_ci95": [round(v, 4) for v in dice_ci],
                     "hd95_mm_mean": round(float(np.mean(hd[np.isfinite(hd)])), 2) if np.isfinite(hd).any() else None,
                     "hd95_mm_difference": round(float(d_hd.mean()), 2) if len(d_hd) else None,
                     "hd95_mm_difference_ci95": [round(v, 2) for v in hd_ci], "measurably_helps": bool(helps)})
    return sorted(rows, key=lambda r: (r["candidate"] != baseline, -r["dice_mean"]))


def choose_postprocessing(scores: dict[str, dict[str, dict[str, float]]], candidates: list[Settings], resamples: int,
                          seed: int) -> tuple[Settings, list[dict[str, Any]]]:
    """The cleanup that measurably helps against the engine default (refinement off), then the refinement
    that measurably helps against that cleanup alone; returns the chosen settings and the second table."""
    cleanups = [s for s in candidates if not s.refine_edges]
    cleanup_rows = compare({candidate_name(s): scores[candidate_name(s)] for s in cleanups}, BASELINE, resamples, seed)
    cleanup = next(s for s in cleanups if candidate_name(s) == pick(cleanup_rows, BASELINE))
    on_top = [cleanup] + [s for s in candidates if s.refine_edges and _unrefined(s) == _unrefined(cleanup)]
    refine_rows = compare({candidate_name(s): scores[candidate_name(s)] for s in on_top}, candidate_name(cleanup),
                          resamples, seed)
    chosen = next(s for s in on_top if candidate_name(s) == pick(refine_rows, candidate_name(cleanup)))
    return chosen, refine_rows


def _unrefined(settings: Settings) -> Settings:
    return settings.replace(refine_edges=False, edge_method=None, edge_strength=None)


def pick(rows: list[dict[str, Any]], baseline: str) -> str:
    helping = [r for r in rows if r["measurably_helps"]]
    if not helping:
        return baseline
    return max(helping, key=lambda r: (r["dice_mean"], -(r["hd95_mm_mean"] or math.inf)))["candidate"]


def markdown(comparison: dict[str, Any]) -> str:
    lines = [f"**Defaults of {comparison['model']} chosen on {comparison['cases']} validation cases** "
             f"({comparison['rule']})", ""]
    refinement_base = comparison.get("refinement", [{}])[0].get("candidate", BASELINE)
    sections = [("Postprocessing (on the normal-quality network output)", "postprocessing", "default"),
                (f"Edge refinement on top of the chosen cleanup ({refinement_base})", "refinement", refinement_base),
                ("Quality (no postprocessing)", "quality", "default")]
    for section, key, against in sections:
        if key not in comparison:  # comparisons recorded before refinement was judged on its own
            continue
        lines += [f"*{section}*", "", f"| candidate | mean Dice | Δ Dice vs {against} (95 % CI) | mean HD95 (mm) | "
                  "Δ HD95 (95 % CI) | measurably helps |", "|---|---|---|---|---|---|"]
        for r in comparison[key]:
            ci, hci = r["dice_difference_ci95"], r["hd95_mm_difference_ci95"]
            lines.append(f"| {r['candidate']} | {r['dice_mean']:.4f} | {r['dice_difference']:+.4f} ({ci[0]:+.4f} .. {ci[1]:+.4f}) | "
                         f"{r['hd95_mm_mean']} | {r['hd95_mm_difference']} ({hci[0]} .. {hci[1]}) | "
                         f"{'yes' if r['measurably_helps'] else 'no'} |")
        lines.append("")
    chosen = ", ".join(f"{k} = {v}" for k, v in comparison["chosen"].items())
    lines += [f"Chosen: {chosen}.", ""]
    return "\n".join(lines)


def choose_defaults(model: str, dataset: str | Path | None = None, out: str | Path | None = None, cases: str = "card",
                    device: str = "cpu", threads: int | None = None, qualities: Iterable[str] = QUALITIES,
                    methods: Iterable[str] = ("meanfield",), strengths: Iterable[float] = (0.3, 0.6),
                    island_fractions: Iterable[float] = (0.02, 0.1), limit: int | None = None, resamples: int = 2000,
                    seed: int = 0, write: bool = False, record: bool = False, log=print) -> dict[str, Any]:
    """Score the candidates on the validation cases, choose, and (``write``) put them into the checkpoint's card."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    network, card = load_any(model, device)
    dataset, selected = card_cases(card, dataset, cases)
    selected = selected[: limit or None]
    qualities = [q for q in QUALITIES if q in set(qualities)]
    if "normal" not in qualities:
        qualities.insert(0, "normal")  # the postprocessing candidates are compared on the normal output
    off = Settings(keep_largest=False, min_island_mm3=0.0, refine_edges=False)
    started = time.time()
    sizes = island_sizes(smallest_structure_volumes(selected, card), island_fractions)
    candidates = postprocessing_candidates(sizes, methods, strengths)
    post_scores: dict[str, dict[str, dict[str, float]]] = {}
    quality_scores: dict[str, dict[str, dict[str, float]]] = {}
    for index, case in enumerate(selected, 1):
        # one case at a time: a probability map of a large volume is hundreds of MB
        channels = read_checked_channels([str(p) for p in case.images], card)
        reference_image = sitk.ReadImage(str(case.label))
        reference = sitk.GetArrayFromImage(reference_image)
        spacing_zyx = tuple(reference_image.GetSpacing())[::-1]
        for quality in qualities:
            labels, probabilities = predict_raw(channels, network, card, off.replace(quality=quality))
            quality_scores.setdefault(candidate_name(off.replace(quality=quality).over(ENGINE_DEFAULTS)), {})[case.name] = \
                case_scores(sitk.GetArrayFromImage(labels), reference, card["labels"], spacing_zyx)
            if quality != "normal":
                continue
            for settings in candidates:
                finished = finish_labels(labels, card, settings, channels[0], probabilities, getattr(network, "refiner", None))
                post_scores.setdefault(candidate_name(settings), {})[case.name] = case_scores(
                    sitk.GetArrayFromImage(finished), reference, card["labels"], spacing_zyx)
        del channels, labels, probabilities
        log(f"[{index}/{len(selected)}] {case.name}: {len(qualities)} network run(s), {len(candidates)} postprocessing candidates "
            f"({time.time() - started:.0f} s)")
    post_rows = compare(post_scores, BASELINE, resamples, seed)
    quality_rows = compare(quality_scores, BASELINE, resamples, seed)
    chosen_post, refine_rows = choose_postprocessing(post_scores, candidates, resamples, seed)
    chosen_quality = next(q for q in qualities if candidate_name(off.replace(quality=q).over(ENGINE_DEFAULTS)) ==
                          pick(quality_rows, BASELINE))
    chosen = {field: getattr(chosen_post, field) for field in POST_FIELDS}
    chosen["quality"] = chosen_quality
    comparison = {
        "model": f"{card['name']} {card['version']}", "dataset": dataset.name, "cases": len(selected),
        "case_names": [c.name for c in selected], "metric": "case-mean Dice over labels; HD95 in mm on the input grid",
        "rule": "the engine default stays unless a candidate's paired Dice difference has a bootstrap 95 % interval "
                "above 0, or its Dice is not lower and its HD95 interval is below 0; then the highest mean Dice; "
                "cleanup first (refinement off), then refinement against the chosen cleanup",
        "island_sizes_mm3": sizes, "resamples": resamples, "seed": seed,
        "seconds": round(time.time() - started, 1), "postprocessing": post_rows, "refinement": refine_rows,
        "quality": quality_rows,
        "chosen": chosen,
    }
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "defaults.json").write_text(json.dumps(comparison, indent=2) + "\n", encoding="utf-8")
        (out / "defaults.md").write_text(markdown(comparison), encoding="utf-8")
    if write:
        write_defaults(model, chosen, comparison, record=record)
    return comparison


def predict_raw(channels, network, card, settings: Settings):
    from e2miseg.api import predict

    return predict(channels, network, card, settings, return_probabilities=True)


def write_defaults(model: str, chosen: dict[str, Any], comparison: dict[str, Any], record: bool = False) -> Path:
    """Put ``defaults`` into the checkpoint's card (weights unchanged, ``amend.amend_card``) and a
    "Defaults" section into its Markdown card; ``record`` updates the sha256 in the folder's index.json."""
    tables = ("postprocessing", "refinement", "quality")
    summary = {k: v for k, v in comparison.items() if k not in tables}
    summary.update({key: [_short(r) for r in comparison[key]] for key in tables if key in comparison})

    def put_defaults(card: dict[str, Any]) -> None:
        defaults = {**asdict(Settings(**chosen)), "comparison": summary}
        card["defaults"] = {k: v for k, v in defaults.items() if v is not None}

    path = amend_card(model, put_defaults, record=record)
    replace_markdown_section(path, "## Defaults", "## Defaults (chosen on the validation split by "
                                                  "`e2miseg-train choose-defaults`)\n\n" + markdown(comparison))
    return path


def _short(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("candidate", "dice_mean", "dice_difference", "dice_difference_ci95", "hd95_mm_mean",
                                "hd95_mm_difference", "hd95_mm_difference_ci95", "measurably_helps")}
