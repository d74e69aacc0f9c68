"""Shared pieces of the edge benchmarks: validation split, perturbations, metric tables.

Validation split (the same rule everywhere in the project): sort the case names (Hippocampus) or the
patient ids (ACDC); those at index % 5 == 4 are validation. Only those are used here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("dice", "hd95_mm", "assd_mm", "boundary_f1")


def validation_cases(dataset: str) -> list[tuple[Path, Path]]:
    folder = DATA / dataset
    images = sorted((folder / "imagesTr").glob("*.nii.gz"))
    if dataset == "ACDC":
        patients = sorted({re.match(r"(patient\d+)", p.name).group(1) for p in images})
        keep = {p for i, p in enumerate(patients) if i % 5 == 4}
        chosen = [p for p in images if re.match(r"(patient\d+)", p.name).group(1) in keep]
    else:
        chosen = [p for i, p in enumerate(images) if i % 5 == 4]
    return [(p, folder / "labelsTr" / p.name) for p in chosen]


def structure_for(spacing_zyx) -> np.ndarray:
    """6-connected structuring element, in-plane only when slices are far apart (thick-slice MRI)."""
    structure = ndimage.generate_binary_structure(3, 1)
    if spacing_zyx[0] > 3 * min(spacing_zyx[1:]):
        structure[0] = structure[2] = False
    return structure


def dilate(labels: np.ndarray, steps: int, structure: np.ndarray) -> np.ndarray:
    result = labels.copy()
    for _ in range(steps):
        grown = result.copy()
        for value in np.unique(result[result > 0]):
            grown[ndimage.binary_dilation(result == value, structure) & (grown == 0)] = value
        result = grown
    return result


def erode(labels: np.ndarray, steps: int, structure: np.ndarray) -> np.ndarray:
    result = labels.copy()
    for value in np.unique(labels[labels > 0]):
        mask = labels == value
        result[mask & ~ndimage.binary_erosion(mask, structure, iterations=steps, border_value=1)] = 0
    return result


def shift(labels: np.ndarray, steps: int, spacing_zyx, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    axes = [1, 2] if spacing_zyx[0] > 3 * min(spacing_zyx[1:]) else [0, 1, 2]
    axis = int(rng.choice(axes))
    return np.roll(labels, steps * int(rng.choice([-1, 1])), axis=axis)


def perturbations(labels: np.ndarray, spacing_zyx, seed: int):
    """The unperturbed reference first (refinement should leave it alone), then the moved boundaries."""
    structure = structure_for(spacing_zyx)
    yield "none", labels.copy()
    for steps in (1, 2):
        yield f"dilate{steps}", dilate(labels, steps, structure)
        yield f"erode{steps}", erode(labels, steps, structure)
        yield f"shift{steps}", shift(labels, steps, spacing_zyx, seed + steps)


def summarise(rows: list[dict], group_keys: tuple[str, ...]) -> list[dict]:
    """Mean of each metric (before, after) per group; infinite distances are counted, not averaged."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in group_keys), []).append(row)
    table = []
    for key, members in sorted(groups.items(), key=lambda item: tuple(str(v) for v in item[0])):
        entry = dict(zip(group_keys, key))
        entry["n"] = len(members)
        for metric in METRICS:
            for when in ("before", "after"):
                values = np.array([m[when][metric] for m in members], dtype=float)
                finite = values[np.isfinite(values)]
                entry[f"{metric}_{when}"] = float(finite.mean()) if finite.size else float("nan")
        entry["dice_worse_than_0.005"] = int(sum(m["after"]["dice"] < m["before"]["dice"] - 0.005 for m in members))
        table.append(entry)
    return table


def markdown_table(table: list[dict], group_keys: tuple[str, ...]) -> str:
    header = list(group_keys) + ["n"] + [f"{m} before → after" for m in METRICS] + ["cases Dice −>0.005"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in table:
        cells = [str(entry[k]) for k in group_keys] + [str(entry["n"])]
        for metric in METRICS:
            before, after = entry[f"{metric}_before"], entry[f"{metric}_after"]
            digits = 3 if metric in ("dice", "boundary_f1") else 2
            cells.append(f"{before:.{digits}f} → {after:.{digits}f}")
        cells.append(str(entry["dice_worse_than_0.005"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compact_rows(rows: list[dict]) -> dict:
    """Per-case rows as columns (metrics rounded to 4 digits): a tenth of the size of a list of dicts."""
    if not rows:
        return {"columns": [], "values": []}
    keys = [k for k in rows[0] if k not in ("before", "after")]
    columns = keys + [f"{m}_{when}" for when in ("before", "after") for m in METRICS]
    values = [[row[k] if not isinstance(row[k], float) else round(row[k], 4) for k in keys]
              + [round(float(row[when][m]), 4) for when in ("before", "after") for m in METRICS] for row in rows]
    return {"columns": columns, "values": values}


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # compact: the per-case rows make indented files megabytes; the .md beside it is the readable form
    path.write_text(json.dumps(payload, separators=(",", ":"), default=float))
