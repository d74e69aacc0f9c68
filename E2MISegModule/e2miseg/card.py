"""The model card: everything a checkpoint says about itself.

The card travels with the weights (as JSON in the safetensors metadata) and with the image through
the pipeline, so no stage guesses: preprocessing, the patch strategy, labels with their colours and
SNOMED-CT codes, provenance and licence all come from here.

Axis conventions (stated once, used everywhere):
- ``*_xyz`` values are in physical/ITK order (x, y, z), as SimpleITK reports spacing and size.
- ``*_zyx`` values are in array order (z, y, x), as numpy arrays from SimpleITK and the networks use.
"""
from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema

from .errors import CheckpointError
from .settings import Settings, SettingsError, card_defaults_schema

CARD_FORMAT_VERSION = 1

_CODE = {
    "type": "object",
    "required": ["scheme", "code", "meaning"],
    "properties": {
        "scheme": {"type": "string", "minLength": 1},
        "code": {"type": "string", "minLength": 1},
        "meaning": {"type": "string", "minLength": 1},
    },
    "additionalProperties": False,
}

_LABEL = {
    "type": "object",
    "required": ["value", "name", "color"],
    "properties": {
        "value": {"type": "integer", "minimum": 1, "maximum": 255},
        "name": {"type": "string", "minLength": 1},
        "color": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 3, "maxItems": 3},
        # per-label volume range (mm³) of the validation split's reference labels: results far outside
        # it are reported (e2miseg.plausibility); optional, written by training's export
        "validation_volume_mm3": {
            "type": "object",
            "required": ["min", "max"],
            "properties": {"min": {"type": "number", "minimum": 0}, "max": {"type": "number", "minimum": 0},
                           "cases": {"type": "integer", "minimum": 1}},
            "additionalProperties": False,
        },
        "terminology": {
            "type": "object",
            "required": ["category", "type"],
            "properties": {"category": _CODE, "type": _CODE, "type_modifier": _CODE, "region": _CODE},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}

_NORMALIZATION = {
    "type": "object",
    "required": ["scheme"],
    "properties": {
        # zscore: per image; nonzero_zscore: statistics over voxels != 0, zeros stay 0;
        # ct: clip to [lower, upper] then (x - mean) / std with dataset statistics;
        # percentile: clip to per-image percentiles [lower, upper] then z-score.
        "scheme": {"enum": ["zscore", "nonzero_zscore", "ct", "percentile", "none"]},
        "lower": {"type": "number"},
        "upper": {"type": "number"},
        "mean": {"type": "number"},
        "std": {"type": "number", "exclusiveMinimum": 0},
    },
    "additionalProperties": False,
}

_POSITIVE_TRIPLE = {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3, "maxItems": 3}

CARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["format_version", "name", "version", "architecture", "labels", "channels", "preprocessing", "inference", "license"],
    "properties": {
        "format_version": {"const": CARD_FORMAT_VERSION},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "description": {"type": "string"},
        "architecture": {
            "type": "object",
            "required": ["name", "config"],
            "properties": {"name": {"type": "string"}, "config": {"type": "object"}},
            "additionalProperties": False,
        },
        "labels": {"type": "array", "items": _LABEL, "minItems": 1},
        "channels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "modality"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "modality": {"enum": ["MR", "CT", "PT", "US", "OT"]},
                    "normalization": _NORMALIZATION,
                },
                "additionalProperties": False,
            },
        },
        "preprocessing": {
            "type": "object",
            "required": ["target_spacing_xyz", "crop_to_nonzero"],
            "properties": {
                "target_spacing_xyz": {"oneOf": [_POSITIVE_TRIPLE, {"type": "null"}]},
                "crop_to_nonzero": {"type": "boolean"},
                "normalization": _NORMALIZATION,
            },
            "additionalProperties": False,
        },
        "inference": {
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {"enum": ["3d", "2d", "2.5d"]},
                # 3D: the network's exact window; 2D/2.5D: in-plane size slices are resampled/padded to
                "patch_size_zyx": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 3},
                "step": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "fast_step": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "batch_size": {"type": "integer", "minimum": 1},
                "gaussian_sigma_scale": {"type": "number", "exclusiveMinimum": 0},
                "slice_axis": {"enum": ["x", "y", "z"]},
                "slices": {"type": "integer", "minimum": 1},
                "mirror_axes": {"type": "array", "items": {"enum": ["x", "y", "z"]}},
            },
            "additionalProperties": False,
        },
        # the model's own run settings (keep largest, islands, edge refinement, quality), chosen on its
        # validation split by `e2miseg-train choose-defaults`, with the comparison that chose them
        "defaults": card_defaults_schema(),
        # the learned boundary refiner stored in the same file under "refiner." (e2miseg.refiner_part)
        "refiner": {
            "type": "object",
            "required": ["architecture", "config", "weights_sha256"],
            "properties": {
                "architecture": {"const": "boundary-refiner"},
                "config": {"type": "object"},
                "weights_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "training": {"type": "object"},
                "evaluation": {"type": "object"},
            },
            "additionalProperties": False,
        },
        "provenance": {"type": "object"},
        "license": {"type": "string", "minLength": 1},
        "attribution": {"type": "string"},
    },
    "additionalProperties": False,
}

