"""TorchScript export gives the same eval output as the eager model."""
from __future__ import annotations

import pytest
import torch

from e2miseg.export import (export_program, export_torchscript, load_torchscript,
                            save_torchscript)
from e2miseg.models import build_model

CASES = {
    "e2miseg": (dict(patch_size=(8, 32, 32), in_channels=1, num_classes=3, stem_kernel=(1, 2, 2),
                     dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), proj_sizes=(8, 8, 8, 4),
                     num_heads=2, feature_size=8), (1, 1, 8, 32, 32)),
    "ehanet": (dict(in_channels=1, num_classes=2, binary=True), (1, 1, 64, 64)),
    "s2anet": (dict(in_channels=1, slices=3, num_classes=4, width_scale=8), (1, 3, 32, 32)),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", sorted(CASES))
def test_traced_equals_eager(name, tmp_path):
    config, shape = CASES[name]
    torch.manual_seed(0)
    model = build_model(name, **config)
    example = torch.randn(shape)
    traced = export_torchscript(model, example)
    x = torch.randn(shape)  # a different input than the one traced with
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(traced(x), expected, atol=1e-5, rtol=0)
        if name == "s2anet":  # file round trip once (cheapest model)
            loaded = load_torchscript(save_torchscript(traced, tmp_path / "model.pt"))
            torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=0)


def test_traced_2d_models_accept_other_sizes():
    config, shape = CASES["s2anet"]
    model = build_model("s2anet", **config)
    traced = export_torchscript(model, torch.randn(shape))
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), atol=1e-5, rtol=0)


def test_torch_export_program_equals_eager():
    config, shape = CASES["s2anet"]
    model = build_model("s2anet", **config)
    program = export_program(model, torch.randn(shape))
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=0)
