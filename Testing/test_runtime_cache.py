"""The compiled OpenVINO network is kept per process: compiled once, shared safely across threads."""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import require_module
import torch

from e2miseg import runtime
from e2miseg.runtime import make_forward

require_module("openvino", "the CPU runtime falls back to PyTorch without it")


def small_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)).eval()


def test_second_predictor_reuses_the_compiled_network_and_threads_share_it(tmp_path, monkeypatch):
    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    compiles = []
    original = runtime.OpenVinoForward._compile
    monkeypatch.setattr(runtime.OpenVinoForward, "_compile",
                        lambda self, shape, streams: compiles.append((shape, streams)) or original(self, shape, streams))
    streams = torch.get_num_threads()  # one window per request, one single-threaded stream per thread
    net = small_net(0)
    batch = torch.randn(2, 1, 8, 8, 8)
    with torch.inference_mode():
        expected = net(batch)
    first = make_forward(net, torch.device("cpu"), "openvino")
    torch.testing.assert_close(first(batch), expected, atol=1e-4, rtol=1e-4)
    second = make_forward(net, torch.device("cpu"), "openvino")
    torch.testing.assert_close(second(batch), expected, atol=1e-4, rtol=1e-4)
    assert compiles == [((1, 1, 8, 8, 8), streams)]  # the second predictor found it compiled
    assert first.compile_seconds > 0

    inputs = [batch * (i + 1) for i in range(6)]
    with torch.inference_mode():
        wanted = [net(x) for x in inputs]
    forwards = [make_forward(net, torch.device("cpu"), "openvino") for _ in range(3)]

    def two_calls(index: int) -> list[torch.Tensor]:  # one predictor per thread, as in a Slicer session
        return [forwards[index](inputs[index]), forwards[index](inputs[index + 3])]

    with warnings.catch_warnings(), ThreadPoolExecutor(3) as pool:
        warnings.simplefilter("error")  # a fallback to PyTorch would hide a sharing problem
        calls = list(pool.map(two_calls, range(3)))
    got = [calls[i][0] for i in range(3)] + [calls[i][1] for i in range(3)]
    for result, target in zip(got, wanted):
        torch.testing.assert_close(result, target, atol=1e-4, rtol=1e-4)
    assert len(compiles) == 1

    other = small_net(1)  # other weights: their own compilation
    make_forward(other, torch.device("cpu"), "openvino")(batch)
    assert len(compiles) == 2


def test_batches_spread_over_streams_come_back_in_order_from_one_compilation(tmp_path, monkeypatch):
    """Any batch size (odd, one, larger than the stream count) returns the whole batch in order, and
    every size is served by the same compiled one-window model (no recompiling for a partial batch)."""
    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    compiles = []
    original = runtime.OpenVinoForward._compile
    monkeypatch.setattr(runtime.OpenVinoForward, "_compile",
                        lambda self, shape, streams: compiles.append((shape, streams)) or original(self, shape, streams))
    net = small_net(2)
    forward = runtime.OpenVinoForward(net, threads=2)
    for size in (3, 2, 1, 5):
        batch = torch.randn(size, 1, 8, 8, 8) * torch.arange(1, size + 1).view(-1, 1, 1, 1, 1)  # distinct windows
        with torch.inference_mode():
            expected = net(batch)
        torch.testing.assert_close(forward(batch), expected, atol=1e-4, rtol=1e-4)
    assert compiles == [((1, 1, 8, 8, 8), 2)]
