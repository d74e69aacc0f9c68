"""``e2miseg models``: list, info, import, convert. Short human text by default, ``--json`` for scripts."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .errors import E2MISegError

LIST_COLUMNS = ("NAME", "VERSION", "SEGMENTS", "MODALITY", "CHANNELS", "LICENCE")


def model_summary(stored, card: dict[str, Any]) -> dict[str, Any]:
    """What `models list --json` says of one model."""
    return {"name": stored.name, "version": card["version"], "architecture": card["architecture"]["name"],
            "kind": card["inference"]["kind"],
            "labels": [{"value": l["value"], "name": l["name"], "color": l["color"]} for l in card["labels"]],
            "modality": sorted({c["modality"] for c in card["channels"]}),
            "channels": [c["name"] for c in card["channels"]], "license": card["license"],
            "sha256_recorded": stored.sha256 is not None, "path": str(stored.path)}


def _table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns; the last one is never padded or cut (licences are long)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip() for row in rows)


def list_models_text(as_json: bool) -> str:
    from . import store
    from .checkpoint import read_card

    entries, rows = [], [LIST_COLUMNS]
    for stored in store.list_models():
        try:
            card = read_card(stored.path)
        except E2MISegError as exc:
            entries.append({"name": stored.name, "path": str(stored.path), "error": str(exc)})
            rows.append((stored.name, "-", f"BROKEN: {exc}", "-", "-", "-"))
            continue
        summary = model_summary(stored, card)
        entries.append(summary)
        rows.append((stored.name, card["version"], ", ".join(l["name"] for l in card["labels"]),
                     "/".join(summary["modality"]), f"{len(card['channels'])} ({', '.join(summary['channels'])})",
                     card["license"]))
    if as_json:
        return json.dumps(entries, indent=2)
    return _table(rows) if entries else "no models installed; import one with `e2miseg models import FILE`"


def _hex(color) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in color)


def _defaults_line(card: dict[str, Any]) -> str:
    from .settings import resolve

    chosen = resolve(None, card)
    edges = f"on ({chosen.edge_method}, strength {chosen.edge_strength:g})" if chosen.refine_edges else \
        f"off (when turned on: {chosen.edge_method}, strength {chosen.edge_strength:g})"
    text = (f"quality {chosen.quality}; largest component per label {'kept' if chosen.keep_largest else 'not enforced'}; "
            f"{f'islands below {chosen.min_island_mm3:g} mm³ removed' if chosen.min_island_mm3 else 'no islands removed'}; "
            f"edge refinement {edges}")
    comparison = card.get("defaults", {}).get("comparison")
    source = (f"chosen on {comparison['cases']} validation cases by `e2miseg-train choose-defaults`" if comparison else
              "the engine's (this card sets none)" if "defaults" not in card else "from the card")
    return f"{text}\n{'':12}{source}"


def _refiner_line(section: dict[str, Any]) -> str:
    """The learned boundary refiner in one or two lines: its band and what it measured on validation."""
    config = section.get("config", {})
    text = (f"learned boundary refiner ({'in-plane' if config.get('in_plane') else '3D'}, band {config.get('band_mm', '?')} mm)")
    figures = section.get("evaluation") or {}
    if figures.get("without") and figures.get("with"):
        w, r = figures["without"], figures["with"]
        text += (f"\n{'':12}on {figures.get('cases')} validation cases: ASSD {w['assd_mm']:.3f} -> {r['assd_mm']:.3f} mm, "
                 f"HD95 {w['hd95_mm']:.2f} -> {r['hd95_mm']:.2f} mm, Dice {w['dice']:.4f} -> {r['dice']:.4f}; "
                 f"{figures.get('defaults', '')}")
    return text


def info_text(stored, card: dict[str, Any]) -> str:
    """A screenful: what the model segments, what it needs, how good it is, under which licence."""
    prov = card.get("provenance", {})
    spacing = card["preprocessing"]["target_spacing_xyz"]
    lines = [f"{stored.name} {card['version']}: {card['architecture']['name']} ({card['inference']['kind'].upper()})",
             f"{card.get('description', '').strip()}", ""]
    for i, label in enumerate(card["labels"]):
        lines.append(f"{'Segments:' if i == 0 else '':12}{label['value']}  {label['name']}  {_hex(label['color'])}")
    lines.append(f"{'Inputs:':12}" + ", ".join(f"{c['name']} ({c['modality']})" for c in card["channels"]))
    lines.append(f"{'Spacing:':12}" + (" x ".join(f"{s:g}" for s in spacing) + " mm (x, y, z); images are resampled to it"
                                       if spacing else "the image's own"))
    lines.append(f"{'Defaults:':12}{_defaults_line(card)}")
    if card.get("refiner"):
        lines.append(f"{'Refiner:':12}{_refiner_line(card['refiner'])}")
    validation = prov.get("validation")
    if validation:
        lines.append(f"{'Validation:':12}{validation.get('cases')} held-out cases ({validation.get('split')}), "
                     f"{validation.get('grid', 'input grid')}")
        width = max(len(name) for name in validation.get("per_label", {})) if validation.get("per_label") else 0
        for name, scores in validation.get("per_label", {}).items():
            lines.append(f"{'':12}{name.ljust(width)}  Dice {scores.get('dice_mean', float('nan')):.3f}  "
                         f"HD95 {scores.get('hd95_mm_mean', float('nan')):.2f} mm")
    ranges = [(label["name"], label["validation_volume_mm3"]) for label in card["labels"] if "validation_volume_mm3" in label]
    for i, (name, r) in enumerate(ranges):  # what e2miseg.plausibility compares each result with
        lines.append(f"{'Volumes:' if i == 0 else '':12}{name}  {r['min']:.0f}-{r['max']:.0f} mm³ on validation"
                     + ("; results far outside are reported" if i == len(ranges) - 1 else ""))
    lines.append(f"{'Licence:':12}{card['license']}")
    training = prov.get("training", {})
    source = [f"dataset {prov['dataset']}" if prov.get("dataset") else None,
              f"split: {prov['split']['rule']}" if prov.get("split", {}).get("rule") else None,
              f"{training.get('total_wall_time_minutes')} min of training on {training.get('machine')}"
              if training.get("total_wall_time_minutes") else None]
    if any(source):
        lines.append(f"{'Provenance:':12}" + "; ".join(s for s in source if s))
    if card.get("attribution"):
        lines.append(f"{'Cite:':12}{card['attribution']}")
    lines.append(f"{'File:':12}{stored.path} ({'sha256 verified' if stored.sha256 else 'no recorded sha256'})")
    lines.append(f"\nThe whole card: e2miseg models info {stored.name} --json")
    return "\n".join(lines)


def cmd_models(args) -> int:
    from . import store

    if args.action == "list":
        print(list_models_text(args.json))
        return 0
    if args.action == "info":
        from .checkpoint import read_card

        stored = store.resolve(args.name)
        card = read_card(stored.path)  # the header only: no weights, no torch
        if args.build:
            from .api import build_from_card

            net = build_from_card(card)
            card = {**card, "parameters": sum(p.numel() for p in net.parameters())}
        if args.json:
            print(json.dumps({"path": str(stored.path), "sha256": stored.sha256, **card}, indent=2))
        else:
            print(info_text(stored, card) + (f"\n{'Parameters:':12}{card['parameters']:,}" if args.build else ""))
        return 0
    if args.action == "import":
        stored = store.import_model(args.name)
        print(f"imported {stored.name} ({stored.card['license']}) into {stored.path}", file=sys.stderr)
        return 0
    if args.action == "convert":
        from .convert import convert_pickle_checkpoint

        out = convert_pickle_checkpoint(Path(args.name), Path(args.card) if args.card else None,
                                        Path(args.output) if args.output else None, trust_pickle=args.trust_pickle)
        print(f"wrote {out}", file=sys.stderr)
        return 0
    raise E2MISegError(f"unknown models action {args.action}")


def add_models_parser(sub) -> None:
    m = sub.add_parser("models", help="list, inspect, import or convert models")
    m.add_argument("action", choices=["list", "info", "import", "convert"])
    m.add_argument("name", nargs="?", help="model name or file (info, import, convert)")
    m.add_argument("--json", action="store_true", help="list, info: machine-readable JSON (info: the full model card)")
    m.add_argument("--build", action="store_true", help="info: also build the network and count its parameters")
    m.add_argument("--card", help="convert: the model card JSON for a pickle checkpoint")
    m.add_argument("-o", "--output", help="convert: output .safetensors file")
    m.add_argument("--trust-pickle", action="store_true", help="convert: I trust this file's author; allow unpickling it")
    m.set_defaults(func=cmd_models)
