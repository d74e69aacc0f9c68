"""Losses: values on hand-worked cases, deep supervision, edge targets, Lovász, weight-adaptive."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from e2miseg.losses import (DeepSupervisionLoss, EHANetLoss, ScaleSensitiveLoss,
                            WeightAdaptiveLoss, edge_targets, hard_dice_per_class, lovasz_softmax,
                            scale_sensitive_dice)
from e2miseg.models.ehanet import EHANetOutput

S = 1e-5  # SS smoothing


def fg_probs(p_fg: list[float]) -> torch.Tensor:
    """(1, 2, N) probabilities from foreground probabilities."""
    p = torch.tensor(p_fg)
    return torch.stack((1 - p, p))[None]


def onehot(labels: list[int], k: int = 2) -> torch.Tensor:
    return F.one_hot(torch.tensor(labels), k).T[None].float()


# ----------------------------------------------------------------------------- SS loss

def test_ss_hand_worked_volume_mismatch():
    # TP=1, FP=1, FN=0 -> P=2, G=1, Delta=0.25, alpha=1.25/2.25, DSC=2/3
    ss = scale_sensitive_dice(fg_probs([1, 1, 0, 0]), onehot([1, 0, 0, 0]))
    alpha = (1 + 0.25 + S) / (2 + 0.25 + S)
    dsc = (2 + S) / (3 + S + 1e-8)
    assert ss.item() == pytest.approx(-alpha * dsc, rel=1e-6)
    assert ss.item() == pytest.approx(-(5 / 9) * (2 / 3), rel=1e-4)


def test_ss_equals_negated_soft_dice_when_volumes_match():
    from monai.losses import DiceLoss

    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(2, 6, 6, generator=g) > 0.6).long()
    n1, n0 = int(labels.sum()), labels.numel() - int(labels.sum())
    a = 0.7  # prob on true foreground; background prob chosen so that soft P == G
    p_fg = torch.where(labels == 1, torch.tensor(a), torch.tensor((1 - a) * n1 / n0))
    probs = torch.stack((1 - p_fg, p_fg), 1)
    target = F.one_hot(labels, 2).movedim(-1, 1).float()
    ss = scale_sensitive_dice(probs, target)
    soft_dice = 1 - DiceLoss(include_background=False, batch=True, smooth_nr=S, smooth_dr=S)(
        probs, target)
    assert ss.item() == pytest.approx(-soft_dice.item(), abs=1e-6)
    assert ss.item() == pytest.approx(-a, abs=1e-4)  # TP = a*n1, P = G = n1 -> DSC = a


def test_ss_loss_uniform_logits_hand_worked():
    logits = torch.zeros(1, 2, 4)
    target = torch.tensor([[1, 0, 0, 0]])
    # CE = ln 2; TP=.5 FP=1.5 FN=.5 -> alpha = 5/9, DSC = 1/3
    expected = math.log(2) + 1.45 * -((1.25 + S) / (2.25 + S)) * ((1 + S) / (3 + S + 1e-8))
    assert ScaleSensitiveLoss()(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_ss_loss_perfect_prediction():
    target = torch.randint(0, 4, (2, 3, 5, 5))
    logits = 50.0 * F.one_hot(target, 4).movedim(-1, 1).float()
    assert ScaleSensitiveLoss()(logits, target).item() == pytest.approx(-1.45, abs=1e-4)
    assert ScaleSensitiveLoss(w_ss=2.0)(logits, target[:, None]).item() == pytest.approx(-2.0, abs=1e-4)


# ----------------------------------------------------------------------------- deep supervision

def test_deep_supervision_weights_and_nearest_targets():
    seen = []

    def record(out, target):
        seen.append(target)
        return target.float().mean() + 0 * out.sum()

    target = torch.arange(16).view(1, 4, 4) % 3
    outputs = [torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 1, 1)]
    loss = DeepSupervisionLoss(record)(outputs, target)
    assert DeepSupervisionLoss(record).output_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert torch.equal(seen[1], target[:, ::2, ::2]) and torch.equal(seen[2], target[:, :1, :1])
    expected = sum(w * t.float().mean() for w, t in zip([4 / 7, 2 / 7, 1 / 7], seen))
    assert loss.item() == pytest.approx(expected.item())


def test_deep_supervision_passes_single_tensor_through():
    logits, target = torch.zeros(1, 2, 4), torch.tensor([[1, 0, 0, 0]])
    ds = DeepSupervisionLoss(ScaleSensitiveLoss())
    assert ds(logits, target).item() == pytest.approx(ScaleSensitiveLoss()(logits, target).item())


# ----------------------------------------------------------------------------- EHANet

def square_mask(size: int = 12, lo: int = 3, hi: int = 9) -> torch.Tensor:
    mask = torch.zeros(1, size, size, dtype=torch.long)
    mask[:, lo:hi, lo:hi] = 1
    return mask


@pytest.mark.parametrize("width,count", [(1, 36 - 16), (2, 64 - 16), (3, 64 - 4), (4, 100 - 4)])
def test_edge_target_width_on_square(width, count):
    edges = edge_targets(square_mask(), num_classes=2, width=width)
    assert edges.dtype == torch.long and int(edges.sum()) == count


def test_edge_target_width_two_is_the_ring_around_the_boundary():
    ring = torch.zeros(1, 12, 12, dtype=torch.long)
    ring[:, 2:10, 2:10] = 1
    ring[:, 4:8, 4:8] = 0
    assert torch.equal(edge_targets(square_mask(), 2, width=2), ring)


def test_edge_target_multiclass_and_border_and_3d():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 2  # a class touching the image border: only its inner side is an edge
    edges = edge_targets(labels, 3, width=1)
    assert edges[0, :, 4].tolist() == [1] * 8 and int(edges.sum()) == 8
    vol = torch.zeros(1, 6, 6, 6, dtype=torch.long)
    vol[:, 1:5, 1:5, 1:5] = 1
    assert int(edge_targets(vol, 2, width=1).sum()) == 64 - 8


def test_lovasz_softmax_hand_worked():
    # p(class 1) = [0.8, 0.4], labels [1, 0]: class 0 -> 0.4, class 1 -> 0.3 (worked by hand)
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4]]).T[None]  # (1, 2, 2)
    assert lovasz_softmax(probs, torch.tensor([[1, 0]])).item() == pytest.approx(0.35)


def test_lovasz_softmax_of_hard_probs_is_one_minus_iou():
    labels = torch.tensor([[1, 1, 1, 0, 0, 0]])
    pred = torch.tensor([[1, 1, 0, 1, 0, 0]])
    probs = F.one_hot(pred, 2).movedim(-1, 1).float()
    iou_fg, iou_bg = 2 / 4, 2 / 4
    assert lovasz_softmax(probs, labels).item() == pytest.approx(1 - (iou_fg + iou_bg) / 2)
    assert lovasz_softmax(F.one_hot(labels, 2).movedim(-1, 1).float(), labels).item() == 0.0
    # only classes present in the labels count
    assert lovasz_softmax(probs, torch.zeros_like(labels)).item() == pytest.approx(1 - 3 / 6)


def fake_ehanet_output(main: torch.Tensor, labels: torch.Tensor, width: int = 2) -> EHANetOutput:
    k = max(2, main.shape[1])
    edge = F.one_hot(edge_targets(labels, k, width), 2).movedim(-1, 1).float()  # perfect edges
    return EHANetOutput(main, (main, main, main, main), edge)


def test_ehanet_loss_perfect_prediction_is_zero():
    labels = square_mask(16, 4, 12)
    main = 40.0 * (2 * labels[:, None].float() - 1)
    assert EHANetLoss()(fake_ehanet_output(main, labels), labels).item() == pytest.approx(0, abs=1e-6)


def test_ehanet_loss_uniform_logits_hand_worked():
    labels = square_mask(16, 4, 12)  # 64 of 256 pixels foreground
    main = torch.zeros(1, 1, 16, 16)
    dice = 1 - (2 * 0.5 * 64 + 1) / (0.5 * 256 + 64 + 1)
    expected = 5 * (0.5 * math.log(2) + 0.5 * dice)  # edges are perfect -> Lovász 0
    assert EHANetLoss()(fake_ehanet_output(main, labels), labels).item() == pytest.approx(expected, rel=1e-5)


def test_ehanet_loss_multiclass_and_eval_output_rejected():
    labels = torch.randint(0, 3, (2, 16, 16))
    main = torch.zeros(2, 3, 16, 16, requires_grad=True)
    loss = EHANetLoss()(fake_ehanet_output(main, labels), labels)
    dice = 1 - sum((2 * (labels == c).sum() / 3 + 1) / ((labels == c).sum() + 512 / 3 + 1)
                   for c in (1, 2)) / 2
    assert loss.item() == pytest.approx(5 * (0.5 * math.log(3) + 0.5 * dice.item()), rel=1e-5)
    loss.backward()
    assert main.grad is not None
    with pytest.raises(TypeError, match="train-mode output"):
        EHANetLoss()(main, labels)


# ----------------------------------------------------------------------------- weight-adaptive

def test_weight_adaptive_weights_are_one_minus_dice():
    labels = torch.tensor([[0, 0, 1, 2]])
    pred = torch.tensor([[0, 1, 1, 1]])
    logits = 5.0 * F.one_hot(pred, 4).movedim(-1, 1).float()  # K=4: class 3 absent everywhere
    # dice: c0 2*1/(1+2), c1 2*1/(3+1), c2 0 (missed), c3 0 (absent in both -> weight 1)
    dice = torch.tensor([2 / 3, 1 / 2, 0.0, 0.0])
    torch.testing.assert_close(hard_dice_per_class(logits, labels), dice)
    loss_fn = WeightAdaptiveLoss()
    loss = loss_fn(logits, labels)
    torch.testing.assert_close(loss_fn.last_weights, 1 - dice)
    w = (1 - dice)[labels[0]]
    nll = -logits[0].log_softmax(0)[labels[0], torch.arange(4)]
    expected = (w * nll).sum() / w.sum() + (1 - dice).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_weight_adaptive_dice_is_averaged_over_images_and_ema():
    labels = torch.tensor([[0, 1], [0, 0]])
    logits = 5.0 * F.one_hot(torch.tensor([[0, 1], [0, 1]]), 2).movedim(-1, 1).float()
    # image 1 perfect (1, 1); image 2: c0 2/3, c1 0
    expected = torch.tensor([(1 + 2 / 3) / 2, 0.5])
    torch.testing.assert_close(hard_dice_per_class(logits, labels), expected)
    ema = WeightAdaptiveLoss(mode="ema", momentum=0.9)
    ema(logits, labels)
    torch.testing.assert_close(ema.last_weights, 1 - expected)
    perfect = 5.0 * F.one_hot(labels, 2).movedim(-1, 1).float()
    ema(perfect, labels)
    second = torch.tensor([1.0, 0.5])  # class 1 absent from image 2 in both -> Dice 0 there
    torch.testing.assert_close(ema.last_weights, 1 - (0.9 * expected + 0.1 * second))


def test_weight_adaptive_perfect_batch_is_finite_and_gradient_only_from_ce():
    labels = torch.tensor([[0, 1, 1, 0]])
    logits = (5.0 * F.one_hot(labels, 2).movedim(-1, 1).float()).requires_grad_()
    loss = WeightAdaptiveLoss()(logits, labels)
    assert torch.isfinite(loss)
    loss.backward()
    ce_grad = torch.autograd.grad(F.cross_entropy(logits, labels), logits)[0]
    torch.testing.assert_close(logits.grad, ce_grad)  # equal weights -> plain CE gradient


def learned_threshold(weighting: str, steps: int = 300) -> float:
    """Fit one free logit per ambiguity level q (the share of that level's voxels labelled foreground,
    beside many clear background voxels, as around a left atrium) and return the smallest q that
    ends up called foreground: the decision threshold the loss teaches."""
    torch.manual_seed(0)
    levels = torch.linspace(0.025, 0.975, 20)
    labels, level_of = [torch.zeros(40000, dtype=torch.long)], [torch.zeros(40000, dtype=torch.long)]
    for index, q in enumerate(levels, start=1):
        count = 200
        labels.append((torch.arange(count) < int(round(float(q) * count))).long())
        level_of.append(torch.full((count,), index))
    labels, level_of = torch.cat(labels)[None], torch.cat(level_of)
    foreground_logit = torch.zeros(len(levels) + 1, requires_grad=True)
    optimizer = torch.optim.Adam([foreground_logit], lr=0.05)
    loss_fn = WeightAdaptiveLoss(weighting=weighting)
    for _ in range(steps):
        fg = foreground_logit[level_of][None]
        logits = torch.stack((torch.zeros_like(fg), fg), dim=1)  # (1, 2, N)
        optimizer.zero_grad()
        loss_fn(logits, labels).backward()
        optimizer.step()
    called = (foreground_logit[1:] > 0).nonzero()
    return float(levels[called.min()]) if len(called) else 1.0


def test_background_weighted_by_its_own_dice_teaches_over_segmentation():
    """Issue 25's left-atrium model marked 1.5x the atrium's volume: with w_c = 1 - DSC_c for every
    class, background (always segmented best) gets the smallest weight, and voxels that are foreground
    only 10-30 % of the time are called foreground. Rebalancing the foreground classes only (or plain CE)
    puts the threshold back at one half."""
    assert learned_threshold("adaptive") < 0.2
    assert 0.4 <= learned_threshold("adaptive-foreground") <= 0.6
    assert 0.4 <= learned_threshold("none") <= 0.6


def test_adaptive_foreground_weights_rebalance_only_the_foreground_classes():
    loss = WeightAdaptiveLoss(weighting="adaptive-foreground")
    weights = loss.class_weights(torch.tensor([0.02, 0.1, 0.5, 0.3]))
    torch.testing.assert_close(weights, torch.tensor([0.3, 0.1, 0.5, 0.3]))
    assert torch.equal(WeightAdaptiveLoss(weighting="none").class_weights(torch.tensor([0.02, 0.4])), torch.ones(2))
    with pytest.raises(ValueError, match="weighting"):
        WeightAdaptiveLoss(weighting="inverse")


def test_soft_dice_term_adds_a_gradient_the_hard_dice_term_lacks():
    logits = torch.zeros(2, 2, 8, 8, requires_grad=True)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:5, 2:5] = 1
    plain = WeightAdaptiveLoss(weighting="none")(logits, labels)
    with_dice = WeightAdaptiveLoss(weighting="none", dice_weight=1.0)(logits, labels)
    assert with_dice > plain
    (grad_plain,) = torch.autograd.grad(plain, logits)
    (grad_dice,) = torch.autograd.grad(with_dice, logits)
    assert not torch.allclose(grad_plain, grad_dice)


def test_fit_passes_loss_config_to_the_networks_own_loss_and_refuses_what_does_not_fit():
    from e2miseg.errors import E2MISegError
    from e2miseg.models import build_model
    from e2miseg_train.trainer import make_loss

    s2anet = build_model("s2anet", in_channels=1, slices=3, num_classes=2, width_scale=8)
    loss = make_loss(s2anet, "architecture", {"weighting": "adaptive-foreground", "dice_weight": 1.0})
    assert loss.weighting == "adaptive-foreground" and loss.dice_weight == 1.0
    assert make_loss(s2anet, "architecture").weighting == "adaptive"  # the spec's default stays the default
    with pytest.raises(E2MISegError, match="--loss-config"):
        make_loss(s2anet, "architecture", {"weighting": "inverse"})
    with pytest.raises(E2MISegError, match="--loss-config"):
        make_loss(s2anet, "architecture", {"gamma": 2})
