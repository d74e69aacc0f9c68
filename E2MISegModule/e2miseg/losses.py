"""Training losses of the three architectures (spec sections 1.5, 2.4, 3.4).

Every loss is called as ``loss(outputs, target)`` where ``outputs`` is what the model returns in
train mode and ``target`` holds int64 labels (B, *spatial) with values 0..K-1 (a singleton
channel axis is accepted too). Target resizing for deep supervision and the EHANet edge targets
are computed inside the losses, so the training loop is the same for every model.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def as_labels(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Return ``target`` as (B, *spatial) int64, dropping a singleton channel axis if present."""
    if target.dim() == logits.dim():
        if target.shape[1] != 1:
            raise ValueError(f"target must be labels (B, *spatial), got {tuple(target.shape)}")
        target = target[:, 0]
    return target.long()


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, *spatial) labels -> (B, K, *spatial) float one-hot."""
    return F.one_hot(labels, num_classes).movedim(-1, 1).float()


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of (B, *spatial) labels to ``size`` (deep-supervision targets)."""
    if tuple(labels.shape[1:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].long()


# --------------------------------------------------------------------------- E2MISeg (1.5)

def scale_sensitive_dice(probs: torch.Tensor, target_onehot: torch.Tensor,
                         smooth: float = 1e-5, batch_dice: bool = True) -> torch.Tensor:
    """The SS term ``-mean_c(alpha_c * DSC_c)`` over foreground classes (channel 0 is skipped).

    alpha_c = (min(P,G) + Delta + s) / (max(P,G) + Delta + s), Delta = ((P - G) / 2)^2, with P and
    G the soft predicted and true volumes; alpha stays in the graph so volume mismatch is penalised.
    """
    dims = [0] + list(range(2, probs.dim())) if batch_dice else list(range(2, probs.dim()))
    p, g = probs[:, 1:], target_onehot[:, 1:]
    tp = (p * g).sum(dims)
    fp = (p * (1 - g)).sum(dims)
    fn = ((1 - p) * g).sum(dims)
    pred_vol, true_vol = tp + fp, tp + fn
    delta = ((pred_vol - true_vol) / 2) ** 2
    alpha = (torch.minimum(pred_vol, true_vol) + delta + smooth) / (
        torch.maximum(pred_vol, true_vol) + delta + smooth)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth + 1e-8)
    return -(alpha * dice).mean()


class ScaleSensitiveLoss(nn.Module):
    """``w_ce * CE + w_ss * SS`` for softmax logits (B, K, *spatial); SS excludes background."""

    def __init__(self, w_ce: float = 1.0, w_ss: float = 1.45, smooth: float = 1e-5,
                 batch_dice: bool = True) -> None:
        super().__init__()
        self.w_ce, self.w_ss, self.smooth, self.batch_dice = w_ce, w_ss, smooth, batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # the volume sums need fp32 even under autocast
        labels = as_labels(target, logits)
        ce = F.cross_entropy(logits, labels)
        ss = scale_sensitive_dice(logits.softmax(1), one_hot(labels, logits.shape[1]),
                                  self.smooth, self.batch_dice)
        return self.w_ce * ce + self.w_ss * ss


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over a list of outputs, full resolution first.

    Targets are nearest-downsampled to each output's size. Default weights are 1, 1/2, 1/4, ...
    normalised to sum to 1 (4/7, 2/7, 1/7 for three outputs). A single tensor is passed through.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def output_weights(self, n: int) -> list[float]:
        raw = self.weights if self.weights is not None else [0.5**i for i in range(n)]
        if len(raw) != n:
            raise ValueError(f"{len(raw)} deep-supervision weights for {n} outputs")
        total = sum(raw)
        return [w / total for w in raw]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor],
                target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        labels = as_labels(target, outputs[0])
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(self.output_weights(len(outputs)), outputs):
            total = total + w * self.loss(out, resize_labels(labels, out.shape[2:]))
        return total


# --------------------------------------------------------------------------- EHANet (2.4)

