"""The predictor: network-grid array -> class probabilities, tile by tile.

The strategy follows the model's kind from its card: 3D sliding windows with Gaussian blending,
2D slices, or 2.5D stacks of neighbouring slices. Several tiles go through the network per pass;
cancellation is checked between passes. Probabilities leave the predictor as finalised slabs (z slabs
for 3D windows, groups of slices for 2D/2.5D) through a sink, so the caller decides whether to keep
them whole or to turn them into labels straight away.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Iterator, Optional

import numpy as np
import torch

from .errors import E2MISegError
from .preprocess import AXIS_INDEX_ZYX
from .progress import Reporter
from .runtime import cores_to_openvino, make_forward
from .tiling import gaussian_weights, pad_to_at_least, pad_to_multiple, slice_stack_indices, window_grid


# Finalised slices go to the sink at most this many at a time (a slab of probabilities per call).
_EMIT_SLICES = 16


@dataclass
class InferenceOptions:
    device: str = "auto"
    step: Optional[float] = None  # None: the card's step (or fast_step when fast)
    fast: bool = False
    tta: bool = False  # mirror test-time augmentation over the card's mirror axes
    batch_size: Optional[int] = None
    runtime: Optional[str] = None  # auto (OpenVINO on CPU when installed, else PyTorch), torch, openvino
    precision: Optional[str] = None  # auto (f16 on CUDA, bf16 where network and CPU gain), f32, bf16, f16


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an unavailable explicit choice is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise E2MISegError("CUDA was requested but no CUDA GPU is available to PyTorch; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise E2MISegError("Apple MPS was requested but is not available; use --device cpu or auto")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise E2MISegError(f"unknown device '{name}'; use auto, cpu, cuda or mps")
    return torch.device(name)


def mirror_combinations(axes: list[int]) -> list[tuple[int, ...]]:
    """Every subset of the mirror axes, the empty one (no flip) first."""
    return [combo for r in range(len(axes) + 1) for combo in combinations(axes, r)]


def _forward_probabilities(model, batch: torch.Tensor, flips: list[tuple[int, ...]], softmax: bool = True) -> torch.Tensor:
    """Class probabilities of the batch (averaged over the mirrorings in ``flips``); with
    ``softmax=False`` and no mirroring, the logits themselves (for callers that only take the argmax)."""
    if not softmax and len(flips) == 1 and not flips[0]:
        return model(batch).float()
    total = None
    for dims in flips:
        x = torch.flip(batch, dims) if dims else batch
        probs = torch.softmax(model(x).float(), dim=1)
        probs = torch.flip(probs, dims) if dims else probs
        total = probs if total is None else total.add_(probs)
    return total.div_(len(flips)) if len(flips) > 1 else total


# Every submodule of a model once, so the per-case eval-mode check is a flat scan: walking
# ``model.modules()`` (a recursive generator) took 0.45 ms for E2MISeg's 331 modules, the list 0.05 ms.
# Loaded networks do not change structure; a submodule added after the first prediction is not scanned.
_SUBMODULES: "weakref.WeakKeyDictionary[torch.nn.Module, list[torch.nn.Module]]" = weakref.WeakKeyDictionary()


def _ready(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model on ``device`` in eval mode, touching it only when it is not: ``.to()`` and ``.eval()``
    walk every submodule (about 15 ms for E2MISeg, 4 % of a hippocampus prediction in a session)."""
    first = next(model.parameters(), None)
    if first is not None and (first.device.type != device.type or
                              (device.index is not None and first.device.index != device.index)):
        model = model.to(device)
    submodules = _SUBMODULES.get(model)
    if submodules is None:
        submodules = _SUBMODULES[model] = list(model.modules())
    if any(module.training for module in submodules):
        model.eval()
    return model


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def check_step(step: float | None, card: dict[str, Any]) -> None:
    """A step whose stride is under one voxel along the patch's shortest side would silently become
    a one-voxel stride (``--step 1e-6``: 6,525 windows instead of 28); refuse it and say the least step
    this model takes."""
    patch = card["inference"].get("patch_size_zyx")
    if step is None or not patch:
        return
    least = 1.0 / min(patch)
    if step < least:
        from .settings import SettingsError

        raise SettingsError(f"step (--step) {step:g} is under one voxel of model '{card['name']}''s {min(patch)}-voxel window; "
                            f"give a fraction of the window in {least:.3g}..1 (0.5 is half a window)")


