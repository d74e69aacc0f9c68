"""The model store: where checkpoints live and how a name becomes a verified file.

Search order: an explicit file path; the user's store (``$E2MISEG_MODELS`` or ``~/.e2miseg/models``);
the models bundled with the extension (``Resources/Models``). Each store folder keeps an
``index.json`` with the sha256 of every checkpoint it vouches for; a file whose hash no longer
matches its index entry is refused (it was changed or damaged after it was imported).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import read_checkpoint, sha256_of
from .errors import CheckpointError, OutputError

INDEX_NAME = "index.json"
CHECKPOINT_SUFFIX = ".safetensors"


def bundled_models_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "Resources" / "Models"


def user_models_dir() -> Path:
    from .environment import folder_variable, home

    return folder_variable("E2MISEG_MODELS") or home() / ".e2miseg" / "models"


def store_dirs() -> list[Path]:
    return [user_models_dir(), bundled_models_dir()]


@dataclass
class StoredModel:
    name: str
    path: Path
    sha256: str | None  # recorded hash; None for a loose file the store does not vouch for
    card: dict[str, Any] | None = None


def _read_index(folder: Path) -> dict[str, Any]:
    index = folder / INDEX_NAME
    if not index.is_file():
        return {}
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        entries = None
    # every entry must be {"sha256": ...}: a damaged index must not vouch for anything
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise CheckpointError(f"{index} is not a valid model index; delete it and re-import the models")
    return entries


def _write_index(folder: Path, index: dict[str, Any]) -> None:
    tmp = folder / f".{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, folder / INDEX_NAME)


def list_models() -> list[StoredModel]:
    """Every checkpoint in the store folders (user first, so a user import shadows a bundled name)."""
    found: dict[str, StoredModel] = {}
    for folder in store_dirs():
        if not folder.is_dir():
            continue
        index = _read_index(folder)
        for path in sorted(folder.glob(f"*{CHECKPOINT_SUFFIX}")):
            name = path.name[: -len(CHECKPOINT_SUFFIX)]
            if name not in found:
                found[name] = StoredModel(name, path, index.get(path.name, {}).get("sha256"))
    return list(found.values())


def resolve(name_or_path: str | os.PathLike, verify: bool = True) -> StoredModel:
    """Find a checkpoint by store name or path and check its recorded sha256."""
    candidate = Path(name_or_path)
    if candidate.suffix or os.sep in str(name_or_path):
        if not candidate.is_file():
            raise CheckpointError(f"checkpoint file {candidate} does not exist")
        folder_index = _read_index(candidate.parent)
        model = StoredModel(candidate.stem, candidate, folder_index.get(candidate.name, {}).get("sha256"))
    else:
        matches = [m for m in list_models() if m.name == str(name_or_path)]
        if not matches:
            names = [m.name for m in list_models()]
            guesses = similar_names(str(name_or_path), names)
            hint = f"did you mean {' or '.join(repr(g) for g in guesses)}? " if guesses else ""
            raise CheckpointError(f"no model named '{name_or_path}'; {hint}known models: {', '.join(names) or 'none installed'} "
                                  f"(`e2miseg models list`); import one with `e2miseg models import FILE`")
        model = matches[0]
    if verify and model.sha256 is not None:
        actual = sha256_of(model.path)
        if actual != model.sha256:
            raise CheckpointError(
                f"{model.path.name} fails its checksum (recorded {model.sha256[:12]}…, file {actual[:12]}…); "
                f"the file was modified or damaged, re-import it from a trusted copy")
    return model


def import_model(path: str | os.PathLike, folder: Path | None = None) -> StoredModel:
    """Validate a checkpoint, copy it into the user store and record its sha256."""
    source = Path(path)
    _, card = read_checkpoint(source)  # refuses broken or hostile files before anything is copied
    folder = folder or user_models_dir()
    target = folder / f"{card['name']}{CHECKPOINT_SUFFIX}"
    tmp = folder / f".{target.name}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        if folder.is_dir():
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the model store {folder} ({exc.strerror or exc}); set E2MISEG_MODELS to a folder "
                          f"you can write to") from None
    digest = sha256_of(target)
    index = _read_index(folder)
    index[target.name] = {"sha256": digest, "version": card["version"], "license": card["license"]}
    _write_index(folder, index)
    return StoredModel(card["name"], target, digest, card)


def record_hash(path: Path) -> str:
    """Record (or refresh) a checkpoint's sha256 in its folder's index; used when bundling models."""
    digest = sha256_of(path)
    index = _read_index(path.parent)
    _, card = read_checkpoint(path)
    index[path.name] = {"sha256": digest, "version": card["version"], "license": card["license"]}
    _write_index(path.parent, index)
    return digest


def similar_names(name: str, names: list[str], limit: int = 2) -> list[str]:
    """Store names close to a misspelt ``name``: the whole name, or one of its dash-separated parts
    (``hipocampus`` finds ``e2miseg-hippocampus``)."""
    import difflib

    query = name.lower()
    scored = []
    for candidate in names:
        parts = [candidate.lower()] + candidate.lower().split("-")
        score = max(difflib.SequenceMatcher(None, query, part).ratio() for part in parts)
        if score >= 0.6:
            scored.append((score, candidate))
    return [candidate for _, candidate in sorted(scored, key=lambda item: -item[0])[:limit]]
