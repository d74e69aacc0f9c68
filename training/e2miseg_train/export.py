"""``export``: the shipped single-file checkpoint with the full model card, plus a Markdown card.

Takes the best (or last) weights of a run, completes the card's provenance (split, iterations, wall
time, machine, validation metrics from ``evaluate``) and writes fp16 safetensors by default.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from e2miseg.checkpoint import read_checkpoint, save_checkpoint
from e2miseg.store import record_hash

from .volumes import markdown_section, put_ranges, ranges_from_summary


def _run_state(run: Path) -> dict[str, Any]:
    state_path = run / "state.pt"
    if not state_path.exists():
        return {}
    saved = torch.load(state_path, map_location="cpu", weights_only=True)
    return {k: saved[k] for k in ("iteration", "epoch", "train_seconds", "best_score", "history") if k in saved}


def build_export_card(run: Path, card: dict[str, Any], metrics: dict[str, Any] | None, name: str | None,
                      version: str) -> dict[str, Any]:
    plan = json.loads((run / "plan.json").read_text(encoding="utf-8"))
    options = json.loads((run / "options.json").read_text(encoding="utf-8")) if (run / "options.json").exists() else {}
    state = _run_state(run)
    card = json.loads(json.dumps(card))
    card["name"] = name or card["name"]
    card["version"] = version
    provenance = card.setdefault("provenance", {})
    provenance["split"] = {"rule": plan["split"]["rule"], "train_count": len(plan["split"]["train"]),
                           "val_count": len(plan["split"]["val"]), "train_cases": plan["split"]["train"],
                           "val_cases": plan["split"]["val"]}
    training = provenance.setdefault("training", {})
    checkpoint_iterations = training.get("iterations")
    if state:
        training.update({"total_iterations": state["iteration"], "total_epochs": state["epoch"],
                         "total_wall_time_minutes": round(state["train_seconds"] / 60, 1),
                         "checkpoint_iterations": checkpoint_iterations})
    if options:
        training["iterations_per_epoch"] = options.get("iters_per_epoch")
        training["max_minutes"] = options.get("max_minutes")
        training["threads"] = options.get("threads")
    if metrics:
        provenance["validation"] = {
            "cases": metrics["num_cases"], "split": metrics["cases"], "grid": metrics["grid"],
            "per_label": {label: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()
                                  if not k.endswith("_volume_mm3")}
                          for label, s in metrics["labels"].items()}}
        # the reference volumes' range per label, which e2miseg.plausibility warns outside of (volumes.py says
        # why reference, not predicted); a summary.json from before evaluate recorded volumes gives none
        put_ranges(card, ranges_from_summary(metrics, card["labels"]))
    return card


def model_card_markdown(card: dict[str, Any], metrics: dict[str, Any] | None, curves: str | None,
                        comparison: str | None = None, notes: str | None = None, boxplot: str | None = None) -> str:
    prov = card.get("provenance", {})
    training = prov.get("training", {})
    split = prov.get("split", {})
    arch = card["architecture"]
    lines = [f"# {card['name']} {card['version']}", "", card.get("description", ""), "",
             f"- **Architecture**: `{arch['name']}` with config `{json.dumps(arch['config'], sort_keys=True)}`",
             f"- **Labels**: " + ", ".join(f"{l['value']} {l['name']}" for l in card["labels"]),
             f"- **Input**: " + ", ".join(f"{c['name']} ({c['modality']})" for c in card["channels"]) +
             f"; spacing {card['preprocessing']['target_spacing_xyz']} mm (x,y,z), patch (z,y,x) {card['inference'].get('patch_size_zyx')}",
             f"- **Data**: {prov.get('dataset')} - licence: {card['license']}",
             f"- **Split**: {split.get('rule')}; {split.get('train_count')} train / {split.get('val_count')} validation cases "
             f"(first validation case `{(split.get('val_cases') or ['-'])[0]}`)",
             f"- **Training**: {training.get('optimizer')} lr {training.get('lr')} ({training.get('schedule')} over "
             f"{training.get('schedule_clock')}), batch {training.get('batch_size')}, "
             f"{training.get('total_iterations', training.get('iterations'))} iterations in "
             f"{training.get('total_wall_time_minutes', training.get('wall_time_minutes'))} min on {training.get('machine')} "
             f"({training.get('threads')} thread(s)); exported weights from iteration {training.get('checkpoint_iterations', training.get('iterations'))}",
             ""]
    if metrics:
        lines += ["## Validation (engine inference on the input grid, as in Slicer)", "", metrics["markdown"]]
        if boxplot:
            lines += [f"![validation Dice per case]({boxplot})", ""]
    if markdown_section(card):
        lines += [markdown_section(card)]
    if comparison:
        lines += ["## Comparison", "", comparison]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    if curves:
        lines += ["## Training curve", "", f"![training curve]({curves})", ""]
    if card.get("attribution"):
        lines += ["## Attribution", "", card["attribution"], ""]
    return "\n".join(lines) + "\n"


def export_run(run: str | Path, out: str | Path, checkpoint: str = "best", metrics: str | Path | None = None,
               name: str | None = None, version: str = "1.0.0", half_precision: bool = True, record: bool = False,
               markdown: bool = True, comparison: str | None = None, notes: str | None = None,
               regression_table: str | Path | None = None, regression_cases: int = 3,
               data_root: str | Path | None = None) -> Path:
    run, out = Path(run), Path(out)
    tensors, card = read_checkpoint(run / f"{checkpoint}.safetensors")
    summary = None
    if metrics:
        summary = json.loads(Path(metrics).read_text(encoding="utf-8"))
        summary_md = Path(metrics).with_name("summary.md")
        summary["markdown"] = summary_md.read_text(encoding="utf-8") if summary_md.exists() else ""
    card = build_export_card(run, card, summary, name, version)
    if notes:
        card.setdefault("provenance", {})["notes"] = notes.strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, tensors, card, half_precision=half_precision)
    if record:
        record_hash(out)
    if regression_table:  # the figures CI re-checks, measured on the file just written
        from .regression import update_table

        update_table(regression_table, [out], data_root=data_root, count=regression_cases)
    if markdown:
        stem = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.stem
        curves = None
        if (run / "curves.png").exists():
            curves = f"{stem}-curves.png"
            shutil.copyfile(run / "curves.png", out.with_name(curves))
        boxplot = None  # the per-case spread of the very evaluation the card's table reports
        if metrics and Path(metrics).with_name("boxplot.png").exists():
            boxplot = f"{stem}-boxplot.png"
            shutil.copyfile(Path(metrics).with_name("boxplot.png"), out.with_name(boxplot))
        out.with_name(f"{stem}.md").write_text(model_card_markdown(card, summary, curves, comparison, notes, boxplot),
                                               encoding="utf-8")
    return out
