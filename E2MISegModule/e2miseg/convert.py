"""One-time conversion of a trusted pickle checkpoint (.pt/.pth) into the safe single-file format.

Loading a pickle can run code, so this refuses unless the caller says they trust the file; even then
it uses PyTorch's restricted ``weights_only`` loader, which accepts plain tensors and containers only.
"""
from __future__ import annotations

import json
from pathlib import Path

from .card import validate_card
from .errors import CheckpointError


def convert_pickle_checkpoint(source: Path, card_path: Path | None, output: Path | None, trust_pickle: bool = False) -> Path:
    if not trust_pickle:
        raise CheckpointError(f"converting {source.name} means unpickling it, which can run code; "
                              f"add --trust-pickle only if you trust the file's author")
    if card_path is None or not card_path.is_file():
        raise CheckpointError("conversion needs the model card: --card CARD.json")
    if output is None or output.suffix != ".safetensors":
        raise CheckpointError("conversion needs an output file: -o MODEL.safetensors")
    if not source.is_file():
        raise CheckpointError(f"{source} does not exist; check the path")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{card_path.name} is not valid JSON; fix the model card") from None
    card = validate_card(card)
    import torch  # after the cheap checks: a refused conversion never waits for torch

    from .api import build_from_card
    from .checkpoint import load_weights_into, save_checkpoint

    try:
        # weights_only: PyTorch's restricted unpickler, which builds tensors and containers and
        # refuses every other global, so even a trusted-but-tampered file cannot run code here
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{source.name} could not be read by the restricted loader ({detail}); "
                              f"it holds more than weights, re-save it as a plain state dict") from None
    state = payload.get("state_dict", payload.get("model", payload)) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source.name} holds no state dict of tensors")
    model = build_from_card(card)
    load_weights_into(model, state, source.name)  # proves the weights fit before anything is written
    save_checkpoint(output, model.state_dict(), card)
    return output
