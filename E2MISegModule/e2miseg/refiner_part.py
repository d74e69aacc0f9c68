"""The learned boundary refiner as a part of the model's own checkpoint.

Why the same file and not a companion: a model and its refiner are trained for each other (the
refiner learnt *this* network's errors), so they must not travel apart; the store, the Slicer model
list, ``models install`` and the index's sha256 already handle one file per model. The refiner's
tensors sit under ``refiner.`` and the card's ``refiner`` section describes it: architecture,
config, what it was trained on, its measured effect, and the sha256 of its tensors.

That sha256 is checked on every load: the file-level sha256 in ``index.json`` only covers the
bundled store, and a refiner changed after it was measured would silently refine with other weights
than the card's figures describe. Nothing here unpickles: the tensors come from safetensors.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch

from .card import channel_normalization, num_classes
from .checkpoint import REFINER_PREFIX, load_weights_into
from .errors import CheckpointError

ATTACH_HINT = "download or copy the model again, or re-attach its refiner with `e2miseg-train attach-refiner`"


def split_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(network tensors, refiner tensors without the prefix)."""
    network = {k: v for k, v in tensors.items() if not k.startswith(REFINER_PREFIX)}
    refiner = {k[len(REFINER_PREFIX):]: v for k, v in tensors.items() if k.startswith(REFINER_PREFIX)}
    return network, refiner


def refiner_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the refiner's tensors as stored: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{str(value.dtype)}|{tuple(value.shape)}\n".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def has_refiner(card: dict[str, Any]) -> bool:
    return bool(card.get("refiner"))


def load_refiner(tensors: dict[str, torch.Tensor], card: dict[str, Any], name: str):
    """The model's ``LearnedRefiner``, or None if it has none; a damaged or tampered part is refused."""
    from .edges.learned import LearnedRefiner
    from .edges.learned_net import build_refiner

    section = card.get("refiner")
    _, parts = split_tensors(tensors)
    if not section:
        if parts:
            raise CheckpointError(f"{name} holds refiner weights that its card does not describe; {ATTACH_HINT}")
        return None
    if not parts:
        raise CheckpointError(f"{name}'s card describes a learned refiner but the file holds no refiner weights; {ATTACH_HINT}")
    if refiner_digest(parts) != section["weights_sha256"]:
        raise CheckpointError(f"{name}: the learned refiner's weights do not match the sha256 in its card (changed after "
                              f"it was attached); {ATTACH_HINT}")
    config = dict(section["config"])
    if config.get("num_classes") != num_classes(card):
        raise CheckpointError(f"{name}: its refiner is for {config.get('num_classes')} classes but the model has "
                              f"{num_classes(card)}; {ATTACH_HINT}")
    try:
        network = build_refiner(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: its refiner's config does not fit the refiner ({exc}); {ATTACH_HINT}") from None
    load_weights_into(network, parts, f"{name} (refiner)")
    return LearnedRefiner(network.float(), channel_normalization(card, 0), card["name"])


def with_refiner(tensors: dict[str, torch.Tensor], card: dict[str, Any], refiner_state: dict[str, torch.Tensor],
                 section: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model's tensors and card with ``refiner_state`` attached (any previous refiner replaced)."""
    network, _ = split_tensors(tensors)
    parts = {k: v.detach().cpu().float().contiguous().clone() for k, v in refiner_state.items()}
    card = dict(card)
    card["refiner"] = {**section, "architecture": "boundary-refiner", "weights_sha256": refiner_digest(parts)}
    return {**network, **{REFINER_PREFIX + k: v for k, v in parts.items()}}, card


def read_refiner(name_or_path):
    """The learned refiner of a stored model or checkpoint file (None if it has none), without building its network."""
    from .checkpoint import read_checkpoint
    from .store import resolve

    stored = resolve(name_or_path)
    tensors, card = read_checkpoint(stored.path)
    return load_refiner(tensors, card, stored.path.name)
