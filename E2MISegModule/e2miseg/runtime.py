"""How the network is executed: eager PyTorch, or OpenVINO on the CPU, in fp32 or bfloat16.

Most clinicians have no GPU. On the CPU, OpenVINO runs the same network (same weights, fp32) about
1.5× faster than eager PyTorch here (benchmarks/results), so ``runtime="auto"`` uses it on the CPU when
the ``openvino`` package is installed and PyTorch everywhere else. Converting a network takes a while
(tens of seconds), so the converted model is cached on disk, keyed by the weights' hash and the input
shape; later runs load it in well under a second. Any conversion failure falls back to PyTorch with a
warning rather than failing the run.

Precision: on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX, detected through OpenVINO's
``OPTIMIZATION_CAPABILITIES``) ``precision="auto"`` runs the networks that gain from it in bfloat16
(``prefers_bf16`` on the network class: all three bundled ones), keeping some layer types in fp32:
normalisation and softmax by default (``FP32_LAYERS``), or what the network names
(``openvino_fp32_layers``: E2MISeg keeps its depthwise dilated convolutions, which have no fast
bfloat16 kernel). The speed and label changes per model are in benchmarks/results/precision.md. On a
CUDA GPU ``auto`` runs PyTorch under float16 autocast (as nnU-Net's and MONAI's predictors do);
elsewhere, and for ``precision="f32"``, every runtime computes in fp32.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import cache_limit
from .errors import E2MISegError

LOG = logging.getLogger("e2miseg")
RUNTIMES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "f32", "bf16", "f16")
Forward = Callable[[torch.Tensor], torch.Tensor]


def cache_dir() -> Path:
    from .environment import folder_variable, home

    return folder_variable("E2MISEG_CACHE") or home() / ".e2miseg" / "cache"


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(name: str | None, device: torch.device) -> str:
    from .environment import choice

    name = (name or choice("E2MISEG_RUNTIME", RUNTIMES) or "auto").lower()
    if name not in RUNTIMES:
        raise E2MISegError(f"unknown runtime '{name}'; use auto, torch or openvino")
    if name == "openvino":
        if device.type != "cpu":
            raise E2MISegError("the OpenVINO runtime runs on the CPU only; use --device cpu or --runtime torch")
        if not openvino_available():
            raise E2MISegError("the OpenVINO runtime needs the openvino package: pip install openvino")
    if name == "auto":
        return "openvino" if device.type == "cpu" and openvino_available() else "torch"
    return name


_NATIVE_BF16: bool | None = None


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (OpenVINO reports ``BF16`` only then)."""
    global _NATIVE_BF16
    if _NATIVE_BF16 is None:
        try:
            import openvino as ov

            _NATIVE_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except Exception:  # no OpenVINO, or it cannot query the CPU: do not guess
            _NATIVE_BF16 = False
    return _NATIVE_BF16


def resolve_precision(name: str | None, runtime: str, device: torch.device, model: torch.nn.Module) -> str:
    """``"f32"``, ``"bf16"`` or ``"f16"`` for this network, runtime and device (see the module docstring)."""
    from .environment import choice

    name = (name or choice("E2MISEG_PRECISION", PRECISIONS) or "auto").lower()
    if name not in PRECISIONS:
        raise E2MISegError(f"unknown precision '{name}'; use auto, f32, bf16 or f16")
    on_cpu = device.type == "cpu"
    if name == "auto":
        if device.type == "cuda":
            return "f16"
        wanted = bool(getattr(model, "prefers_bf16", False))
        return "bf16" if wanted and runtime == "openvino" and on_cpu and native_bf16() else "f32"
    if name == "f16" and on_cpu:
        raise E2MISegError("float16 is for GPUs (--device cuda or mps); on the CPU use --precision bf16 or f32")
    if name == "bf16" and runtime == "openvino" and not native_bf16():
        raise E2MISegError("this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX); "
                           "use --precision f32 or auto")
    return name


# Bumped whenever the traced graph of a network changes for the same weights (e.g. a rewritten layer),
# so that IRs converted by an older engine are not reused.
GRAPH_VERSION = 3