INFERENCE_DEFAULTS: dict[str, Any] = {
    "step": 0.5,
    "fast_step": 0.8,
    "batch_size": 2,
    "gaussian_sigma_scale": 0.125,
    "slice_axis": "z",
    "slices": 1,
    "mirror_axes": ["x", "y", "z"],
}


def _describe(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"model card field '{where}': {error.message}"


def validate_card(card: Any) -> dict[str, Any]:
    """Check a card against the schema and its cross-field rules; return it with defaults filled.

    Raises ``CheckpointError`` naming the first offending field.
    """
    if not isinstance(card, dict):
        raise CheckpointError("the model card is not a JSON object; re-export the checkpoint with `e2miseg-train export`")
    errors = sorted(jsonschema.Draft7Validator(CARD_SCHEMA).iter_errors(card), key=lambda e: list(e.absolute_path))
    if errors:
        raise CheckpointError(_describe(errors[0]) + "; fix the card or re-export the checkpoint")
    card = copy.deepcopy(card)
    inference = {**INFERENCE_DEFAULTS, **card["inference"]}
    card["inference"] = inference
    values = [label["value"] for label in card["labels"]]
    if len(set(values)) != len(values):
        raise CheckpointError(f"model card field 'labels': duplicate label values {values}; each label needs its own value")
    kind = inference["kind"]
    if kind == "3d" and len(inference.get("patch_size_zyx", [])) != 3:
        raise CheckpointError("model card field 'inference/patch_size_zyx': a 3D model needs a 3-element patch size (z, y, x)")
    if kind in ("2d", "2.5d") and "patch_size_zyx" in inference and len(inference["patch_size_zyx"]) != 2:
        raise CheckpointError("model card field 'inference/patch_size_zyx': a 2D/2.5D model takes a 2-element in-plane size")
    if kind == "2.5d" and inference["slices"] % 2 == 0:
        raise CheckpointError("model card field 'inference/slices': a 2.5D stack needs an odd number of slices")
    try:
        Settings.from_card(card)
    except SettingsError as exc:
        raise CheckpointError(f"model card field 'defaults': {exc}; fix the card or re-export the checkpoint") from None
    if (card.get("defaults") or {}).get("edge_method") == "learned" and not card.get("refiner"):
        raise CheckpointError("model card field 'defaults/edge_method': 'learned' needs a learned refiner in the file; "
                              "attach one with `e2miseg-train attach-refiner` or choose a classical method")
    has_global = "normalization" in card["preprocessing"]
    if not has_global and not all("normalization" in ch for ch in card["channels"]):
        raise CheckpointError("model card field 'preprocessing/normalization': give a normalization for all channels or one per channel")
    return card


def card_to_json(card: dict[str, Any]) -> str:
    return json.dumps(card, sort_keys=True, separators=(",", ":"))


def card_from_json(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"the model card is not valid JSON ({exc.msg} at char {exc.pos}); re-export the checkpoint") from None


def num_classes(card: dict[str, Any]) -> int:
    """Classes the network predicts: background plus the highest label value."""
    return 1 + max(label["value"] for label in card["labels"])


def channel_normalization(card: dict[str, Any], channel: int) -> dict[str, Any]:
    """The normalization of one input channel (per-channel entry wins over the global one)."""
    return card["channels"][channel].get("normalization") or card["preprocessing"]["normalization"]


def terminology_tag(label: dict[str, Any]) -> str:
    """Slicer's serialised terminology entry for a label (the ``TerminologyEntry`` segment tag).

    Format: context~category~type~typeModifier~anatomicContext~region~regionModifier, each code as
    scheme^value^meaning. An empty string means "no terminology", which Slicer accepts.
    """
    term = label.get("terminology")
    if not term:
        return ""

    def code(key: str) -> str:
        c = term.get(key)
        return f"{c['scheme']}^{c['code']}^{c['meaning']}" if c else "^^"

    return "~".join([
        "Segmentation category and type - DICOM master list",
        code("category"), code("type"), code("type_modifier"),
        "Anatomic codes - DICOM master list", code("region"), "^^",
    ])
