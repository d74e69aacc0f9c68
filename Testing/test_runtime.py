"""The OpenVINO runtime gives PyTorch's probabilities, caches its conversion, and falls back safely."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import require_module
import torch

from e2miseg.card import validate_card
from e2miseg.errors import E2MISegError
from e2miseg.inference import InferenceOptions, Predictor
from e2miseg.runtime import make_forward, resolve_runtime
from helpers import make_card, small_e2miseg_config

openvino = require_module("openvino", "the CPU runtime falls back to PyTorch without it")


@pytest.fixture
def small_model():
    from e2miseg.models import build_model

    torch.manual_seed(0)
    return build_model("e2miseg", **small_e2miseg_config()).eval()


def test_openvino_predictor_matches_pytorch_and_reuses_its_cache(small_model, tmp_path, monkeypatch):
    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    volume = np.random.default_rng(0).normal(size=(1, 20, 24, 18)).astype(np.float32)
    card = validate_card(make_card(config=small_e2miseg_config(), batch_size=3))
    eager = Predictor(small_model, card, InferenceOptions(device="cpu", runtime="torch")).predict(volume)
    converted = Predictor(small_model, card, InferenceOptions(device="cpu", runtime="openvino", precision="f32")).predict(volume)
    np.testing.assert_allclose(converted, eager, atol=1e-4)
    irs = list((tmp_path / "openvino").glob("*.xml"))
    assert len(irs) == 1  # one conversion: the full and the last partial batch share it
    stamp = irs[0].stat().st_mtime_ns
    again = Predictor(small_model, card, InferenceOptions(device="cpu", runtime="openvino", precision="f32")).predict(volume)
    np.testing.assert_allclose(again, eager, atol=1e-4)
    assert irs[0].stat().st_mtime_ns == stamp  # loaded from the cache, not converted again


def test_changed_weights_get_their_own_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    torch.manual_seed(1)
    small_model = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)).eval()
    batch = torch.randn(1, 1, 16, 16, 16)
    first = make_forward(small_model, torch.device("cpu"), "openvino")(batch)
    with torch.no_grad():
        next(small_model.parameters()).add_(0.5)
    second = make_forward(small_model, torch.device("cpu"), "openvino")(batch)
    with torch.inference_mode():
        torch.testing.assert_close(second, small_model(batch), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(first, second)
    assert len(list((tmp_path / "openvino").glob("*.xml"))) == 2


def test_unconvertible_network_falls_back_to_pytorch(tmp_path, monkeypatch):
    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: tracing cannot capture it faithfully
                return torch.cat([x, -x], 1)
            raise RuntimeError("tracing path not supported")

    monkeypatch.setattr("e2miseg.runtime.OpenVinoForward._convert", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    forward = make_forward(DataDependent(), torch.device("cpu"), "openvino")
    with pytest.warns(UserWarning, match="using PyTorch"):
        out = forward(torch.ones(1, 1, 4, 4))
    assert out.shape == (1, 2, 4, 4)


def test_pytorch_steps_aside_while_openvino_runs_and_gets_its_threads_back(small_model, tmp_path, monkeypatch):
    """Around an OpenVINO network PyTorch's own work runs on one thread (its idle threads otherwise
    contend with OpenVINO's streams); the user's thread count returns afterwards, also after an error,
    and a predictor made meanwhile still sizes OpenVINO by the user's count."""
    from e2miseg.runtime import OpenVinoForward, cores_to_openvino, torch_threads

    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    card = validate_card(make_card(config=small_e2miseg_config(), batch_size=2))
    volume = np.random.default_rng(0).normal(size=(1, 20, 24, 18)).astype(np.float32)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        predictor = Predictor(small_model, card, InferenceOptions(device="cpu", runtime="openvino"))
        network = predictor.forward

        def spy(batch):
            seen.append((torch.get_num_threads(), torch_threads()))
            return network(batch)

        spy.uses_openvino = True
        predictor.forward = spy
        predictor.predict(volume)
        assert seen and set(seen) == {(1, 2)}
        assert torch.get_num_threads() == 2

        eager = Predictor(small_model, card, InferenceOptions(device="cpu", runtime="torch"))
        eager_network = eager.forward
        eager.forward = lambda batch: (seen.append(torch.get_num_threads()), eager_network(batch))[1]
        eager.predict(volume)
        assert seen[-1] == 2  # a PyTorch network keeps every thread

        with pytest.raises(RuntimeError):
            with cores_to_openvino(network):
                assert torch.get_num_threads() == 1
                assert OpenVinoForward(small_model)._streams == 2  # sized by the user's 2 threads, not 1
                raise RuntimeError("cancelled")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_network_that_falls_back_to_pytorch_gets_every_thread(tmp_path, monkeypatch):
    from e2miseg.runtime import cores_to_openvino

    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    monkeypatch.setattr("e2miseg.runtime.OpenVinoForward._convert", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    threads_in_network = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            threads_in_network.append(torch.get_num_threads())
            return x

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        forward = make_forward(Recorder(), torch.device("cpu"), "openvino")
        with cores_to_openvino(forward), pytest.warns(UserWarning, match="using PyTorch"):
            forward(torch.ones(1, 1, 4, 4))
            assert torch.get_num_threads() == 1  # the work around the network stays on one thread
        assert threads_in_network == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_runtime_choice():
    assert resolve_runtime("auto", torch.device("cpu")) == "openvino"
    assert resolve_runtime("torch", torch.device("cpu")) == "torch"
    with pytest.raises(E2MISegError, match="unknown runtime"):
        resolve_runtime("tensorrt", torch.device("cpu"))
    with pytest.raises(E2MISegError, match="CPU only"):
        resolve_runtime("openvino", torch.device("cuda"))


def test_channel_norm_becomes_one_mvn_for_openvino_only(small_model, tmp_path, monkeypatch):
    """OpenVINO gets the MFGA channel LayerNorms as MVN over axis 1; a TorchScript trace has no custom op."""
    from e2miseg.models.blocks import ChannelLayerNorm
    from e2miseg.runtime import OpenVinoForward

    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    norms = sum(isinstance(m, ChannelLayerNorm) for m in small_model.modules())
    assert norms > 0
    example = torch.randn(1, 1, *small_e2miseg_config()["patch_size"])
    OpenVinoForward(small_model)(example)
    ir = openvino.Core().read_model(next((tmp_path / "openvino").glob("*.xml")))
    channel_mvns = 0
    for op in ir.get_ordered_ops():
        if op.get_type_name() == "MVN":
            axes = op.input_value(1).get_node()
            if axes.get_type_name() == "Constant" and list(axes.get_data()) == [1]:
                channel_mvns += 1
    assert channel_mvns >= norms  # every ChannelLayerNorm (others may be InstanceNorms over one axis too)

    traced = torch.jit.trace(small_model, example, check_trace=False)
    assert "e2miseg::" not in str(traced.inlined_graph)  # exported files need nothing from this package


# ----------------------------------------------------------------------------- precision (bfloat16)

class _Prefers(torch.nn.Module):
    prefers_bf16 = True


def test_precision_choice(monkeypatch):
    from e2miseg import runtime
    from e2miseg.runtime import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.delenv("E2MISEG_PRECISION", raising=False)
    for native in (True, False):
        monkeypatch.setattr(runtime, "_NATIVE_BF16", native)
        expected = "bf16" if native else "f32"
        assert resolve_precision("auto", "openvino", cpu, _Prefers()) == expected
        assert resolve_precision(None, "openvino", cpu, _Prefers()) == expected
        # the network must ask for it, and eager PyTorch stays fp32 unless told
        assert resolve_precision("auto", "openvino", cpu, torch.nn.Identity()) == "f32"
        assert resolve_precision("auto", "torch", cpu, _Prefers()) == "f32"
        assert resolve_precision("f32", "openvino", cpu, _Prefers()) == "f32"
        assert resolve_precision("bf16", "torch", cpu, torch.nn.Identity()) == "bf16"
    # a CUDA GPU gets float16 autocast (decided without touching CUDA); float16 on the CPU is refused
    assert resolve_precision("auto", "torch", torch.device("cuda"), torch.nn.Identity()) == "f16"
    assert resolve_precision("f32", "torch", torch.device("cuda"), torch.nn.Identity()) == "f32"
    assert resolve_precision("f16", "torch", torch.device("mps"), torch.nn.Identity()) == "f16"
    with pytest.raises(E2MISegError, match="float16 is for GPUs"):
        resolve_precision("f16", "torch", cpu, torch.nn.Identity())
    with pytest.raises(E2MISegError, match="no native bfloat16 .*use --precision f32"):
        resolve_precision("bf16", "openvino", cpu, _Prefers())
    with pytest.raises(E2MISegError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", "openvino", cpu, _Prefers())
    monkeypatch.setenv("E2MISEG_PRECISION", "f32")
    monkeypatch.setattr(runtime, "_NATIVE_BF16", True)
    assert resolve_precision(None, "openvino", cpu, _Prefers()) == "f32"


def test_keep_fp32_marks_only_the_named_layer_types_once():
    from e2miseg.runtime import keep_fp32

    xml = ('<layers><layer id="1" name="dw" type="GroupConvolution" version="opset1"><data /></layer>'
           '<layer id="2" name="conv" type="Convolution" version="opset1"><data /></layer>'
           '<layer id="3" name="dw2" type="GroupConvolution" version="opset1"><data /></layer></layers>')
    marked, count = keep_fp32(xml, ("GroupConvolution",))
    assert count == 2
    assert marked.count('<attribute name="precise" version="0" />') == 2
    assert '"Convolution" version="opset1"><data />' in marked  # the dense convolution is left alone
    assert keep_fp32(marked, ("GroupConvolution",)) == (marked, 0)  # marking twice changes nothing
    assert keep_fp32(xml, ()) == (xml, 0)


@pytest.mark.machine("native bfloat16")
def test_bf16_e2miseg_keeps_its_depthwise_convolutions_in_fp32(small_model, tmp_path, monkeypatch):
    """E2MISeg in bfloat16: the dense convolutions run in bf16 (AMX), MFGA's depthwise dilated ones in
    fp32, as the network asks (``openvino_fp32_layers``); checked on the compiled network itself."""
    from e2miseg import runtime
    from e2miseg.runtime import OpenVinoForward

    if not runtime.native_bf16():
        pytest.skip("this CPU has no native bfloat16: precision auto stays fp32 here")
    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    assert runtime.resolve_precision("auto", "openvino", torch.device("cpu"), small_model) == "bf16"
    config = small_e2miseg_config()
    batch = torch.randn((2, 1) + tuple(config["patch_size"]))
    forward = OpenVinoForward(small_model, threads=1, precision="bf16")
    out = forward(batch)
    precisions: dict[str, set[str]] = {"depthwise": set(), "dense": set()}
    compiled = forward._compiled((1,) + tuple(batch.shape[1:]), forward._streams)  # cached by the call above
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) != "Convolution":
            continue
        kind = "depthwise" if "group_convs" in info["originalLayersNames"].astype(str) else "dense"
        precisions[kind].add(info["runtimePrecision"].astype(str))
    assert precisions == {"depthwise": {"f32"}, "dense": {"bf16"}}
    with torch.inference_mode():
        reference = small_model(batch)
    assert not torch.equal(out, reference)  # it really ran in bfloat16 ...
    torch.testing.assert_close(out, reference, atol=0.1, rtol=0.05)  # ... to bfloat16's accuracy


def test_bf16_under_torch_autocast_gives_fp32_logits_close_to_fp32():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)).eval()
    batch = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        reference = net(batch)
        out = make_forward(net, torch.device("cpu"), "torch", "bf16")(batch)
    assert out.dtype == torch.float32
    assert not torch.equal(out, reference)  # it really ran in bfloat16 ...
    torch.testing.assert_close(out, reference, atol=0.05, rtol=0.05)  # ... to bfloat16's accuracy