def weights_key(model: torch.nn.Module) -> str:
    """A short hash of the graph version, architecture settings and weights, to key the conversion cache."""
    known = getattr(model, "weights_sha256", None)
    digest = hashlib.sha256(f"graph{GRAPH_VERSION}:{known or ''}".encode())
    digest.update(repr(getattr(model, "config", type(model).__name__)).encode())
    if not known:
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _channel_layer_norm_to_mvn(context):
    """``e2miseg::channel_layer_norm`` (models/traced_ops.py) as OpenVINO's MVN over axis 1 + affine."""
    import numpy as np
    import openvino.opset13 as ops

    x, weight, bias = context.get_input(0), context.get_input(1), context.get_input(2)
    eps = float(context.get_values_from_const_input(3))
    rank = x.get_partial_shape().rank.get_length()
    per_channel = ops.constant(np.array([0] + list(range(2, rank)), np.int64))  # (C,) -> (1, C, 1, ...)
    normalised = ops.mvn(x, ops.constant(np.array([1], np.int64)), True, eps, "inside_sqrt")
    scaled = ops.multiply(normalised, ops.unsqueeze(weight, per_channel))
    return [ops.add(scaled, ops.unsqueeze(bias, per_channel)).output(0)]


def _conversion_extensions() -> list:
    from openvino.frontend import ConversionExtension

    from .models.traced_ops import OP_NAME

    return [ConversionExtension(OP_NAME, _channel_layer_norm_to_mvn)]


# Compiled networks of this process, shared by every predictor: compiling, even from OpenVINO's
# on-disk blob cache, costs a second or more, which a cohort or a Slicer session would pay per case.
# Keyed by weights, input shape and thread count; a few entries (each holds the network's weights).
_COMPILED: "OrderedDict[tuple, object]" = OrderedDict()
_COMPILED_MAX = 4
_COMPILED_LOCK = threading.Lock()


