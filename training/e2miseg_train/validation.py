"""Validation during training: the engine's own Predictor on network-grid arrays, Dice per label."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from e2miseg.inference import InferenceOptions, Predictor


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (nothing to find, nothing found)."""
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def validate(model: torch.nn.Module, card: dict[str, Any], cases: dict[str, tuple[np.ndarray, np.ndarray]],
             device: str = "cpu", step: float | None = None) -> dict[str, Any]:
    """Mean Dice per label over ``cases`` (name -> (image, labels) on the network grid).

    Runs ``e2miseg.inference.Predictor`` - the tiling, blending and batching Slicer uses - so the
    number reported here is the number the shipped model gets on the network grid.
    """
    was_training = model.training
    predictor = Predictor(model, card, InferenceOptions(device=device, step=step))
    values = [label["value"] for label in card["labels"]]
    per_case = {}
    try:
        for name, (image, labels) in cases.items():
            probabilities = predictor.predict(image)
            prediction = probabilities.argmax(0)
            per_case[name] = {v: dice(prediction == v, labels == v) for v in values}
    finally:
        model.train(was_training)
    mean = {v: float(np.mean([scores[v] for scores in per_case.values()])) for v in values}
    return {"dice": mean, "mean_dice": float(np.mean(list(mean.values()))), "cases": len(per_case)}
