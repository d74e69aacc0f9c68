"""What ``e2miseg predict`` shows a person: one progress bar through the stages, then one line per
segment (name, volume in mL, voxel count) and where the files went."""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

# Share of a run each stage takes, so one bar moves steadily through them (the network dominates).
STAGE_SHARES = (("load", 0.05), ("preprocess", 0.05), ("infer", 0.80), ("postprocess", 0.10))
STAGE_NAMES = {"load": "reading", "preprocess": "preparing", "infer": "segmenting", "postprocess": "cleaning up"}


def overall_percent(stage: str, done: int, total: int) -> float:
    start = 0.0
    for name, share in STAGE_SHARES:
        if name == stage:
            return 100.0 * (start + share * (min(max(done / total, 0.0), 1.0) if total else 0.0))
        start += share
    return 100.0 * start


class StageBar:
    """One tqdm bar on stderr for the whole case; its label names the stage ("segmenting 12/40 tiles").

    tqdm shows nothing when stderr is not a terminal (``disable=None``), so logs and pipes stay clean.
    """

    def __init__(self, case: str = "") -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None, unit="%",
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")
        self.case = case

    def __call__(self, event) -> None:
        label = STAGE_NAMES.get(event.stage, event.stage)
        if event.stage == "infer" and event.total > 1:
            label += f" {event.done}/{event.total} tiles"
        self.bar.set_description_str(f"{self.case} {label}".strip(), refresh=False)
        self.bar.n = round(overall_percent(event.stage, event.done, event.total), 1)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def segment_volumes(labels, card: dict[str, Any]) -> list[dict[str, Any]]:
    """Per label of the card: name, voxel count and volume in mL (from the label image's spacing)."""
    import SimpleITK as sitk

    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=256)
    return [{"value": l["value"], "name": l["name"], "voxels": int(counts[l["value"]]),
             "ml": float(counts[l["value"]]) * voxel_ml} for l in card["labels"]]


def segment_lines(volumes: list[dict[str, Any]]) -> list[str]:
    width = max(len(v["name"]) for v in volumes)
    return [f"  {v['name'].ljust(width)}  {v['ml']:9.3f} mL  {v['voxels']:>10,d} voxels" for v in volumes]
