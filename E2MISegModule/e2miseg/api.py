"""The public Python API: ``load_model`` and ``predict``. The CLI and the Slicer module sit on these.

>>> import e2miseg
>>> model, card = e2miseg.load_model("e2miseg-hippocampus", device="cpu")
>>> labels = e2miseg.predict("hippocampus_001.nii.gz", model)        # SimpleITK label image
>>> labels, probs = e2miseg.predict(image, model, return_probabilities=True)
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence, Union

import SimpleITK as sitk
import torch

from .checkpoint import load_weights_into, read_checkpoint, sha256_of
from .edges.defaults import LEARNED_METHOD
from .errors import CheckpointError
from .inference import InferenceOptions, Predictor, resolve_device
from .label_input import check_not_label_map
from .postprocess import LabelSink, finish_labels, labels_on_input_grid, probability_image
from .preprocess import preprocess
from .progress import CancelToken, ProgressCallback, Reporter
from .resample import Geometry
from .settings import Settings
from .settings import resolve as resolve_settings
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


def _check_model_reference(value: Any, caller: str) -> None:
    """A model is named by a store name or a checkpoint path; say what to pass for anything else."""
    if isinstance(value, (str, os.PathLike)):
        return
    if isinstance(value, tuple) and value and isinstance(value[0], torch.nn.Module):
        raise TypeError(f"{caller}() got the (model, card) tuple load_model returns; unpack it: "
                        f"model, card = e2miseg.load_model(...), then pass model")
    raise TypeError(f"{caller}() takes a model name (see `e2miseg models list`) or a .safetensors path as str or "
                    f"os.PathLike, not {type(value).__name__}")


def load_model(name_or_path: str | os.PathLike, device: str = "auto") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a checkpoint by store name or path; return the network (eval mode, on ``device``) and its card.

    The card is also attached as ``model.card`` so ``predict(images, model)`` needs nothing else, and
    the model's learned boundary refiner (if its file has one) as ``model.refiner``.
    """
    _check_model_reference(name_or_path, "load_model")
    stored = resolve(name_or_path)
    tensors, card = read_checkpoint(stored.path)
    model = build_from_card(card)
    load_weights_into(model, tensors, stored.path.name)
    model = model.to(resolve_device(device)).eval()
    model.card = card
    from .refiner_part import load_refiner

    model.refiner = load_refiner(tensors, card, stored.path.name)  # None without one; refused if tampered
    model.weights_sha256 = stored.sha256 or sha256_of(stored.path)  # keys the OpenVINO conversion cache
    return model, card


def predict(images: ImageInput | Sequence[ImageInput], model: torch.nn.Module | str | os.PathLike,
            card: dict[str, Any] | None = None, settings: Settings | None = None, *, return_probabilities: bool = False,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
            timings: dict[str, float] | None = None, **options: Any):
    """Segment one case: file paths or SimpleITK images in, a uint8 label image on the input grid out.

    How it is segmented is a ``Settings`` (``e2miseg.settings``): pass one, or its fields as keywords
    (``keep_largest=True``, ``quality="fast"``, ``refine_edges=True``, ``edge_strength=0.5``,
    ``device``, ``step``, ``runtime``, ``precision``, ...); keywords win over ``settings``. What neither
    decides comes from the model card's ``defaults``, then the engine's (``settings.resolve``), exactly
    as ``e2miseg predict`` and the Slicer module decide it.

    Memory stays bounded on large volumes: probabilities are stitched, resampled to the input grid
    and turned into labels slab by slab. ``return_probabilities`` and edge refinement need the whole
    probability map (one float32 volume per class on the input grid), so they take more memory.

    :param images: one path/image per channel, a 4D image, or a DICOM series folder.
    :param model: a network from ``load_model`` (carrying ``.card``), or a store name or checkpoint path.
    :param settings: run settings; ``device`` None keeps the model's device.
    :param return_probabilities: also return the class probabilities on the input grid (vector image).
    :param progress: called with ``ProgressEvent`` (stage, done, total, eta_s).
    :param cancel: anything with ``is_set()`` (e.g. ``threading.Event``); checked between tiles.
    :param timings: if given, filled with seconds per stage: load (model, when given by name),
        read, preprocess, compile (network runtime set-up), network, stitch (stitching, resampling
        and labelling interleaved with the network), postprocess, total.
    :raises e2miseg.settings.SettingsError: (a ``ValueError``) a setting outside its range.
    """
    explicit = Settings.from_options(**options).over(settings or Settings())
    clock = _Clock(timings)
    reporter = Reporter(progress, cancel)
    reporter.report("load", 0, 1)
    if not isinstance(model, torch.nn.Module):
        _check_model_reference(model, "predict")
        model, card = load_model(model, explicit.device or "auto")
    card = card or getattr(model, "card", None)
    if card is None:
        raise CheckpointError("predict() needs the model card: pass card=... or a model from e2miseg.load_model")
    chosen = resolve_settings(explicit, card)
    clock.lap("load")
    channels = read_checked_channels(images, card)  # headers are checked before any voxel is read
    if not chosen.accept_label_map:
        check_not_label_map(channels, card, input_names(images))
    reporter.report("load", 1, 1)
    clock.lap("read")
    reporter.report("preprocess", 0, 1)
    array, grid = preprocess(channels, card)
    reporter.report("preprocess", 1, 1)
    clock.lap("preprocess")
    reference = Geometry.of(channels[0])
    keep_image = channels[0] if chosen.refine_edges else None
    del channels  # the input's voxels are not needed any more (unless the caller holds them)
    device = chosen.device or str(next(model.parameters()).device)
    predictor = Predictor(model, card, InferenceOptions(device=device, step=chosen.step, fast=chosen.fast, tta=chosen.tta,
                                                         batch_size=chosen.batch_size, runtime=chosen.runtime,
                                                         precision=chosen.precision))
    clock.lap("compile")
    probability_map = None
    # the classical methods refine the network's probabilities; the learned refiner needs only the labels
    needs_probabilities = return_probabilities or (chosen.refine_edges and chosen.edge_method != LEARNED_METHOD)
    if needs_probabilities:
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
    labels = finish_labels(labels, card, chosen, keep_image, probability_map, getattr(model, "refiner", None))
    from .plausibility import plausibility_warning

    warning = plausibility_warning(labels, card)
    if warning:  # one line on stderr through the CLI's "e2miseg" logger; not an error, the result is still returned
        logging.getLogger("e2miseg").warning(warning)
    result = (labels, probability_map) if return_probabilities else labels
    clock.lap("postprocess")
    reporter.report("postprocess", 1, 1)
    clock.finish()
    return result


def input_names(images) -> list[str] | None:
    """File names for messages, one per channel when the inputs are one file per channel."""
    items = [images] if isinstance(images, (str, os.PathLike, sitk.Image)) else list(images)
    if any(isinstance(item, sitk.Image) for item in items):
        return None
    return [Path(item).name for item in items]


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
