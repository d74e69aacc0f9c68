"""Networks: registry contract, shapes, configs, paper parameter counts, gradients."""
from __future__ import annotations

import json

import pytest
import torch

from e2miseg.models import (PAPER_CONFIGS, PAPER_PARAM_COUNTS, available_models, build_loss_for,
                            build_model, build_preset, model_kind)
from e2miseg.models.blocks import count_parameters

# Small configurations: each forward/backward runs well under a second on one CPU thread.
SMALL = {
    "e2miseg": dict(patch_size=(8, 32, 32), in_channels=2, num_classes=3, stem_kernel=(1, 2, 2),
                    dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), proj_sizes=(8, 8, 8, 4),
                    num_heads=2, feature_size=8),
    "ehanet": dict(in_channels=1, num_classes=2, binary=True),
    "s2anet": dict(in_channels=2, slices=3, num_classes=4, width_scale=8),
}
INPUT_SHAPE = {"e2miseg": (2, 2, 8, 32, 32), "ehanet": (2, 1, 64, 64), "s2anet": (2, 6, 32, 32)}
E2MISEG_VARIANTS = {
    "acdc": {},
    "brats": dict(cnn_bn=False, n_refine=1, shared_token_proj="matrix", fuse="sum"),
    "mcl": dict(cnn_bn=False, n_refine=1, shared_token_proj="linear"),
    "original": dict(qk_source="linear"),
    "instance": dict(block_norm="instance"),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(name: str, **overrides):
    torch.manual_seed(0)
    return build_model(name, **{**SMALL[name], **overrides})


def test_registry_names_and_kinds():
    assert available_models() == ["e2miseg", "ehanet", "s2anet"]
    assert [model_kind(n) for n in ("e2miseg", "ehanet", "s2anet")] == ["3d", "2d", "2.5d"]


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="e2miseg, ehanet, s2anet"):
        build_model("unet")


def test_unknown_config_key_is_named():
    with pytest.raises(TypeError, match="'widht_scale'"):
        build_model("s2anet", widht_scale=2)


