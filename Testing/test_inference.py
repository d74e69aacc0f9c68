"""The predictor: tiled prediction equals whole-volume prediction, slice order, TTA, cancel."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from e2miseg.card import validate_card
from e2miseg.errors import Cancelled
from e2miseg.inference import InferenceOptions, Predictor, mirror_combinations, resolve_device
from e2miseg.progress import Reporter
from helpers import make_card, pointwise_net


def test_tiled_prediction_equals_whole_volume():
    net = pointwise_net()
    volume = np.random.default_rng(1).normal(size=(1, 23, 37, 30)).astype(np.float32)
    card = validate_card(make_card(patch=(8, 16, 16), step=0.5, batch_size=3))
    tiled = Predictor(net, card, InferenceOptions(device="cpu")).predict(volume)
    with torch.inference_mode():
        whole = torch.softmax(net(torch.from_numpy(volume)[None]), 1)[0].numpy()
    assert tiled.shape == whole.shape
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)


def test_volume_smaller_than_patch_is_padded_and_cropped_back():
    net = pointwise_net()
    volume = np.random.default_rng(2).normal(size=(1, 5, 9, 7)).astype(np.float32)
    card = validate_card(make_card(patch=(8, 16, 16)))
    probs = Predictor(net, card, InferenceOptions(device="cpu")).predict(volume)
    with torch.inference_mode():
        whole = torch.softmax(net(torch.from_numpy(volume)[None]), 1)[0].numpy()
    np.testing.assert_allclose(probs, whole, atol=1e-5)


class SliceProbe(torch.nn.Module):
    """Predicts class 1 where the k-slice stack's centre slice is brighter than its neighbours' mean.

    The output depends on the order and centring of the stack, so a wrong slice order shows up.
    """

    num_classes = 2
    size_divisor = 4

    def __init__(self, slices: int):
        super().__init__()
        self.slices = slices

    def forward(self, x):
        centre = x[:, self.slices // 2]
        score = centre * 10.0 if self.slices == 1 else (centre - x.mean(1)) * 10.0
        return torch.stack([torch.zeros_like(score), score], 1)


@pytest.mark.parametrize("kind,slices,axis", [("2d", 1, "z"), ("2.5d", 3, "z"), ("2.5d", 5, "y"), ("2.5d", 3, "x")])
def test_slice_wise_order_and_axis(kind, slices, axis):
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(1, 9, 10, 11)).astype(np.float32)
    card = validate_card(make_card(kind, patch=None, slices=slices, slice_axis=axis))
    probs = Predictor(SliceProbe(slices), card, InferenceOptions(device="cpu")).predict(volume)
    assert probs.shape == (2,) + volume.shape[1:]
    ax = {"z": 0, "y": 1, "x": 2}[axis]
    v = np.moveaxis(volume[0], ax, 0)
    expected = np.empty_like(v)
    for i in range(v.shape[0]):
        idx = [min(max(i + o, 0), v.shape[0] - 1) for o in range(-(slices // 2), slices // 2 + 1)]
        stack = v[idx]
        expected[i] = stack[slices // 2] * 10 if slices == 1 else (stack[slices // 2] - stack.mean(0)) * 10
    expected = 1 / (1 + np.exp(-np.moveaxis(expected, 0, ax)))
    np.testing.assert_allclose(probs[1], expected, atol=1e-5)


def test_slice_stacks_of_several_channels_are_channel_major():
    """A 2.5D batch row holds the k neighbours of channel 0, then those of channel 1 (edges replicated)."""
    seen = []

    class Recorder(torch.nn.Module):
        num_classes = 2

        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros((x.shape[0], 2) + tuple(x.shape[2:]))

    slices, count = 3, 5
    volume = np.zeros((2, count, 4, 4), np.float32)
    for channel in range(2):
        for index in range(count):
            volume[channel, index] = 100 * channel + index
    card = make_card("2.5d", patch=None, slices=slices, slice_axis="z", batch_size=1, channels=2)
    Predictor(Recorder(), validate_card(card), InferenceOptions(device="cpu", runtime="torch")).predict(volume)
    rows = torch.cat(seen)[:, :, 0, 0].numpy()
    expected = [[100 * c + min(max(i + o, 0), count - 1) for c in range(2) for o in (-1, 0, 1)] for i in range(count)]
    np.testing.assert_array_equal(rows, expected)


def test_class_argmax_matches_numpy_including_ties():
    from e2miseg.postprocess import class_argmax

    rng = np.random.default_rng(6)
    for classes in (1, 2, 3, 5):
        values = rng.integers(0, 3, size=(classes, 4, 5, 6)).astype(np.float32)  # many ties
        labels = class_argmax(torch.from_numpy(values))
        assert labels.dtype == torch.uint8
        np.testing.assert_array_equal(labels.numpy(), np.argmax(values, axis=0))


def test_mirror_tta_of_a_symmetric_net_changes_nothing():
    net = pointwise_net()
    volume = np.random.default_rng(4).normal(size=(1, 8, 16, 16)).astype(np.float32)
    card = validate_card(make_card(patch=(8, 16, 16)))
    plain = Predictor(net, card, InferenceOptions(device="cpu")).predict(volume)
    tta = Predictor(net, card, InferenceOptions(device="cpu", tta=True)).predict(volume)
    np.testing.assert_allclose(plain, tta, atol=1e-5)
    assert len(mirror_combinations([2, 3, 4])) == 8


def test_cancel_stops_between_tiles_and_progress_counts_tiles():
    net = pointwise_net()
    volume = np.zeros((1, 32, 32, 32), dtype=np.float32)
    card = validate_card(make_card(patch=(8, 8, 8), batch_size=1))
    events, cancel = [], threading.Event()

    def on_progress(event):
        events.append(event)
        if event.stage == "infer" and event.done == 3:
            cancel.set()

    with pytest.raises(Cancelled):
        Predictor(net, card, InferenceOptions(device="cpu")).predict(volume, Reporter(on_progress, cancel))
    infer = [e for e in events if e.stage == "infer"]
    assert infer[-1].done == 3 and infer[-1].total == 7 ** 3
    assert infer[-1].eta_s is not None and infer[-1].eta_s >= 0


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="CUDA"):
            resolve_device("cuda")


def test_predictor_puts_the_model_in_eval_mode_without_moving_a_ready_one(monkeypatch):
    """A model left in training mode is switched to eval (dropout off); one already on the device in eval
    mode is not walked again with .to() on every prediction (a cohort or Slicer session reuses it)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.Dropout(0.9)).train()
    card = validate_card(make_card(kind="3d", patch=(4, 4, 4), batch_size=2, labels=[{"value": 1, "name": "a", "color": [1, 0, 0]}]))
    volume = np.random.default_rng(0).normal(size=(1, 6, 6, 6)).astype(np.float32)
    first = Predictor(net, card, InferenceOptions(device="cpu", runtime="torch")).predict(volume)
    assert not net.training and not any(m.training for m in net.modules())
    monkeypatch.setattr(net, "to", lambda *a, **k: (_ for _ in ()).throw(AssertionError("moved again")))
    again = Predictor(net, card, InferenceOptions(device="cpu", runtime="torch")).predict(volume)
    np.testing.assert_array_equal(first, again)  # deterministic: dropout is off
    net[1].train()  # a submodule alone back in training mode is still found (the check scans every submodule)
    third = Predictor(net, card, InferenceOptions(device="cpu", runtime="torch")).predict(volume)
    assert not net[1].training
    np.testing.assert_array_equal(first, third)
