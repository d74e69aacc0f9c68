"""Training curves (PNG) and the log file."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any


def setup_logger(path: Path, rank: int = 0) -> logging.Logger:
    logger = logging.getLogger(f"e2miseg_train.{path}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers and rank == 0:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    return logger


def plot_curves(history: list[dict[str, Any]], labels: dict[int, str], path: Path, title: str) -> None:
    """Loss per epoch (left axis), validation Dice per label (right axis), one small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h for h in history if "loss" in h]
    vals = [h for h in history if "val_dice" in h]
    fig, loss_ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    loss_ax.plot([h["epoch"] for h in epochs], [h["loss"] for h in epochs], color="0.4", label="train loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("train loss")
    dice_ax = loss_ax.twinx()
    for value, name in labels.items():
        key = str(value)
        dice_ax.plot([h["epoch"] for h in vals], [h["val_dice"][key] for h in vals], marker="o", markersize=3, label=f"val Dice {name}")
    dice_ax.set_ylim(0, 1)
    dice_ax.set_ylabel("validation Dice")
    dice_ax.axhline(0.85, color="0.8", linestyle=":", linewidth=1)
    lines = loss_ax.get_legend_handles_labels()[0] + dice_ax.get_legend_handles_labels()[0]
    names = loss_ax.get_legend_handles_labels()[1] + dice_ax.get_legend_handles_labels()[1]
    dice_ax.legend(lines, names, loc="lower left", fontsize=7)
    loss_ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