@pytest.mark.parametrize("name", ["e2miseg", "ehanet", "s2anet"])
def test_contract_attributes_and_config_round_trip(name):
    model = small_model(name)
    assert model.arch_name == name and model.kind == model_kind(name)
    assert model.in_channels == SMALL[name]["in_channels"]
    assert model.num_classes == SMALL[name]["num_classes"]
    rebuilt = build_model(name, **json.loads(json.dumps(model.config)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
           {k: v.shape for k, v in model.state_dict().items()}
    if name == "e2miseg":
        assert model.required_input_size == (8, 32, 32) and model.size_divisor == 1
    else:
        assert model.required_input_size is None
        assert model.size_divisor == {"ehanet": 32, "s2anet": 8}[name]
    if name == "s2anet":
        assert model.slices == 3


@pytest.mark.parametrize("name", ["e2miseg", "ehanet", "s2anet"])
def test_eval_output_is_one_logit_tensor(name):
    model = small_model(name).eval()
    x = torch.randn(INPUT_SHAPE[name])
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (x.shape[0], SMALL[name]["num_classes"], *x.shape[2:])


@pytest.mark.parametrize("variant", sorted(E2MISEG_VARIANTS))
def test_e2miseg_train_output_is_deep_supervision_list(variant):
    model = small_model("e2miseg", **E2MISEG_VARIANTS[variant]).train()
    ys = model(torch.randn(INPUT_SHAPE["e2miseg"]))
    assert [tuple(y.shape) for y in ys] == [(2, 3, 8, 32, 32), (2, 3, 8, 16, 16), (2, 3, 4, 8, 8)]


def test_e2miseg_rejects_other_patch_size():
    model = small_model("e2miseg").eval()
    with pytest.raises(ValueError, match=r"built for patch \(8, 32, 32\) but got \(8, 32, 48\); "
                                         r"use the sliding-window inferer"):
        model(torch.randn(1, 2, 8, 32, 48))
    with pytest.raises(ValueError, match="not divisible"):
        build_model("e2miseg", **{**SMALL["e2miseg"], "patch_size": (8, 32, 36)})


@pytest.mark.parametrize("binary", [True, False])
def test_ehanet_train_output(binary):
    k = 2 if binary else 4
    model = small_model("ehanet", num_classes=k, binary=binary).train()
    out = model(torch.randn(2, 1, 64, 64))
    channels = 1 if binary else k
    assert out.main.shape == (2, channels, 64, 64)
    assert len(out.sides) == 4 and all(s.shape == (2, channels, 64, 64) for s in out.sides)
    assert out.edge.shape == (2, 2, 64, 64)
    torch.testing.assert_close(out.edge.sum(1), torch.ones(2, 64, 64))


def test_ehanet_binary_eval_softmax_is_sigmoid():
    model = small_model("ehanet").eval()
    captured = []
    model.head.register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        probs = model(torch.randn(1, 1, 64, 64)).softmax(1)
    s = captured[0]  # the paper's single sigmoid logit
    assert s.shape == (1, 1, 64, 64) and probs.shape == (1, 2, 64, 64)
    torch.testing.assert_close(probs[:, 1:], torch.sigmoid(s), atol=1e-6, rtol=0)
    torch.testing.assert_close(probs[:, :1], 1 - torch.sigmoid(s), atol=1e-6, rtol=0)


def test_ehanet_binary_requires_two_classes():
    with pytest.raises(ValueError, match="binary=True needs num_classes=2"):
        build_model("ehanet", num_classes=3, binary=True)


def test_s2anet_reads_channel_major_slices_and_train_output():
    model = small_model("s2anet")
    seen = []
    original = model.encode
    model.encode = lambda x: (seen.append(x), original(x))[1]
    # channel c, slice s carries the value 10 * c + s
    x = torch.tensor([10.0 * c + s for c in range(2) for s in range(3)]).view(1, 6, 1, 1)
    x = x.expand(2, 6, 16, 16).contiguous()
    y = model.train()(x)
    assert y.shape == (2, 4, 16, 16)
    assert [t[0, :, 0, 0].tolist() for t in seen] == [[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]]
    with pytest.raises(ValueError, match="2 x 3 slices = 6 channels"):
        model(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("preset", sorted(PAPER_CONFIGS))
def test_paper_parameter_counts_within_one_percent(preset):
    with torch.device("meta"):
        model = build_preset(preset)
    n = count_parameters(model)
    assert abs(n - PAPER_PARAM_COUNTS[preset]) / PAPER_PARAM_COUNTS[preset] < 0.01, n


def test_ehanet_paper_counts_exact():
    with torch.device("meta"):
        model = build_preset("ehanet_paper", freeze_encoder=True)
    assert count_parameters(model) == 6_619_753
    assert count_parameters(model.encoder.cls_head) == 744_680
    assert count_parameters(model, trainable_only=True) == 1_041_121


def test_s2anet_variant_counts():
    expected = {("middle_slice", 3, 1): 23.18e6, ("all_slices", 5, 1): 28.63e6,
                ("all_slices", 7, 2): 8.14e6}
    for (mode, k, scale), n_ref in expected.items():
        with torch.device("meta"):
            n = count_parameters(build_model("s2anet", slices=k, num_classes=55, skip_mode=mode,
                                             width_scale=scale))
        assert abs(n - n_ref) / n_ref < 0.01


def test_e2miseg_instance_block_norm_is_per_sample_and_validated():
    """block_norm="instance" replaces every BatchNorm of the HFR blocks, so in train mode a
    sample's output no longer depends on the other samples of its batch (it does with "batch")."""
    x = torch.randn(INPUT_SHAPE["e2miseg"])
    outputs = {}
    for norm in ("batch", "instance"):
        model = small_model("e2miseg", block_norm=norm).train()
        model.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, torch.nn.modules.dropout._DropoutNd) else None)
        has_bn = any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
        assert has_bn == (norm == "batch")
        with torch.no_grad():
            together = model(x)[0][:1]
            alone = model(x[:1])[0]
        outputs[norm] = (together - alone).abs().max().item()
    assert outputs["instance"] < 1e-5 < outputs["batch"]
    with pytest.raises(ValueError, match="block_norm must be one of"):
        small_model("e2miseg", block_norm="layer")


def test_e2miseg_refine_dropout_switch():
    """refine_dropout=0 makes train-mode outputs deterministic (no channel dropout in the HFR refinement,
    attention dropout off too); the spec's 0.1 does not; the state-dict keys are the same either way."""
    x = torch.randn(INPUT_SHAPE["e2miseg"])
    spread = {}
    for rate in (0.1, 0.0):
        model = small_model("e2miseg", refine_dropout=rate, dropout=0.0, block_norm="instance").train()
        torch.manual_seed(1)
        with torch.no_grad():
            first, second = model(x)[0], model(x)[0]
        spread[rate] = (first - second).abs().max().item()
    assert spread[0.0] == 0.0 < spread[0.1]
    keys = {rate: set(small_model("e2miseg", refine_dropout=rate).state_dict()) for rate in (0.1, 0.0)}
    assert keys[0.1] == keys[0.0]
    with pytest.raises(ValueError, match="refine_dropout must be in"):
        small_model("e2miseg", refine_dropout=1.0)


def _targets(name: str, x: torch.Tensor) -> torch.Tensor:
    k = SMALL[name]["num_classes"]
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, k, (x.shape[0], *x.shape[2:]), generator=g)