class OpenVinoForward:
    """Runs a PyTorch network through OpenVINO.

    One converted model (IR) per window shape is cached on disk; it is compiled for one window at a
    time with fully static shapes, because the CPU plugin refuses some fused E2MISeg layers with a
    dynamic batch ("any_of(scale.size(), OC, 1U)"), and static shapes are its fastest path anyway.
    Compiled models are kept per process (``_COMPILED``); each instance runs them through its own
    queue of infer requests (one per stream), so predictors in several threads can share one compiled
    model. A batch's windows are spread over the streams and come back in order.
    """

    def __init__(self, model: torch.nn.Module, threads: int | None = None, precision: str = "f32"):
        import openvino as ov

        self._ov = ov
        self._core = None  # created on the first compilation this process needs
        self._model = model
        self._key = weights_key(model)
        self._threads = threads or torch_threads()
        self.precision = precision
        # Windows run one per request on `threads` single-threaded streams rather than every thread on
        # every layer: the many small layers of these networks do not split well across threads (2 cores:
        # E2MISeg 71 -> 68 ms per hippocampus window, EHANet 90 -> 82 ms per slice; same outputs), and one
        # compiled model per window shape serves every batch size (no recompiling for a partial batch).
        self._streams = max(1, self._threads)
        self._queues: dict[tuple[int, ...], object] = {}
        self.compile_seconds = 0.0  # time spent converting or compiling, for timing reports

    def _ir_path(self, shape: tuple[int, ...]) -> Path:
        return cache_dir() / "openvino" / f"{self._key}_{'x'.join(map(str, shape))}.xml"

    def _convert(self, example: torch.Tensor, path: Path):
        ov = self._ov
        from .models.traced_ops import as_custom_ops

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks are expected
            # tracing first and converting the traced graph is ~2x quicker than converting the module
            with as_custom_ops():
                traced = torch.jit.trace(self._model, example, check_trace=False)
            converted = ov.convert_model(traced, extension=_conversion_extensions())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.xml")
        ov.save_model(converted, tmp, compress_to_fp16=False)  # keep fp32 weights: results match PyTorch
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
        return converted

    def _compiled(self, shape: tuple[int, ...], streams: int):
        key = (self._key, str(cache_dir()), shape, self._threads, streams, self.precision)
        with _COMPILED_LOCK:
            compiled = _COMPILED.get(key)
            if compiled is not None:
                _COMPILED.move_to_end(key)
                return compiled
            compiled = self._compile(shape, streams)
            _COMPILED[key] = compiled
            while len(_COMPILED) > _COMPILED_MAX:
                _COMPILED.popitem(last=False)
            return compiled

    def _compile(self, shape: tuple[int, ...], streams: int):
        path = self._ir_path(shape[1:])
        start = time.perf_counter()
        converted = not (path.is_file() and path.with_suffix(".bin").is_file())
        if converted:
            self._convert(torch.zeros((1,) + shape[1:]), path)
        else:
            cache_limit.touch(path, path.with_suffix(".bin"))  # reused: the newest in the LRU order
        if self._core is None:
            self._core = self._ov.Core()
        fp32_layers = tuple(getattr(self._model, "openvino_fp32_layers", FP32_LAYERS)) if self.precision == "bf16" else ()
        if fp32_layers:
            xml, _ = keep_fp32(path.read_text(), fp32_layers)
            weights = self._ov.Tensor(np.fromfile(path.with_suffix(".bin"), dtype=np.uint8))
            ir = self._core.read_model(model=xml, weights=weights)
        else:
            ir = self._core.read_model(path)
        ir.reshape(list(shape))
        # fp32 unless bf16 was chosen: OpenVINO's own default is bf16 on CPUs that have it, for every network
        config = {"INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": self._threads,
                  "NUM_STREAMS": streams, "CACHE_DIR": str(cache_dir() / "openvino" / "compiled")}
        compiled = self._core.compile_model(ir, "CPU", config)
        # one IR and one compiled blob per window shape: bounded, least recently used out (cache_limit.py)
        cache_limit.prune(path.parent, keep=path.stem)
        cache_limit.prune(Path(config["CACHE_DIR"]))
        if converted:  # said only when it really happened, with what it cost (the cache makes it once per shape)
            LOG.info(f"optimised the network for this CPU with OpenVINO in {time.perf_counter() - start:.1f} s "
                     f"(once per model and window size; cached in {path.parent})")
        return compiled

    def _queue(self, sample_shape: tuple[int, ...]):
        queue = self._queues.get(sample_shape)
        if queue is None:
            start = time.perf_counter()
            compiled = self._compiled((1,) + sample_shape, self._streams)
            queue = self._queues[sample_shape] = self._ov.AsyncInferQueue(compiled, self._streams)
            queue.set_callback(_keep_output)
            self.compile_seconds += time.perf_counter() - start
        return queue

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().contiguous().numpy()
        queue = self._queue(tuple(array.shape[1:]))
        outputs: list = [None] * len(array)
        for index in range(len(array)):
            queue.start_async({0: array[index:index + 1]}, (outputs, index))
        queue.wait_all()
        return torch.from_numpy(np.concatenate(outputs))


# Layers (IR type names) that stay fp32 in a bfloat16 network unless the network names its own
# (``openvino_fp32_layers``): normalisation statistics and softmax. With its MVNs in bfloat16 the
# bundled EHANet's labels differ from fp32 on 1.1 % of a cine volume's voxels; kept fp32, on 0.04 %,
# for 3 % more network time (precision.md, Testing/test_runtime.py).
FP32_LAYERS = ("MVN", "SoftMax", "NormalizeL2", "GroupNormalization")

# OpenVINO's attribute that keeps a layer in the model's own precision (fp32) under a lower precision
# hint ("DisableFP16Compression", serialised as "precise"). It is written into the IR's text: an rt_info
# entry set from Python is a plain string, which OpenVINO 2026.4's CPU plugin honours for some layers
# (MVN) and silently ignores for others (GroupConvolution still ran in bf16).
_PRECISE = '<rt_info><attribute name="precise" version="0" /></rt_info>'


def keep_fp32(xml: str, layer_types: tuple[str, ...]) -> tuple[str, int]:
    """The IR text with every layer of these IR types (e.g. ``GroupConvolution``) kept in fp32 under
    a bf16 precision hint; also returns how many layers were marked."""
    if not layer_types:
        return xml, 0
    opening = re.compile(r'(<layer id="\d+" name="[^"]*" type="(?:%s)" version="[^"]*">)(?!<rt_info>)'
                         % "|".join(map(re.escape, layer_types)))
    return opening.subn(lambda match: match.group(1) + _PRECISE, xml)


