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
from typing import TYPE_CHECKING, Any

from .card import card_to_json, validate_card
from .errors import CheckpointError

if TYPE_CHECKING:  # torch is imported lazily: reading a card must not cost a torch import
    import torch

CARD_METADATA_KEY = "e2miseg_card"
# Tensors of the model's learned boundary refiner share the file under this prefix (e2miseg.refiner_part);
# the network's own weights never start with it.
REFINER_PREFIX = "refiner."
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a real header of a few thousand tensors is well under 1 MB
MAX_CARD_BYTES = 1024 * 1024  # a real card is a few kB; a bigger one is a parser attack, not a model
MAX_CARD_DEPTH = 32  # the schema nests 5 levels; deep nesting would only exhaust recursion downstream
# Zip (torch.save's default) and raw pickle protocol 2-5 openings: a renamed .pt is still a pickle
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
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
    import torch  # noqa: F401  (state_dict values are tensors)
    from safetensors.torch import save as save_safetensors_bytes

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


def _pickle_refusal(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path.name} is a pickle-based PyTorch file, which can run arbitrary code when loaded and is refused; "
        f"if you trust its author, convert it once with `e2miseg models convert {path} --trust-pickle --card CARD.json -o MODEL.safetensors`")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise CheckpointError(f"duplicate key '{duplicate}'")
    return dict(pairs)


def _load_json(text: bytes | str, what: str) -> Any:
    """json.loads that turns every way hostile JSON can fail into one CheckpointError."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except CheckpointError as exc:
        raise CheckpointError(f"{what} has a {exc}; the file is corrupted or hostile") from None
    except RecursionError:
        raise CheckpointError(f"{what} is nested too deeply to be real; the file is corrupted or hostile") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{what} is malformed (not valid JSON); the file is corrupted") from None


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (a recursive walk is what the limit protects)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_CARD_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children)
    return deepest


def _check_entries(header: dict[str, Any], data_len: int, name: str) -> None:
    """Every tensor's dtype, shape and byte range; the ranges must tile the data exactly, as safetensors requires."""
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise CheckpointError(f"{name} has malformed safetensors metadata (values must be strings); the file is corrupted")
            continue
        try:
            start, end = entry["data_offsets"]
            shape = entry["shape"]
            if not all(type(v) is int for v in (start, end, *shape)) or any(dim < 0 for dim in shape):
                raise TypeError
            count = 1
            for dim in shape:
                count *= dim
            expected = count * _DTYPE_BYTES[entry["dtype"]]
        except KeyError:
            raise CheckpointError(f"{name}: tensor '{key}' has a malformed header entry or an unsupported dtype; "
                                  f"the file is corrupted or not from E2MISeg") from None
        except (TypeError, ValueError):
            raise CheckpointError(f"{name}: tensor '{key}' has a malformed header entry; the file is corrupted") from None
        if not (0 <= start <= end) or end - start != expected:
            raise CheckpointError(f"{name}: tensor '{key}' points outside the file or has the wrong size; the file is corrupted")
        if end > data_len:  # a consistent header whose data was cut short: a partial download or copy
            raise CheckpointError(f"{name} is truncated: tensor '{key}' ends at byte {end} of the data but the file holds "
                                  f"{data_len}; download or copy it again")
        spans.append((start, end, key))
    position = 0
    for start, end, key in sorted(spans):
        if start != position:
            problem = "overlaps another tensor" if start < position else "leaves a gap before it"
            raise CheckpointError(f"{name}: tensor '{key}' {problem} in the data section; the file is corrupted or hostile")
        position = end
    if position != data_len:
        raise CheckpointError(f"{name} has {data_len - position} bytes after its last tensor; the file is corrupted")


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The checked safetensors header of ``path``, reading only the header bytes. Never unpickles."""
    path = Path(path)
    name = path.name
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_refusal(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; see `e2miseg models list`")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if prefix.startswith(_PICKLE_MAGIC):
            raise _pickle_refusal(path)
        if len(prefix) < 8:
            raise CheckpointError(f"{name} is too short to be a safetensors checkpoint (truncated download?)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(f"{name} has a {header_len}-byte header (limit {MAX_HEADER_BYTES}); the file is corrupted or hostile")
        if 8 + header_len > size:
            raise CheckpointError(f"{name} is truncated: its header claims {header_len} bytes but the file is {size} bytes")
        header = _load_json(f.read(header_len), f"{name}'s safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} has a malformed safetensors header (not an object); the file is corrupted")
    _check_entries(header, size - 8 - header_len, name)
    return header


def card_from_header(header: dict[str, Any], name: str) -> dict[str, Any]:
    """The validated model card stored in a checked header, bounded in size and depth."""
    metadata = header.get("__metadata__") or {}
    if CARD_METADATA_KEY not in metadata:
        raise CheckpointError(f"{name} has no E2MISeg model card; export it with `e2miseg-train export`")
    text = metadata[CARD_METADATA_KEY]
    if len(text) > MAX_CARD_BYTES:
        raise CheckpointError(f"{name}'s model card is {len(text)} bytes (limit {MAX_CARD_BYTES}); the file is corrupted or hostile")
    card = _load_json(text, f"{name}'s model card")
    if _depth(card) > MAX_CARD_DEPTH:
        raise CheckpointError(f"{name}'s model card is nested more than {MAX_CARD_DEPTH} levels deep; the file is corrupted or hostile")
    return validate_card(card)


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The validated card of a checkpoint without reading its weights (or importing torch)."""
    return card_from_header(read_header(path), Path(path).name)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights and the validated card from a checkpoint file. Never unpickles."""
    path = Path(path)
    card = card_from_header(read_header(path), path.name)
    from safetensors.torch import load as load_safetensors_bytes  # torch only once the file passed every check

    try:
        tensors = load_safetensors_bytes(path.read_bytes())
    except Exception as exc:  # safetensors raises its own error types; the message is what matters
        raise CheckpointError(f"{path.name} cannot be decoded as safetensors ({exc}); the file is corrupted") from None
    return tensors, card


def load_weights_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], name: str) -> None:
    """Copy checkpoint tensors into a freshly built model, naming any mismatch.

    A learned refiner's tensors (``REFINER_PREFIX``) are not the network's and are left out here.
    """
    tensors = {key: value for key, value in tensors.items() if not key.startswith(REFINER_PREFIX)}
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
            raise CheckpointError(f"{name}: tensor '{key}' has shape {tuple(value.shape)} but the architecture needs "
                                  f"{tuple(target.shape)}; the weights were trained for another configuration than its card says")
        if value.is_floating_point() != target.is_floating_point():
            raise CheckpointError(f"{name}: tensor '{key}' has dtype {value.dtype} but the architecture needs {target.dtype}; "
                                  f"the file is damaged or was not exported by E2MISeg")
        converted[key] = value.to(target.dtype)
    model.load_state_dict(converted, strict=True)
