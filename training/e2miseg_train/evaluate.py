"""``evaluate``: segment cases with the engine exactly as the Slicer module does, and score them.

Each case goes through ``e2miseg.api.predict`` (read, check, preprocess, tiled inference, resample
back onto the input grid, clean up labels); the label map it returns is compared with the reference
on the input grid. Dice and HD95 (in mm, from the image spacing) come from MONAI's metrics.
"""
from __future__ import annotations

import csv
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from e2miseg.api import load_model, predict
from e2miseg.checkpoint import load_weights_into, read_checkpoint
from e2miseg.inference import resolve_device
from e2miseg.settings import Settings, card_fields
from e2miseg.settings import resolve as resolve_settings
from e2miseg.store import resolve

from .baselines import build_network, is_baseline
from .dataset import list_cases, split_cases
from .volumes import label_volumes_mm3, spread


def load_any(name_or_path: str, device: str = "auto") -> tuple[torch.nn.Module, dict[str, Any]]:
    """An engine model via ``e2miseg.load_model``, or a training-only baseline from the same file format."""
    stored = resolve(name_or_path)
    tensors, card = read_checkpoint(stored.path)
    if not is_baseline(card["architecture"]["name"]):
        return load_model(stored.path, device)
    model = build_network(card["architecture"]["name"], card["architecture"]["config"])
    load_weights_into(model, tensors, stored.path.name)
    model = model.to(resolve_device(device)).eval()
    model.card = card
    return model, card


def select_cases(dataset: str | Path, which: str):
    cases = list_cases(dataset)
    if which == "all":
        return cases
    train, val = split_cases(cases)
    if which == "val":
        return val
    if which == "train":
        return train
    wanted = [w.strip() for w in which.split(",") if w.strip()]
    by_name = {c.name: c for c in cases}
    missing = [w for w in wanted if w not in by_name]
    if missing:
        raise ValueError(f"cases not in {dataset}: {', '.join(missing)}")
    return [by_name[w] for w in wanted]


def card_cases(card: dict, dataset: str | Path | None, cases: str) -> tuple[Path, list]:
    """The dataset folder (given, else the card's provenance) and its cases: "card" means the validation cases
    the card's split records (the ones its figures were measured on), anything else goes to ``select_cases``."""
    from e2miseg.errors import E2MISegError

    provenance = card.get("provenance", {})
    given = str(dataset or provenance.get("dataset_path") or "")
    folder = Path(given)
    if not given or not folder.is_dir():  # Path("") is the working directory: never guess that
        raise E2MISegError(f"dataset folder '{given}' not found; give the model's dataset folder as DATASET")
    if cases == "card":
        names = provenance.get("split", {}).get("val_cases")
        if not names:
            raise E2MISegError(f"the card of {card['name']} lists no validation cases; pass --cases val or case names")
        cases = ",".join(names)
    return folder, select_cases(folder, cases)


def label_scores(prediction: np.ndarray, reference: np.ndarray, value: int, spacing_zyx: tuple[float, ...]) -> dict[str, float]:
    """Dice and HD95 (mm) of one label. Both empty: Dice 1, HD95 0; exactly one empty: Dice 0, HD95 inf."""
    from monai.metrics import compute_dice, compute_hausdorff_distance

    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")  # MONAI's own deprecation chatter

    pred, ref = prediction == value, reference == value
    p_count, r_count = int(pred.sum()), int(ref.sum())
    if p_count == 0 and r_count == 0:
        return {"dice": 1.0, "hd95_mm": 0.0, "pred_voxels": 0, "ref_voxels": 0}
    if p_count == 0 or r_count == 0:
        return {"dice": 0.0, "hd95_mm": math.inf, "pred_voxels": p_count, "ref_voxels": r_count}
    p = torch.from_numpy(pred)[None, None].float()
    r = torch.from_numpy(ref)[None, None].float()
    dice = float(compute_dice(p, r, include_background=True)[0, 0])
    hd95 = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(spacing_zyx))[0, 0])
    return {"dice": dice, "hd95_mm": hd95, "pred_voxels": p_count, "ref_voxels": r_count}