def _keep_output(request, userdata) -> None:
    # runs on an OpenVINO thread; copied because the request's buffer is reused by its next window
    outputs, index = userdata
    outputs[index] = request.get_output_tensor(0).data.copy()


def make_forward(model: torch.nn.Module, device: torch.device, runtime: str | None = None,
                 precision: str | None = None) -> Forward:
    """The network call the predictor uses: ``batch -> logits`` (fp32 logits whatever the precision)."""
    chosen = resolve_runtime(runtime, device)
    arithmetic = resolve_precision(precision, chosen, device, model)
    if chosen == "torch":
        return model if arithmetic == "f32" else _Autocast(model, device, arithmetic)
    try:
        forward = OpenVinoForward(model, precision=arithmetic)
    except Exception as exc:  # a broken openvino install must not stop a segmentation
        warnings.warn(f"OpenVINO unavailable ({exc}); running the network with PyTorch")
        return model

    return _Guarded(model, forward)


# PyTorch's thread count while OpenVINO networks run (see ``cores_to_openvino``); process-wide,
# as ``torch.set_num_threads`` is.
_LOWERED_LOCK = threading.Lock()
_LOWERED_DEPTH = 0
_LOWERED_FROM = 1


def torch_threads() -> int:
    """PyTorch's intra-op thread count as the user set it (not lowered by ``cores_to_openvino``)."""
    with _LOWERED_LOCK:
        return _LOWERED_FROM if _LOWERED_DEPTH else torch.get_num_threads()


@contextmanager
def cores_to_openvino(forward: Forward) -> Iterator[None]:
    """PyTorch on one thread while ``forward`` runs its network on OpenVINO's own threads.

    Both thread pools want every core. Between network calls PyTorch's OpenMP threads wait on cores
    that OpenVINO's streams hold, so the small tensor work around the network (softmax, stitching,
    labelling) stalls for milliseconds per call: S2aNet on a left-atrium volume (2 cores) took
    130-145 ms per case with PyTorch on 2 threads and 89-92 ms on 1. Anything else: no change.
    """
    global _LOWERED_DEPTH, _LOWERED_FROM
    if not getattr(forward, "uses_openvino", False):
        yield
        return
    with _LOWERED_LOCK:
        if _LOWERED_DEPTH == 0:
            _LOWERED_FROM = torch.get_num_threads()
            torch.set_num_threads(1)
        _LOWERED_DEPTH += 1
    try:
        yield
    finally:
        with _LOWERED_LOCK:
            _LOWERED_DEPTH -= 1
            if _LOWERED_DEPTH == 0:
                torch.set_num_threads(_LOWERED_FROM)


@contextmanager
def _all_torch_threads() -> Iterator[None]:
    """PyTorch back on its full thread count (a network that fell back from OpenVINO to PyTorch).
    Runs per network call: nothing to set when the count was not lowered."""
    lowered, full = torch.get_num_threads(), torch_threads()
    if lowered == full:
        yield
        return
    torch.set_num_threads(full)
    try:
        yield
    finally:
        torch.set_num_threads(lowered)


class _Autocast:
    """The PyTorch network under autocast (bf16, or f16 on a GPU); logits come back as fp32."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str = "bf16"):
        self.model, self.device_type, self.precision = model, device.type, precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(batch).float()


class _Guarded:
    """OpenVINO, falling back to the PyTorch network for good if OpenVINO cannot run it."""

    def __init__(self, model: torch.nn.Module, forward: OpenVinoForward):
        self.model, self.forward, self.openvino = model, forward, forward

    @property
    def precision(self) -> str:
        return self.openvino.precision if self.forward is self.openvino else "f32"

    @property
    def compile_seconds(self) -> float:
        return self.openvino.compile_seconds

    @property
    def uses_openvino(self) -> bool:
        return self.forward is self.openvino

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.forward is not self.model:
            try:
                return self.forward(batch)
            except Exception as exc:  # conversion of an unusual network failed: PyTorch still works
                warnings.warn(f"OpenVINO could not run this network ({type(exc).__name__}: {exc}); using PyTorch")
                self.forward = self.model
        with _all_torch_threads():
            return self.model(batch)