def edge_targets(labels: torch.Tensor, num_classes: int, width: int = 2) -> torch.Tensor:
    """Binary edge map (B, *spatial) int64: morphological gradient of the foreground one-hot.

    ``width`` is the band thickness in pixels: ``width - width // 2`` pixels inside each object
    and ``width // 2`` outside (width 2 = the classic 3x3 dilate - erode). Computed with max
    pooling on the labels' device; image borders are not treated as background.
    """
    if width < 1:
        raise ValueError(f"edge width must be >= 1, got {width}")
    fg = one_hot(labels, num_classes)[:, 1:]  # background edges would double the band
    pool = F.max_pool2d if labels.dim() == 3 else F.max_pool3d
    r_out, r_in = width // 2, width - width // 2
    dilated = pool(fg, 2 * r_out + 1, stride=1, padding=r_out) if r_out else fg
    eroded = -pool(-fg, 2 * r_in + 1, stride=1, padding=r_in)
    return (dilated - eroded).amax(dim=1).long()


def _lovasz_gradient(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted descending."""
    total = gt_sorted.sum()
    intersection = total - gt_sorted.cumsum(0)
    union = total + (1 - gt_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat((jaccard[:1], jaccard[1:] - jaccard[:-1]))


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, only_present: bool = True) -> torch.Tensor:
    """Lovász-softmax loss (Berman et al., CVPR 2018) on probabilities (B, C, *spatial).

    Pixels of the whole batch are pooled; classes absent from ``labels`` are skipped when
    ``only_present`` (the reference's ``classes='present'``).
    """
    c = probs.shape[1]
    flat_probs = probs.movedim(1, -1).reshape(-1, c)
    flat_labels = labels.reshape(-1)
    losses = []
    for cls in range(c):
        fg = (flat_labels == cls).float()
        if only_present and not bool(fg.any()):
            continue
        errors = (fg - flat_probs[:, cls]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_gradient(fg[order])))
    if not losses:
        return flat_probs.sum() * 0.0
    return torch.stack(losses).mean()


class EHANetLoss(nn.Module):
    """Lovász edge loss + region loss on the main and the four side outputs (all weights 1).

    Region loss: binary head (1 channel) -> ``0.5 * BCE + 0.5 * Dice`` (sigmoid, batch-global,
    smooth 1); multi-class head -> ``0.5 * CE + 0.5 * Dice`` (softmax, foreground classes).
    """

    def __init__(self, edge_width: int = 2, edge_weight: float = 1.0, ce_weight: float = 0.5,
                 dice_weight: float = 0.5) -> None:
        super().__init__()
        from monai.losses import DiceLoss  # MONAI's soft Dice: 1 - (2I + 1) / (P + G + 1)

        self.edge_width, self.edge_weight = edge_width, edge_weight
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.dice_binary = DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
        self.dice_multi = DiceLoss(softmax=True, to_onehot_y=True, include_background=False,
                                   batch=True, smooth_nr=1.0, smooth_dr=1.0)

    def region_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            fg = (labels > 0).float()[:, None]
            ce = F.binary_cross_entropy_with_logits(logits, fg)
            dice = self.dice_binary(logits, fg)
        else:
            ce = F.cross_entropy(logits, labels)
            dice = self.dice_multi(logits, labels[:, None])
        return self.ce_weight * ce + self.dice_weight * dice

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            raise TypeError("EHANetLoss needs the train-mode output (main, sides, edge); "
                            "call model.train() before computing the loss")
        main, sides, edge = outputs
        main, sides = main.float(), [s.float() for s in sides]
        labels = as_labels(target, main)
        num_classes = 2 if main.shape[1] == 1 else main.shape[1]
        edges = edge_targets(labels, num_classes, self.edge_width)
        total = self.edge_weight * lovasz_softmax(edge.float(), edges)
        for logits in [main, *sides]:
            total = total + self.region_loss(logits, labels)
        return total


# --------------------------------------------------------------------------- S²aNet (3.4)

def hard_dice_per_class(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-class Dice (K,) of argmax(logits) vs labels, averaged over the images of the batch.

    A class absent from both prediction and ground truth of an image scores 0 there.
    """
    k = logits.shape[1]
    pred = one_hot(logits.argmax(1), k).flatten(2)
    true = one_hot(labels, k).flatten(2)
    inter = (pred * true).sum(-1)
    denom = pred.sum(-1) + true.sum(-1)
    dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.zeros_like(denom))
    return dice.mean(0)


WEIGHTINGS = ("adaptive", "adaptive-foreground", "none")


class WeightAdaptiveLoss(nn.Module):
    """``CE(logits, y; weight=w) + beta * mean_c(1 - DSC_c)`` with ``w_c = 1 - DSC_c`` (detached).

    DSC_c is the hard Dice of the current batch (``mode="batch"``) or its exponential moving
    average (``mode="ema"``, ``dsc <- momentum * dsc + (1 - momentum) * batch``). Weights are
    floored at ``min_weight`` so a perfectly segmented batch does not make CE divide by zero.
    The second term carries no gradient; it reports how far the classes are from perfect.

    ``weighting`` (spec 3.4 lists the variants):
    - ``"adaptive"``: every class, background included, weighted ``1 - DSC_c`` (the spec's reading of
      the reference's ``DiceCEloss``). Background is always segmented best, so its weight is the
      smallest (about 0.02 against 0.2 for a left atrium at Dice 0.8), and weighted CE is minimised
      by calling a voxel foreground once its probability passes ``w_bg / (w_bg + w_fg)``, about 0.1:
      the network learns to over-segment (issue 25: predicted volumes 1.5x the reference).
    - ``"adaptive-foreground"``: foreground classes weighted ``1 - DSC_c`` against each other, the
      background given their mean, so the adaptive weights still steer effort to the weakest
      structures but no longer trade background for foreground (two classes: plain CE).
    - ``"none"``: plain CE, as the public training script runs.
    ``dice_weight`` adds a soft Dice term over the foreground classes (with gradient), which plain CE
    lacks for structures that fill 1 % of the image.
    """

    def __init__(self, beta: float = 1.0, mode: str = "batch", momentum: float = 0.9,
                 min_weight: float = 1e-4, weighting: str = "adaptive", dice_weight: float = 0.0) -> None:
        super().__init__()
        if mode not in ("batch", "ema"):
            raise ValueError(f"mode must be 'batch' or 'ema', got {mode!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        if not 0.0 <= dice_weight <= 10.0:
            raise ValueError(f"dice_weight must be in [0, 10], got {dice_weight}")
        self.beta, self.mode, self.momentum, self.min_weight = beta, mode, momentum, min_weight
        self.weighting, self.dice_weight = weighting, float(dice_weight)
        self.register_buffer("dice_ema", torch.empty(0), persistent=False)
        self.last_weights: torch.Tensor | None = None
        self.soft_dice = None
        if self.dice_weight:
            from monai.losses import DiceLoss

            self.soft_dice = DiceLoss(softmax=True, to_onehot_y=True, include_background=False, batch=True)

    def class_weights(self, miss: torch.Tensor) -> torch.Tensor:
        """CE class weights from ``miss = 1 - DSC_c`` under the chosen ``weighting``."""
        if self.weighting == "none":
            return torch.ones_like(miss)
        weights = miss.clamp_min(self.min_weight)
        if self.weighting == "adaptive-foreground":
            weights = weights.clone()
            weights[0] = weights[1:].mean()
        return weights

    @torch.no_grad()
    def class_dice(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The DSC_c the weights are computed from (updates the EMA in ``"ema"`` mode)."""
        dice = hard_dice_per_class(logits, labels)
        if self.mode == "ema":
            if self.dice_ema.numel() != dice.numel():
                self.dice_ema = dice.clone()
            else:
                self.dice_ema.mul_(self.momentum).add_(dice, alpha=1 - self.momentum)
            dice = self.dice_ema.clone()
        return dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        labels = as_labels(target, logits)
        miss = 1 - self.class_dice(logits, labels)
        weights = self.class_weights(miss)
        self.last_weights = weights
        loss = F.cross_entropy(logits, labels, weight=weights) + self.beta * miss.mean()
        if self.soft_dice is not None:
            loss = loss + self.dice_weight * self.soft_dice(logits, labels[:, None])
        return loss
