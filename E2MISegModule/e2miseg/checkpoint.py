"""The single-file checkpoint: safetensors weights + the model card in its metadata.

Nothing here unpickles. The header is checked by hand before safetensors sees the file, so a hostile
or truncated file gets a one-line explanation instead of a parser error deep inside a library.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .card import card_from_json, card_to_json, validate_card
from .errors import CheckpointError

CARD_METADATA_KEY = "e2miseg_card"
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a real header of a few thousand tensors is well under 1 MB
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], card: dict[str, Any],
                    half_precision: bool = False) -> str:
    """Write weights and card atomically; return the file's sha256.

    ``half_precision`` stores floating tensors as fp16 (halves the file; loading casts back).
    """
    card = validate_card(card)
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        if half_precision and value.is_floating_point():
            value = value.to(torch.float16)
        tensors[key] = value
    blob = save_safetensors_bytes(tensors, metadata={"format": "pt", CARD_METADATA_KEY: card_to_json(card)})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return hashlib.sha256(blob).hexdigest()


def _parse_header(blob: bytes, name: str) -> dict[str, Any]:
    if len(blob) < 8:
        raise CheckpointError(f"{name} is too short to be a safetensors checkpoint (truncated download?)")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(f"{name} has a {header_len}-byte header (limit {MAX_HEADER_BYTES}); the file is corrupted or hostile")
    if 8 + header_len > len(blob):
        raise CheckpointError(f"{name} is truncated: its header claims {header_len} bytes but the file is {len(blob)} bytes")
    try:
        header = json.loads(blob[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{name} has a malformed safetensors header (not JSON); the file is corrupted") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} has a malformed safetensors header (not an object)")
    data_len = len(blob) - 8 - header_len
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            expected = count * _DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{name}: tensor '{key}' has a malformed header entry") from None
        if not (0 <= start <= end <= data_len) or end - start != expected:
            raise CheckpointError(f"{name}: tensor '{key}' points outside the file or has the wrong size; the file is corrupted")
    return header


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights and the validated card from a checkpoint file. Never unpickles."""
    path = Path(path)
    name = path.name
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{name} is a pickle-based PyTorch file, which can run arbitrary code when loaded and is refused; "
            f"if you trust its author, convert it once with `e2miseg models convert {path} --trust-pickle --card CARD.json`")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; see `e2miseg models list`")
    blob = path.read_bytes()
    header = _parse_header(blob, name)
    metadata = header.get("__metadata__") or {}
    if CARD_METADATA_KEY not in metadata:
        raise CheckpointError(f"{name} has no E2MISeg model card; export it with `e2miseg-train export`")
    card = validate_card(card_from_json(metadata[CARD_METADATA_KEY]))
    try:
        tensors = load_safetensors_bytes(blob)
    except Exception as exc:  # safetensors raises its own error types; the message is what matters
        raise CheckpointError(f"{name} cannot be decoded as safetensors ({exc}); the file is corrupted") from None
    return tensors, card


def load_weights_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], name: str) -> None:
    """Copy checkpoint tensors into a freshly built model, naming any mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{name}: weights do not match the architecture in its card ({detail}); the card or file is wrong")
    converted = {}
    for key, target in expected.items():
        value = tensors[key]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(f"{name}: tensor '{key}' has shape {tuple(value.shape)} but the architecture needs {tuple(target.shape)}")
        if value.is_floating_point() != target.is_floating_point():
            raise CheckpointError(f"{name}: tensor '{key}' has dtype {value.dtype} but the architecture needs {target.dtype}")
        converted[key] = value.to(target.dtype)
    model.load_state_dict(converted, strict=True)
