"""Out of memory during inference: step down a ladder instead of failing.

Each rung trades speed for memory and is announced (``warnings``, the ``e2miseg`` logger and the
progress callback, so the CLI's JSON lines and the Slicer log show it):

1. halve the batch of windows/slices per network pass, down to 1;
2. stitch the window probabilities in CPU memory instead of GPU memory;
3. move the network to the CPU.

Only when the CPU with batch size 1 still runs out does the run fail, with a ``ResourceError``.
An attempt is restarted from its first tile, so the result is the one an unconstrained run gives.
"""
from __future__ import annotations

import gc
import logging
import warnings
from typing import Any

import numpy as np
import torch

from .errors import ResourceError
from .progress import Reporter
from .runtime import make_forward

LOG = logging.getLogger("e2miseg")

# torch >= 2.5 raises torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is the same class);
# MPS and the CPU allocator raise plain RuntimeErrors, recognised by their messages.
_OOM_TYPES: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None), MemoryError) if t)
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


class MemoryFallbackWarning(UserWarning):
    """The run continues with settings that use less memory (and run slower)."""


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, _OOM_TYPES):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def _release(predictor: Any) -> None:
    """Give freed blocks back before the next attempt (the failed attempt's tensors are garbage now)."""
    gc.collect()
    if predictor.device.type == "cuda":
        torch.cuda.empty_cache()


def step_down(predictor: Any) -> str | None:
    """Make ``predictor`` use less memory; say how, or return None when no rung is left."""
    if predictor.batch_size > 1:
        predictor.batch_size = max(1, predictor.batch_size // 2)
        return f"retrying with batch size {predictor.batch_size}"
    if predictor.stitch_on_device:
        predictor.stitch_on_device = False
        return "retrying with the tiles stitched in CPU memory"
    if predictor.device.type != "cpu":
        predictor.device = torch.device("cpu")
        predictor.model = predictor.model.to(predictor.device)
        # float16 is a GPU precision: on the CPU the automatic choice applies instead
        precision = None if (predictor.options.precision or "").lower() == "f16" else predictor.options.precision
        predictor.forward = make_forward(predictor.model, predictor.device, predictor.options.runtime, precision)
        return "retrying on the CPU (much slower)"
    return None


def predict_with_fallback(predictor: Any, array: np.ndarray, reporter: Reporter, sink: Any) -> None:
    """``predictor.predict_once`` under the ladder; other errors (and cancellation) pass through untouched.

    Each attempt restarts the sink (``sink.begin``), so its result is that of the successful attempt.
    """
    while True:
        device = predictor.device.type.upper()
        try:
            return predictor.predict_once(array, reporter, sink)
        except Exception as exc:  # noqa: BLE001 - only memory errors are handled, the rest re-raised
            if not is_out_of_memory(exc):
                raise
            failure = f"{exc}".strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        # outside the except block, so the failed attempt's frames (and their tensors) can be freed
        _release(predictor)
        change = step_down(predictor)
        if change is None:
            raise ResourceError("ran out of memory even with batch size 1 on the CPU; crop the volume to the region of "
                                "interest, use --fast, or use a machine with more memory")
        message = f"{device} ran out of memory ({failure}); {change}"
        warnings.warn(message, MemoryFallbackWarning, stacklevel=2)
        LOG.warning(message)
        reporter.report("infer", 0, 1, message=message)
