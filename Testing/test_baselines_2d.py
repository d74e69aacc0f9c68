"""The DynUNet anchor for slice-wise plans: the same inputs the engine gives EHANet / S²aNet."""
from __future__ import annotations

import pytest
import torch

from e2miseg.card import validate_card
from e2miseg.inference import InferenceOptions, Predictor
from e2miseg_train.baselines import baseline_plan, build_network
from e2miseg_train.trainer import prefers_channels_last, training_precision
from helpers import make_card


def slice_wise_plan(kind: str, slices: int, channels: int) -> dict:
    card = make_card(kind, arch="ehanet", patch=(32, 32), channels=channels, slices=slices, slice_axis="z",
                     config={"in_channels": channels, "num_classes": 3})
    return {"card": card, "arch": "ehanet"}


@pytest.mark.parametrize("kind,slices,channels", [("2d", 1, 1), ("2.5d", 5, 1), ("2.5d", 3, 2)])
def test_slice_wise_plans_get_a_2d_dynunet_fed_like_the_engine_feeds_slice_networks(kind, slices, channels):
    plan = baseline_plan(slice_wise_plan(kind, slices, channels), filters=[8, 16, 32])
    config = plan["card"]["architecture"]["config"]
    assert config["spatial_dims"] == 2 and config["in_channels"] == channels * slices
    net = build_network("monai-dynunet", config)
    assert net.kind == "2d" and net.size_divisor == 4
    net.train()
    outputs = net(torch.zeros(2, channels * slices, 32, 32))
    assert isinstance(outputs, list) and outputs[0].shape == (2, 3, 32, 32)
    net.eval()
    card = validate_card(plan["card"])
    volume = torch.randn(channels, 4, 20, 28).numpy()
    probabilities = Predictor(net, card, InferenceOptions(device="cpu", runtime="torch")).predict(volume)
    assert probabilities.shape == (3, 4, 20, 28)


def test_3d_plans_keep_the_3d_dynunet():
    card = make_card("3d", patch=(16, 16, 16), config={"in_channels": 1, "num_classes": 3})
    config = baseline_plan({"card": card, "arch": "e2miseg"})["card"]["architecture"]["config"]
    net = build_network("monai-dynunet", config)
    assert config["spatial_dims"] == 3 and net.kind == "3d" and net.size_divisor == 8 and not net.prefers_bf16


def test_training_precision_and_memory_format_follow_the_network_and_device(monkeypatch):
    import e2miseg.runtime as runtime

    two_d = build_network("monai-dynunet", {"in_channels": 1, "num_classes": 2, "filters": [8, 16, 32], "spatial_dims": 2})
    three_d = build_network("monai-dynunet", {"in_channels": 1, "num_classes": 2, "filters": [8, 16, 32]})
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "_NATIVE_BF16", True)
    assert training_precision(two_d, cpu, amp=True) == torch.bfloat16
    assert training_precision(two_d, cpu, amp=False) is None
    assert training_precision(three_d, cpu, amp=True) is None  # does not prefer bf16
    assert training_precision(three_d, torch.device("cuda"), amp=True) == torch.float16
    monkeypatch.setattr(runtime, "_NATIVE_BF16", False)  # emulated bf16 is slower than float32: stay in float32
    assert training_precision(two_d, cpu, amp=True) is None
    assert prefers_channels_last(two_d, cpu) and not prefers_channels_last(three_d, cpu)


def test_3d_engine_networks_keep_float32_training_on_the_cpu(monkeypatch):
    import e2miseg.runtime as runtime
    from e2miseg.models import build_model
    from helpers import small_e2miseg_config

    monkeypatch.setattr(runtime, "_NATIVE_BF16", True)
    e2miseg_net = build_model("e2miseg", **small_e2miseg_config())
    assert e2miseg_net.prefers_bf16  # at inference
    assert training_precision(e2miseg_net, torch.device("cpu"), amp=True) is None