@pytest.mark.parametrize("name,overrides", [
    ("e2miseg", {}), ("e2miseg", E2MISEG_VARIANTS["brats"]), ("e2miseg", E2MISEG_VARIANTS["mcl"]),
    ("e2miseg", E2MISEG_VARIANTS["instance"]),
    ("ehanet", {}), ("s2anet", {}),
])
def test_gradients_reach_every_trainable_parameter(name, overrides):
    model = small_model(name, **overrides).train()
    x = torch.randn(INPUT_SHAPE[name])
    loss = build_loss_for(model)(model(x), _targets(name, x))
    loss.backward()
    unused = ("encoder.cls_head.",)  # MobileViT's ImageNet head is never run
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None and not n.startswith(unused)]
    assert not missing, missing


def test_frozen_encoder_gets_no_gradient_but_decoder_does():
    model = small_model("ehanet", freeze_encoder=True).train()
    x = torch.randn(2, 1, 64, 64)
    build_loss_for(model)(model(x), _targets("ehanet", x)).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("encoder."))


def test_ehanet_loads_encoder_weights_and_freezes(tmp_path):
    from safetensors.torch import save_file

    donor = small_model("ehanet")
    state = {k: v for k, v in donor.encoder.state_dict().items() if not k.startswith("cls_head.")}
    save_file(state, str(tmp_path / "mobilevit_s.safetensors"))
    model = build_model("ehanet", encoder_weights=str(tmp_path / "mobilevit_s.safetensors"))
    assert not any(p.requires_grad for p in model.encoder.parameters())
    torch.testing.assert_close(model.encoder.conv_1[0].weight, donor.encoder.conv_1[0].weight)
    assert model.config["encoder_weights"] is None and model.config["freeze_encoder"] is True


def test_channel_layer_norm_traced_form_equals_eager():
    """The traced (OpenVINO) form normalises along axis 1 directly; it must equal the LayerNorm form."""
    from e2miseg.models.blocks import ChannelLayerNorm

    torch.manual_seed(0)
    norm = ChannelLayerNorm(11)
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 1.5)
        norm.norm.bias.uniform_(-0.5, 0.5)
    x = 3 * torch.randn(2, 11, 5, 6, 7) + 1
    eager = norm(x)
    traced = torch.jit.trace(norm, x, check_trace=False)(x)
    assert torch.allclose(traced, eager, atol=1e-5)
    # with the identity affine every voxel comes out with zero mean and unit variance over channels
    plain = ChannelLayerNorm(11)
    out = torch.jit.trace(plain, x, check_trace=False)(x)
    assert torch.allclose(out.mean(1), torch.zeros(2, 5, 6, 7), atol=1e-5)
    assert torch.allclose(out.var(1, unbiased=False), torch.ones(2, 5, 6, 7), atol=1e-3)
