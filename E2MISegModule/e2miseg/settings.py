"""How one case is segmented: one typed, self-validating object shared by the API, the CLI and Slicer.

Every option is declared once, here, with its range, its command-line flag and whether a model card
may set its default. The entry points do not repeat the list:

- ``e2miseg.predict(image, model, keep_largest=True)`` builds ``Settings(keep_largest=True)``;
- ``e2miseg predict --keep-largest`` adds its flags with ``Settings.add_arguments`` and reads them back
  with ``Settings.from_args``;
- the Slicer logic passes ``Settings(...)`` to the engine in-process, or as flags with ``to_cli()``.

A field left at None is "not decided here". ``resolve`` fills it: an explicit value wins, then the
model card's ``defaults`` section, then ``ENGINE_DEFAULTS``. Only ``resolve`` decides, so the same
volume gets the same labels whichever entry point ran it.

This module imports nothing heavy (no numpy, no torch): ``e2miseg --help`` stays instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from .edges.defaults import DEFAULT_METHOD, DEFAULT_STRENGTH, LEARNED_METHOD, METHOD_NAMES
from .errors import E2MISegError

QUALITIES = ("fast", "normal", "normal+tta")
DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
RUNTIMES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "f32", "bf16", "f16")


class SettingsError(E2MISegError, ValueError):
    """An option outside its range: one line naming the option, the value and the range. Exit code 2
    (bad arguments), like argparse's own errors."""

    exit_code = 2