class Predictor:
    """Runs one model over preprocessed arrays as its card prescribes."""

    def __init__(self, model: torch.nn.Module, card: dict[str, Any], options: InferenceOptions | None = None):
        self.options = options or InferenceOptions()
        self.card = card
        self.settings = card["inference"]
        self.device = resolve_device(self.options.device)
        self.model = _ready(model, self.device)
        self.forward = make_forward(self.model, self.device, self.options.runtime, self.options.precision)
        self.num_classes = int(getattr(model, "num_classes", 0)) or 1 + max(label["value"] for label in card["labels"])
        self.batch_size = self.options.batch_size or self.settings["batch_size"]
        default_step = self.settings["fast_step"] if self.options.fast else self.settings["step"]
        check_step(self.options.step, card)
        self.step = self.options.step or default_step
        # On a GPU the windows are summed in GPU memory (no copy back per tile); the out-of-memory
        # fallback (fallback.py) turns this off before giving up the GPU altogether.
        self.stitch_on_device = self.device.type == "cuda"
        self.network_seconds = 0.0  # time inside the network (and its runtime), for timing reports

    def predict(self, array: np.ndarray, reporter: Reporter | None = None) -> np.ndarray:
        """(C, z, y, x) float32 -> (K, z, y, x) float32 class probabilities.

        Holds one float32 volume per class: for callers that need the probabilities themselves.
        ``predict_into`` streams them to a sink instead. Out of memory, it retries with a smaller
        batch, CPU stitching, then the CPU (with a warning).
        """
        from .postprocess import ArraySink

        sink = ArraySink()
        self.predict_into(array, sink, reporter)
        return sink.array

    def predict_into(self, array: np.ndarray, sink, reporter: Reporter | None = None) -> None:
        """Stream finalised probability slabs to ``sink`` (``begin``, ``add(start, slab)``, ``end``)."""
        from .fallback import predict_with_fallback

        predict_with_fallback(self, array, reporter or Reporter(), sink)

    def predict_once(self, array: np.ndarray, reporter: Reporter, sink) -> None:
        """One attempt with the current batch size, stitching and device."""
        with torch.inference_mode(), cores_to_openvino(self.forward):
            if self.settings["kind"] == "3d":
                self._sliding_window(array, reporter, sink)
            else:
                self._slice_wise(array, reporter, sink)
            sink.end()

    def _mirror_dims(self, spatial_axes_zyx: list[int], offset: int) -> list[tuple[int, ...]]:
        if not self.options.tta:
            return [()]
        axes = [AXIS_INDEX_ZYX[a] for a in self.settings["mirror_axes"]]
        return mirror_combinations([spatial_axes_zyx.index(a) + offset for a in axes if a in spatial_axes_zyx])

    def _network(self, batch: torch.Tensor, flips: list[tuple[int, ...]], softmax: bool = True) -> torch.Tensor:
        start = time.perf_counter()
        probs = _forward_probabilities(self.forward, batch, flips, softmax)
        self.network_seconds += time.perf_counter() - start
        return probs

    def _sliding_window(self, array: np.ndarray, reporter: Reporter, sink) -> None:
        """Gaussian-weighted windows, z-major, stitched in a band of z slices.

        Windows come in z order, so once a batch is done every slice before the next window's first
        slice is final: it is divided by its weight sum and handed to the sink, and the band moves
        on. The band is one patch deep (plus a batch's spread), not the whole volume.
        """
        patch = tuple(self.settings["patch_size_zyx"])
        padded, crop = pad_to_at_least(array, patch)
        windows = window_grid(padded.shape[1:], patch, self.step)
        groups = list(_batches(windows, self.batch_size))
        finals = [g[0][0].start for g in groups[1:]] + [padded.shape[1]]  # band start after each group
        depth = max(max(max(w[0].stop for w in g), final) - g[0][0].start for g, final in zip(groups, finals))
        weights = gaussian_weights(patch, self.settings["gaussian_sigma_scale"])
        weights_device = torch.tensor(weights, device=self.device)
        stitch = self.device if self.stitch_on_device else torch.device("cpu")
        weights_stitch = torch.from_numpy(np.array(weights)).to(stitch)
        plane = padded.shape[2:]
        accumulated = torch.zeros((self.num_classes, depth) + plane, dtype=torch.float32, device=stitch)
        weight_sum = torch.zeros((depth,) + plane, dtype=torch.float32, device=stitch)
        flips = self._mirror_dims([0, 1, 2], offset=2)
        sink.begin(self.num_classes, array.shape[1:], 0)
        base, done = 0, 0  # padded z of the band's first slice
        reporter.report("infer", 0, len(windows))
        for group, final in zip(groups, finals):
            reporter.check_cancel()
            batch = torch.from_numpy(np.stack([padded[(slice(None),) + w] for w in group])).to(self.device)
            probs = self._network(batch, flips).mul_(weights_device).to(stitch)
            for window, tile in zip(group, probs):
                band = (slice(window[0].start - base, window[0].stop - base),) + window[1:]
                accumulated[(slice(None),) + band] += tile
                weight_sum[band] += weights_stitch
            if final > base:
                self._emit(accumulated, weight_sum, base, final, crop, sink)
                base = final
            done += len(group)
            reporter.report("infer", done, len(windows))

    @staticmethod
    def _emit(accumulated: torch.Tensor, weight_sum: torch.Tensor, base: int, final: int, crop: tuple[slice, ...], sink) -> None:
        """Hand the band's slices [base, final) (padded z) to the sink, then shift the band."""
        first, last = max(base, crop[0].start), min(final, crop[0].stop)
        for start in range(first, last, _EMIT_SLICES):  # the last flush is a whole band: hand it over in parts
            stop = min(start + _EMIT_SLICES, last)
            band = (slice(start - base, stop - base),) + crop[1:]
            slab = accumulated[(slice(None),) + band] / weight_sum[band][None]
            sink.add(start - crop[0].start, slab.cpu().numpy())
        shift = final - base
        rest = accumulated.shape[1] - shift
        for index in range(max(rest, 0)):  # slice by slice, front to back: no band-sized temporary
            accumulated[:, index].copy_(accumulated[:, index + shift])
            weight_sum[index].copy_(weight_sum[index + shift])
        accumulated[:, max(rest, 0):] = 0
        weight_sum[max(rest, 0):] = 0

    def _slice_wise(self, array: np.ndarray, reporter: Reporter, sink) -> None:
        axis = AXIS_INDEX_ZYX[self.settings["slice_axis"]]
        in_plane = [a for a in range(3) if a != axis]
        stacked = np.moveaxis(array, axis + 1, 1)  # (C, S, A, B) with S the slice axis
        channels, count = stacked.shape[:2]
        slices = self.settings["slices"] if self.settings["kind"] == "2.5d" else 1
        minimum = tuple(self.settings.get("patch_size_zyx") or (1, 1))
        padded, crop = pad_to_at_least(stacked, minimum)
        padded, crop2 = pad_to_multiple(padded, int(getattr(self.model, "size_divisor", 1)))
        crop = tuple(slice(c2.start + c1.start, c2.start + c1.stop) for c1, c2 in zip(crop, crop2))
        flips = self._mirror_dims(in_plane, offset=2)
        # each slice is predicted once: without mirroring, a sink that only takes the argmax on the
        # network grid needs no softmax
        softmax = getattr(sink, "needs_probabilities", True)
        sink.begin(self.num_classes, array.shape[1:], axis)
        reporter.report("infer", 0, count)
        done = 0
        for group in _batches(list(range(count)), self.batch_size * 4):
            reporter.check_cancel()
            # channel-major stacks: the k neighbours of channel 0, then of channel 1, ...; one gather
            # (C, n, k, A, B) for the whole batch, then one copy into (n, C * k, A, B)
            stacks = np.array([slice_stack_indices(count, i, slices) for i in group])
            gathered = padded[:, stacks]
            tiles = np.ascontiguousarray(gathered.transpose(1, 0, 2, 3, 4)).reshape(len(group), channels * slices, *padded.shape[2:])
            batch = torch.from_numpy(tiles).to(self.device)
            probs = self._network(batch, flips, softmax).cpu().numpy()
            # (n, K, A, B) -> (K, n, A, B) -> the slice axis back in its place
            sink.add(group[0], np.moveaxis(np.moveaxis(probs[(slice(None), slice(None)) + crop], 0, 1), 1, axis + 1))
            done += len(group)
            reporter.report("infer", done, count)