def summarise(rows: list[dict[str, Any]], labels: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for label in labels:
        mine = [r for r in rows if r["label"] == label["value"]]
        dice = np.array([r["dice"] for r in mine], dtype=float)
        hd = np.array([r["hd95_mm"] for r in mine], dtype=float)
        finite = hd[np.isfinite(hd)]
        summary[label["name"]] = {
            "value": label["value"], "cases": len(mine),
            "dice_mean": float(dice.mean()) if len(dice) else math.nan, "dice_std": float(dice.std()) if len(dice) else math.nan,
            "dice_median": float(np.median(dice)) if len(dice) else math.nan,
            "hd95_mm_mean": float(finite.mean()) if len(finite) else math.nan,
            "hd95_mm_median": float(np.median(finite)) if len(finite) else math.nan,
            "hd95_missing": int(len(hd) - len(finite)),
            # what export turns into the card's plausibility range (reference), and how the model compares
            "reference_volume_mm3": spread([r["ref_volume_mm3"] for r in mine if "ref_volume_mm3" in r]),
            "predicted_volume_mm3": spread([r["pred_volume_mm3"] for r in mine if "pred_volume_mm3" in r]),
        }
    return summary


def markdown_table(summary: dict[str, Any], title: str) -> str:
    lines = [f"**{title}**", "", "| label | cases | Dice mean ± sd | Dice median | HD95 mean (mm) | HD95 median (mm) |",
             "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        missing = f" ({s['hd95_missing']} empty)" if s["hd95_missing"] else ""
        lines.append(f"| {name} | {s['cases']} | {s['dice_mean']:.4f} ± {s['dice_std']:.4f} | {s['dice_median']:.4f} | "
                     f"{s['hd95_mm_mean']:.2f}{missing} | {s['hd95_mm_median']:.2f} |")
    return "\n".join(lines) + "\n"


def box_plot(rows: list[dict[str, Any]], labels: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_dice, ax_hd) = plt.subplots(1, 2, figsize=(7.2, 3.4), dpi=80)
    names = [label["name"] for label in labels]
    dice = [[r["dice"] for r in rows if r["label"] == label["value"]] for label in labels]
    hd = [[r["hd95_mm"] for r in rows if r["label"] == label["value"] and math.isfinite(r["hd95_mm"])] for label in labels]
    ax_dice.boxplot(dice)
    ax_dice.set_xticks(range(1, len(names) + 1), names, fontsize=7)
    ax_dice.set_ylabel("Dice")
    ax_dice.set_ylim(0, 1)
    ax_hd.boxplot(hd)
    ax_hd.set_xticks(range(1, len(names) + 1), names, fontsize=7)
    ax_hd.set_ylabel("HD95 (mm)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# The network as trained, nothing after it: what a training curve measures, and the fair ground for
# comparing two networks whose cards chose different clean-ups.
NETWORK_ONLY = Settings(keep_largest=False, min_island_mm3=0.0, refine_edges=False, quality="normal")


def evaluate(model: str, dataset: str | Path, out: str | Path, cases: str = "val", device: str = "auto",
             threads: int | None = None, step: float | None = None, limit: int | None = None,
             settings: Settings | None = None) -> dict[str, Any]:
    """Score ``model`` on ``dataset``'s cases; write ``per_case.csv``, ``summary.md/json`` and ``boxplot.png`` to ``out``.

    Each case is segmented by ``e2miseg.predict`` as the Slicer module runs it: ``settings`` (e.g.
    ``NETWORK_ONLY``, or ``Settings(quality="normal+tta")``) over the card's defaults over the engine's.
    The settings actually used are recorded in ``summary.json``."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    network, card = load_any(model, device)
    explicit = settings or Settings()
    if step is not None:
        explicit = explicit.replace(step=step)
    chosen = resolve_settings(explicit, card)
    selected = select_cases(dataset, cases)[: limit or None]
    rows: list[dict[str, Any]] = []
    volumes: dict[str, dict[str, dict[str, float]]] = {}  # case -> label name -> reference / predicted mm³
    started = time.time()
    for case in selected:
        prediction_image = predict([str(p) for p in case.images], network, card, chosen)
        reference_image = sitk.ReadImage(str(case.label))
        prediction = sitk.GetArrayFromImage(prediction_image)
        reference = sitk.GetArrayFromImage(reference_image)
        spacing_zyx = tuple(reference_image.GetSpacing())[::-1]
        reference_mm3 = label_volumes_mm3(reference_image, card["labels"])
        predicted_mm3 = label_volumes_mm3(prediction_image, card["labels"])
        volumes[case.name] = {name: {"reference": round(reference_mm3[name], 1), "predicted": round(predicted_mm3[name], 1)}
                              for name in reference_mm3}
        for label in card["labels"]:
            scores = label_scores(prediction, reference, label["value"], spacing_zyx)
            rows.append({"case": case.name, "label": label["value"], "label_name": label["name"], **scores,
                         "pred_volume_mm3": predicted_mm3[label["name"]], "ref_volume_mm3": reference_mm3[label["name"]]})
    seconds = time.time() - started
    fields = ["case", "label", "label_name", "dice", "hd95_mm", "pred_voxels", "ref_voxels", "pred_volume_mm3",
              "ref_volume_mm3"]
    with open(out / "per_case.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "dice": f"{row['dice']:.6f}", "hd95_mm": f"{row['hd95_mm']:.4f}",
                             "pred_volume_mm3": f"{row['pred_volume_mm3']:.1f}", "ref_volume_mm3": f"{row['ref_volume_mm3']:.1f}"})
    summary = summarise(rows, card["labels"])
    title = f"{model_label(card, model)} on {Path(dataset).name} ({cases}, {len(selected)} cases)"
    markdown = markdown_table(summary, title)
    (out / "summary.md").write_text(markdown, encoding="utf-8")
    result = {"model": card["name"], "version": card["version"], "architecture": card["architecture"]["name"],
              "dataset": str(dataset), "cases": cases, "num_cases": len(selected), "case_names": [c.name for c in selected],
              "seconds": round(seconds, 1), "grid": "input grid (e2miseg.api.predict)", "tta": chosen.tta,
              "settings": {spec.name: getattr(chosen, spec.name) for spec in card_fields()},
              "labels": summary, "volumes_mm3": volumes}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    box_plot(rows, card["labels"], out / "boxplot.png", title)
    result["markdown"] = markdown
    return result


def model_label(card: dict[str, Any], model: str) -> str:
    """How summaries name the model. A checkpoint straight from ``fit`` still carries the plan's
    placeholder version (the version is given at ``export``), so it is named by file and iteration
    instead of a version that would read like a release."""
    training = card.get("provenance", {}).get("training", {})
    if "iterations" in training and "total_iterations" not in training:
        return f"{card['name']} (training checkpoint {Path(model).name}, iteration {training['iterations']})"
    return f"{card['name']} {card['version']}"


def comparison_table(summaries: list[dict[str, Any]]) -> str:
    """One Markdown table comparing several ``summary.json`` results (same cases) label by label."""
    labels = list(summaries[0]["labels"])
    header = "| model | architecture | cases | " + " | ".join(f"{name} Dice | {name} HD95 (mm)" for name in labels) + " |"
    lines = [header, "|" + "---|" * (3 + 2 * len(labels))]
    for summary in summaries:
        cells = []
        for name in labels:
            s = summary["labels"].get(name, {})
            cells.append(f"{s.get('dice_mean', math.nan):.4f} ± {s.get('dice_std', math.nan):.4f}")
            cells.append(f"{s.get('hd95_mm_mean', math.nan):.2f}")
        # with its version: a card compares a model with its own earlier versions, which share its name
        model = f"{summary['model']} {summary['version']}" if summary.get("version") else summary["model"]
        lines.append(f"| {model} | {summary['architecture']} | {summary['num_cases']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
