"""Amend the card of an already exported checkpoint without retraining: ``choose-defaults --write``
(the ``defaults`` section) and ``volume-ranges --write`` (per-label validation volumes) both go
through here, so a card change never touches the weights and the Markdown card beside the file keeps
one section per amendment.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from e2miseg.checkpoint import read_checkpoint, save_checkpoint
from e2miseg.store import record_hash, resolve


def amend_card(model: str, change: Callable[[dict[str, Any]], None], record: bool = False) -> Path:
    """Rewrite the checkpoint ``model`` (path or store name) with ``change(card)`` applied: the tensors
    are written back in their stored dtype (byte for byte the same weights), the card is validated on
    save and the file is replaced atomically; ``record`` refreshes its sha256 in the folder's index.json."""
    stored = resolve(model)
    tensors, card = read_checkpoint(stored.path)
    change(card)
    save_checkpoint(stored.path, tensors, card)  # half_precision=False: keep each tensor's stored dtype
    if record:
        record_hash(stored.path)
    return stored.path


def replace_markdown_section(checkpoint: Path, heading: str, body: str) -> None:
    """Replace (or append) the ``## heading...`` section of the Markdown card beside ``checkpoint``.

    ``heading`` is matched as a prefix, so a section whose title carries a note keeps being found."""
    stem = checkpoint.name[: -len(".safetensors")] if checkpoint.name.endswith(".safetensors") else checkpoint.stem
    card_md = checkpoint.with_name(f"{stem}.md")
    if not card_md.exists():
        return
    text = card_md.read_text(encoding="utf-8")
    section = body.rstrip("\n") + "\n"
    match = re.search(f"^{re.escape(heading)}", text, re.MULTILINE)
    if match:
        end = text.find("\n## ", match.end())
        rest = text[end + 1:] if end >= 0 else ""
        text = text[:match.start()] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    card_md.write_text(text, encoding="utf-8")