@pytest.mark.machine("native bfloat16")
def test_bundled_ehanet_in_bf16_gives_the_fp32_labels_on_a_real_cine_volume(tmp_path, monkeypatch):
    """The accuracy check behind precision="auto": on a real ACDC volume the bundled EHANet's labels in
    bfloat16 (OpenVINO, the CPU's native bf16) agree with fp32 on at least 99.8 % of the voxels."""
    import SimpleITK as sitk
    from conftest import shared_file
    from e2miseg import api, runtime

    if not runtime.native_bf16():
        pytest.skip("this CPU has no native bfloat16: precision auto stays fp32 here")
    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    image = shared_file("ACDC/imagesTr/patient006_frame01.nii.gz")
    model, card = api.load_model("ehanet-acdc", "cpu")
    labels = {}
    for precision in ("f32", "auto"):
        predictor = Predictor(model, card, InferenceOptions(device="cpu", runtime="openvino", precision=precision))
        assert predictor.forward.precision == ("f32" if precision == "f32" else "bf16")
        labels[precision] = api.predict([str(image)], model, card, device="cpu", runtime="openvino", precision=precision)
    f32, bf16 = (sitk.GetArrayFromImage(labels[p]) for p in ("f32", "auto"))
    assert f32.any()  # the heart is found at all
    assert (f32 == bf16).mean() >= 0.998
