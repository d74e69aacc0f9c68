"""The out-of-memory ladder, driven by a network that fails on purpose.

No GPU is needed: ``OomOnce`` raises ``torch.OutOfMemoryError`` (what CUDA raises) for its first N
calls, or for every call on a device that stands in for a GPU, and the tests check each rung, the
warning it shows, and that the final probabilities equal an unconstrained run.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from e2miseg.card import validate_card
from e2miseg.errors import Cancelled, ResourceError
from e2miseg.fallback import MemoryFallbackWarning, is_out_of_memory
from e2miseg.inference import InferenceOptions, Predictor
from e2miseg.progress import Reporter
from helpers import make_card, pointwise_net


@pytest.fixture(autouse=True)
def torch_runtime(monkeypatch):
    # these tests drive PyTorch modules directly (injected failures, pointwise nets); an OpenVINO
    # conversion per example would only add minutes
    monkeypatch.setenv("E2MISEG_RUNTIME", "torch")


class OomWrapper(torch.nn.Module):
    """Raise an out-of-memory error for the first ``fail_calls`` calls, and for any batch larger than
    ``max_batch`` or living on ``fail_device``; record the batch sizes and devices it saw."""

    kind = "3d"
    num_classes = 3

    def __init__(self, fail_calls: int = 0, max_batch: int = 1 << 30, fail_device: str | None = None,
                 error: type[BaseException] = torch.OutOfMemoryError):
        super().__init__()
        self.inner = pointwise_net(hidden=4)
        self.fail_calls, self.max_batch, self.fail_device, self.error = fail_calls, max_batch, fail_device, error
        self.seen: list[tuple[int, str]] = []

    def forward(self, x):
        self.seen.append((x.shape[0], x.device.type))
        if self.fail_calls > 0:
            self.fail_calls -= 1
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if x.shape[0] > self.max_batch or x.device.type == self.fail_device:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.inner(x)


VOLUME = np.random.default_rng(0).normal(size=(1, 20, 24, 28)).astype(np.float32)


def card(batch_size: int = 4) -> dict:
    return validate_card(make_card(patch=(8, 8, 8), step=0.5, batch_size=batch_size))


def reference() -> np.ndarray:
    return Predictor(pointwise_net(hidden=4), card(), InferenceOptions(device="cpu")).predict(VOLUME)


def run(model, batch_size=4, setup=None):
    predictor = Predictor(model, card(batch_size), InferenceOptions(device="cpu"))
    if setup:
        setup(predictor)
    events = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predictor.predict(VOLUME, Reporter(events.append))
    messages = [str(w.message) for w in caught if issubclass(w.category, MemoryFallbackWarning)]
    return predictor, result, messages, [e.message for e in events if e.message]


def test_smaller_batch_after_an_out_of_memory_error(caplog):
    model = OomWrapper(max_batch=1)
    with caplog.at_level(logging.WARNING, logger="e2miseg"):
        predictor, result, messages, progress = run(model, batch_size=4)
    assert predictor.batch_size == 1
    assert [m.split("; ")[-1] for m in messages] == ["retrying with batch size 2", "retrying with batch size 1"]
    assert messages == progress  # the same words reach the progress callback (CLI JSON, Slicer log)
    assert messages[0] in caplog.text
    assert messages[0].startswith("CPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB (injected))")
    np.testing.assert_allclose(result, reference(), atol=1e-5)
    assert {b for b, _ in model.seen[-3:]} == {1}


def test_full_ladder_ends_on_the_cpu():
    """A stand-in GPU: tensors on the 'meta' device fail like a full GPU; the CPU works."""
    model = OomWrapper(fail_device="meta")

    def pretend_gpu(predictor):
        predictor.device = torch.device("meta")  # the model stays on the CPU; only its inputs go to 'meta'
        predictor.stitch_on_device = True

    predictor, result, messages, _ = run(model, batch_size=2, setup=pretend_gpu)
    rungs = [m.split("; ")[-1] for m in messages]
    assert rungs == ["retrying with batch size 1", "retrying with the tiles stitched in CPU memory", "retrying on the CPU (much slower)"]
    assert all(m.startswith("META ran out of memory") for m in messages)
    assert predictor.device.type == "cpu" and not predictor.stitch_on_device
    np.testing.assert_allclose(result, reference(), atol=1e-5)


def test_float16_gpu_run_falls_back_to_fp32_on_the_cpu():
    """--precision f16 is a GPU precision: the last rung (the CPU) must not refuse it, it runs fp32."""
    model = OomWrapper(fail_device="meta")

    def pretend_f16_gpu(predictor):
        predictor.device = torch.device("meta")
        predictor.options.precision = "f16"

    predictor, result, messages, _ = run(model, batch_size=1, setup=pretend_f16_gpu)
    assert messages[-1].endswith("retrying on the CPU (much slower)")
    assert predictor.device.type == "cpu" and getattr(predictor.forward, "precision", "f32") == "f32"
    np.testing.assert_allclose(result, reference(), atol=1e-5)


def test_gpu_stitching_gives_the_same_probabilities():
    # stitching in device memory is the CUDA default; on the CPU it exercises the same code path
    _, on_device, messages, _ = run(pointwise_net(hidden=4), setup=lambda p: setattr(p, "stitch_on_device", True))
    assert messages == []
    np.testing.assert_allclose(on_device, reference(), atol=1e-6)


def test_out_of_memory_on_the_last_rung_is_a_resource_error():
    with pytest.raises(ResourceError, match="ran out of memory even with batch size 1 on the CPU; crop the volume"):
        run(OomWrapper(fail_calls=10**6), batch_size=4)


@pytest.mark.parametrize("error", [MemoryError, RuntimeError])
def test_host_memory_errors_take_the_ladder_too(error):
    # the CPU allocator raises RuntimeError("... DefaultCPUAllocator: can't allocate memory ...")
    class CpuAllocator(OomWrapper):
        def forward(self, x):
            if self.fail_calls > 0:
                self.fail_calls -= 1
                raise error("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
            return self.inner(x)

    _, result, messages, _ = run(CpuAllocator(fail_calls=1), batch_size=2)
    assert len(messages) == 1 and "retrying with batch size 1" in messages[0]
    np.testing.assert_allclose(result, reference(), atol=1e-5)


def test_other_errors_and_cancel_pass_through():
    class Broken(OomWrapper):
        def forward(self, x):
            raise ValueError("shape mismatch inside the network")

    with pytest.raises(ValueError, match="shape mismatch"):
        run(Broken())
    predictor = Predictor(OomWrapper(), card(), InferenceOptions(device="cpu"))

    class Set:
        def is_set(self):
            return True

    with pytest.raises(Cancelled):
        predictor.predict(VOLUME, Reporter(None, Set()))
    assert not is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x")) and is_out_of_memory(RuntimeError("MPS backend out of memory"))