def _option(flag: str, help: str, *, card: bool = False, minimum: float | None = None, maximum: float | None = None,
            choices: tuple[str, ...] | None = None, minimum_exclusive: bool = False, negatable: bool = False) -> Any:
    """A settings field: None by default (not decided here) and the metadata its checks and flag use."""
    meta = {"flag": flag, "help": help, "card": card, "minimum": minimum, "maximum": maximum, "choices": choices,
            "minimum_exclusive": minimum_exclusive, "negatable": negatable}
    return field(default=None, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Run settings of one segmentation. None = not decided here (see ``resolve``)."""

    # -- model defaults: a card's ``defaults`` section may set these (chosen on its validation split)
    keep_largest: Optional[bool] = _option("--keep-largest", "keep only the largest connected component of each label",
                                           card=True, negatable=True)
    min_island_mm3: Optional[float] = _option("--min-island-mm3", "remove components smaller than this volume (mm³)",
                                              card=True, minimum=0.0, maximum=1.0e9)
    refine_edges: Optional[bool] = _option("--refine-edges", "refine segment edges against the image after the network",
                                           card=True, negatable=True)
    edge_method: Optional[str] = _option("--edge-method", "edge refinement method", card=True, choices=METHOD_NAMES)
    edge_strength: Optional[float] = _option("--edge-strength", "edge refinement strength, 0 (off) .. 1 (strongest)",
                                             card=True, minimum=0.0, maximum=1.0)
    quality: Optional[str] = _option("--quality", "fast (coarser sliding-window step), normal, or normal+tta "
                                     "(mirror test-time augmentation, slower)", card=True, choices=QUALITIES)
    # -- run options: the computer and the caller decide these, never a card
    step: Optional[float] = _option("--step", "sliding-window step as a fraction of the patch (default from the model)",
                                    minimum=0.0, maximum=1.0, minimum_exclusive=True)
    batch_size: Optional[int] = _option("--batch-size", "windows per network pass (default from the model)", minimum=1,
                                        maximum=4096)
    device: Optional[str] = _option("--device", "auto, cpu, cuda, cuda:N or mps (default auto)")
    runtime: Optional[str] = _option("--runtime", "network runtime: auto = OpenVINO on the CPU when installed, else "
                                     "PyTorch (env E2MISEG_RUNTIME)", choices=RUNTIMES)
    accept_label_map: Optional[bool] = _option("--accept-label-map", "run even on an input that looks like a label map "
                                               "(integer voxels with a few values, the model's labels among them)",
                                               negatable=True)
    precision: Optional[str] = _option("--precision", "arithmetic: auto = float16 autocast on CUDA, bfloat16 for the "
                                       "bundled networks on CPUs with native bfloat16, else fp32 (env E2MISEG_PRECISION)",
                                       choices=PRECISIONS)

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if value is not None:
                object.__setattr__(self, spec.name, _checked(spec, value))

    # ---- building ------------------------------------------------------------------------------

    @classmethod
    def from_options(cls, **options: Any) -> "Settings":
        """From keyword arguments in snake_case (``keep_largest``) or the Slicer module's camelCase
        (``keepLargest``). The older ``fast=True`` / ``tta=True`` keywords still mean a quality."""
        fast, tta = options.pop("fast", None), options.pop("tta", None)
        if fast or tta:
            if fast and tta:
                raise SettingsError("fast and tta together are not a quality; choose quality fast, normal or normal+tta")
            if options.get("quality") is not None:
                raise SettingsError("give quality or fast/tta, not both")
            options["quality"] = "fast" if fast else "normal+tta"
        names = {spec.name for spec in dataclasses.fields(cls)}
        values = {}
        for key, value in options.items():
            name = _snake(key)
            if name not in names:
                raise TypeError(f"unknown setting '{key}'; settings are {', '.join(sorted(names))}")
            values[name] = value
        return cls(**values)

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> "Settings":
        """The model's own defaults (the card's ``defaults`` section; missing fields stay None)."""
        defaults = card.get("defaults") or {}
        return cls(**{spec.name: defaults[spec.name] for spec in card_fields() if spec.name in defaults})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, only: Optional[Sequence[str]] = None) -> None:
        """One flag per setting, all defaulting to None so an absent flag leaves the choice to ``resolve``.
        ``only``: the field names to offer (e.g. the card's, for a tool that picks its own device)."""
        for spec in dataclasses.fields(cls):
            if only is not None and spec.name not in only:
                continue
            meta = spec.metadata
            default_text = _default_text(spec)
            help_text = meta["help"] + (f" (default: the model's, else {default_text})" if meta["card"] else "")
            if meta["negatable"]:
                parser.add_argument(meta["flag"], dest=spec.name, action=argparse.BooleanOptionalAction, default=None,
                                    help=help_text)
            elif meta["choices"]:
                parser.add_argument(meta["flag"], dest=spec.name, choices=meta["choices"], default=None, help=help_text)
            else:
                kind = float if spec.name in ("min_island_mm3", "edge_strength", "step") else \
                    int if spec.name == "batch_size" else str
                parser.add_argument(meta["flag"], dest=spec.name, type=kind, default=None, help=help_text)
        if only is not None and "quality" not in only:
            return
        # shorthands kept from the first CLI
        parser.add_argument("--fast", dest="quality", action="store_const", const="fast", help="same as --quality fast")
        parser.add_argument("--tta", dest="quality", action="store_const", const="normal+tta",
                            help="same as --quality normal+tta")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        return cls(**{spec.name: getattr(args, spec.name, None) for spec in dataclasses.fields(cls)})

    # ---- using ---------------------------------------------------------------------------------

    def explicit(self) -> dict[str, Any]:
        """The fields decided here (not None)."""
        return {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(self) if getattr(self, spec.name) is not None}

    def to_cli(self) -> list[str]:
        """The flags that make ``e2miseg predict`` decide exactly what this object decides (None fields
        are left out, so the CLI resolves them against the same card)."""
        flags: list[str] = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if value is None:
                continue
            flag = spec.metadata["flag"]
            if spec.metadata["negatable"]:
                flags.append(flag if value else "--no-" + flag[2:])
            else:
                flags += [flag, repr(value) if isinstance(value, float) else str(value)]
        return flags

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def over(self, fallback: "Settings") -> "Settings":
        """This object's decisions, with ``fallback``'s where this one has none."""
        return dataclasses.replace(fallback, **self.explicit())

    @property
    def fast(self) -> bool:
        return self.quality == "fast"

    @property
    def tta(self) -> bool:
        return self.quality == "normal+tta"


def card_fields() -> list[dataclasses.Field]:
    """The settings a model card's ``defaults`` section may hold."""
    return [spec for spec in dataclasses.fields(Settings) if spec.metadata["card"]]


def card_defaults_schema() -> dict[str, Any]:
    """JSON schema of the card's ``defaults`` section, from the same declarations the checks use."""
    properties: dict[str, Any] = {}
    for spec in card_fields():
        meta = spec.metadata
        if meta["negatable"]:
            properties[spec.name] = {"type": "boolean"}
        elif meta["choices"]:
            properties[spec.name] = {"enum": list(meta["choices"])}
        else:
            properties[spec.name] = {"type": "number", "minimum": meta["minimum"], "maximum": meta["maximum"]}
    # how the values were chosen: the validation comparison recorded by `e2miseg-train choose-defaults`
    properties["comparison"] = {"type": "object"}
    return {"type": "object", "properties": properties, "additionalProperties": False}


# ---- checks ----------------------------------------------------------------------------------------

def _snake(name: str) -> str:
    """``minIslandMm3`` -> ``min_island_mm3`` (the Slicer module's names are camelCase)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _range_text(meta: Mapping[str, Any]) -> str:
    low, high = meta["minimum"], meta["maximum"]
    return f"{low:g}..{high:g}{f' ({low:g} itself excluded)' if meta['minimum_exclusive'] else ''}"


def _default_text(spec: dataclasses.Field) -> str:
    value = getattr(ENGINE_DEFAULTS, spec.name)
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _checked(spec: dataclasses.Field, value: Any) -> Any:
    meta, name = spec.metadata, spec.name
    where = f"{name} ({meta['flag']})"
    if meta["negatable"]:
        if not isinstance(value, bool):
            raise SettingsError(f"{where} must be true or false, not {value!r}; pass True or False")
        return value
    if meta["choices"]:
        if value not in meta["choices"]:
            raise SettingsError(f"{where} '{value}' is not one of {', '.join(meta['choices'])}; use one of these")
        return value
    if name == "device":
        text = str(value)
        if text not in DEVICES and not (text.startswith("cuda:") and text[5:].isdigit()):
            raise SettingsError(f"{where} '{value}' is not one of {', '.join(DEVICES)} or cuda:N; use one of these")
        return text
    integer = name == "batch_size"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and int(value) != value):
        raise SettingsError(f"{where} must be {'a whole' if integer else 'a'} number in {_range_text(meta)}, not {value!r}; "
                            f"give a number in that range")
    number = int(value) if integer else float(value)
    low, high = meta["minimum"], meta["maximum"]
    if number != number or number > high or number < low or (meta["minimum_exclusive"] and number == low):
        hint = (f"it is a fraction of the window: for {number:g} % write {number / 100:g}" if name == "step" and 1 < number <= 100
                else "give a value in that range")
        raise SettingsError(f"{where} {value!r} is outside {_range_text(meta)}; {hint}")
    return number


# What the engine does when neither the caller nor the card decides. Refinement is off: on the
# bundled models it did not measurably help at its measured strength (see docs/ and the cards).
ENGINE_DEFAULTS = Settings(keep_largest=False, min_island_mm3=0.0, refine_edges=False, edge_method=DEFAULT_METHOD,
                           edge_strength=DEFAULT_STRENGTH, quality="normal", accept_label_map=False)


def resolve(explicit: Settings | None, card: Mapping[str, Any] | None) -> Settings:
    """The one place a setting is decided: explicit argument > the card's default > the engine's default."""
    chosen = ENGINE_DEFAULTS
    if card is not None:
        if card.get("refiner"):  # a model that carries a learned refiner refines with it unless told otherwise
            chosen = chosen.replace(edge_method=LEARNED_METHOD)
        chosen = Settings.from_card(card).over(chosen)
    if explicit is not None:
        chosen = explicit.over(chosen)
    return chosen
