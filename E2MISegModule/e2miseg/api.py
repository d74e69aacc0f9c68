"""The public Python API: ``load_model`` and ``predict``. The CLI and the Slicer module sit on these.

>>> import e2miseg
>>> model, card = e2miseg.load_model("e2miseg-hippocampus", device="cpu")
>>> labels = e2miseg.predict("hippocampus_001.nii.gz", model)        # SimpleITK label image
>>> labels, probs = e2miseg.predict(image, model, return_probabilities=True)
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence, Union

import SimpleITK as sitk
import torch

from .checkpoint import load_weights_into, read_checkpoint, sha256_of
from .errors import CheckpointError
from .inference import InferenceOptions, Predictor, resolve_device
from .postprocess import LabelSink, clean_labels, labels_on_input_grid, probability_image
from .preprocess import preprocess
from .progress import CancelToken, ProgressCallback, Reporter
from .resample import Geometry
from .store import resolve
from .validate import read_checked_channels

ImageInput = Union[str, os.PathLike, sitk.Image]


def build_from_card(card: dict[str, Any]) -> torch.nn.Module:
    """An untrained network as the card's architecture section describes it."""
    from .models import build_model

    arch = card["architecture"]
    try:
        model = build_model(arch["name"], **arch["config"])
    except ValueError as exc:
        raise CheckpointError(f"model '{card['name']}': {exc}") from None
    except TypeError as exc:
        raise CheckpointError(f"model '{card['name']}': its architecture settings do not fit '{arch['name']}' ({exc})") from None
    kind = getattr(model, "kind", None)
    if kind != card["inference"]["kind"]:
        raise CheckpointError(f"model '{card['name']}': card says a {card['inference']['kind']} model but '{arch['name']}' is {kind}")
    return model


def load_model(name_or_path: str | os.PathLike, device: str = "auto") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a checkpoint by store name or path; return the network (eval mode, on ``device``) and its card.

    The card is also attached as ``model.card`` so ``predict(images, model)`` needs nothing else.
    """
    stored = resolve(name_or_path)
    tensors, card = read_checkpoint(stored.path)
    model = build_from_card(card)
    load_weights_into(model, tensors, stored.path.name)
    model = model.to(resolve_device(device)).eval()
    model.card = card
    model.weights_sha256 = stored.sha256 or sha256_of(stored.path)  # keys the OpenVINO conversion cache
    return model, card


def predict(images: ImageInput | Sequence[ImageInput], model: torch.nn.Module | str | os.PathLike,
            card: dict[str, Any] | None = None, *, device: str | None = None, step: float | None = None,
            fast: bool = False, tta: bool = False, batch_size: int | None = None, keep_largest: bool = False,
            min_island_mm3: float = 0.0, return_probabilities: bool = False,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
            refine_edges: bool = False, edge_strength: float | None = None, runtime: str | None = None,
            precision: str | None = None, timings: dict[str, float] | None = None):
    """Segment one case: file paths or SimpleITK images in, a uint8 label image on the input grid out.

    Memory stays bounded on large volumes: probabilities are stitched, resampled to the input grid
    and turned into labels slab by slab. ``return_probabilities`` and ``refine_edges`` need the whole
    probability map (one float32 volume per class on the input grid), so they take more memory.

    :param images: one path/image per channel, a 4D image, or a DICOM series folder.
    :param model: a network from ``load_model`` (carrying ``.card``), or a store name or checkpoint path.
    :param device: None keeps the model's device; otherwise auto, cpu, cuda or mps.
    :param runtime: auto (OpenVINO on the CPU when installed, else PyTorch), torch or openvino.
    :param precision: auto (float16 autocast on CUDA; bfloat16 for the networks that gain from it on
        CPUs with native bfloat16; else fp32), f32, bf16 or f16; env ``E2MISEG_PRECISION``.
    :param return_probabilities: also return the class probabilities on the input grid (vector image).
    :param progress: called with ``ProgressEvent`` (stage, done, total, eta_s).
    :param cancel: anything with ``is_set()`` (e.g. ``threading.Event``); checked between tiles.
    :param refine_edges: refine edges against the image in a narrow band (``e2miseg.edges``).
    :param edge_strength: 0 (off) .. 1; None is the measured default (``e2miseg.edges.DEFAULT_STRENGTH``).
    :param timings: if given, filled with seconds per stage: load (model, when given by name),
        read, preprocess, compile (network runtime set-up), network, stitch (stitching, resampling
        and labelling interleaved with the network), postprocess, total.
    """
    clock = _Clock(timings)
    reporter = Reporter(progress, cancel)
    reporter.report("load", 0, 1)
    if not isinstance(model, torch.nn.Module):
        model, card = load_model(model, device or "auto")
    card = card or getattr(model, "card", None)
    if card is None:
        raise CheckpointError("predict() needs the model card: pass card=... or a model from e2miseg.load_model")
    clock.lap("load")
    channels = read_checked_channels(images, card)  # headers are checked before any voxel is read
    reporter.report("load", 1, 1)
    clock.lap("read")
    reporter.report("preprocess", 0, 1)
    array, grid = preprocess(channels, card)
    reporter.report("preprocess", 1, 1)
    clock.lap("preprocess")
    reference = Geometry.of(channels[0])
    keep_image = channels[0] if refine_edges else None
    del channels  # the input's voxels are not needed any more (unless the caller holds them)
    if device is None:
        device = str(next(model.parameters()).device)
    predictor = Predictor(model, card, InferenceOptions(device=device, step=step, fast=fast, tta=tta, batch_size=batch_size,
                                                         runtime=runtime, precision=precision))
    clock.lap("compile")
    probability_map = None
    if refine_edges or return_probabilities:
        probabilities = predictor.predict(array, reporter)
        del array
        clock.split("infer", predictor)
        reporter.report("postprocess", 0, 1)
        labels = labels_on_input_grid(probabilities, grid, reference)
        probability_map = probability_image(probabilities, grid, reference)
        del probabilities
    else:
        sink = LabelSink(grid, reference)
        predictor.predict_into(array, sink, reporter)
        del array
        clock.split("infer", predictor)
        reporter.report("postprocess", 0, 1)
        labels = sink.image()
        del sink
    if refine_edges:
        from .edges import refine_prediction

        labels = refine_prediction(keep_image, labels, probability_map, strength=edge_strength)
    labels = clean_labels(labels, [entry["value"] for entry in card["labels"]], keep_largest, min_island_mm3)
    result = (labels, probability_map) if return_probabilities else labels
    clock.lap("postprocess")
    reporter.report("postprocess", 1, 1)
    clock.finish()
    return result


class _Clock:
    """Stage timings for ``predict(timings=...)``; does nothing when no dict was given."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings
        self.start = self.last = time.perf_counter()
        if timings is not None:
            timings.clear()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now

    def split(self, stage: str, predictor: Predictor) -> None:
        """The inference stage, split into the runtime's set-up, the network and the rest (stitching)."""
        now = time.perf_counter()
        if self.timings is not None:
            compile_s = getattr(predictor.forward, "compile_seconds", 0.0)
            network = max(0.0, predictor.network_seconds - compile_s)
            self.timings["compile"] = self.timings.get("compile", 0.0) + compile_s
            self.timings["network"] = network
            self.timings["stitch"] = max(0.0, now - self.last - predictor.network_seconds)
        self.last = now

    def finish(self) -> None:
        if self.timings is not None:
            self.timings["total"] = time.perf_counter() - self.start
