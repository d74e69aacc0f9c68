"""Progress reports with named stages and an ETA, and the cancel check between tiles."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from .errors import Cancelled

STAGES = ("load", "preprocess", "infer", "postprocess", "write")


@dataclass
class ProgressEvent:
    stage: str
    done: int
    total: int
    eta_s: Optional[float]  # seconds left in this stage, None until it can be estimated
    message: str = ""

    def as_dict(self) -> dict:
        return {"stage": self.stage, "done": self.done, "total": self.total,
                "eta_s": None if self.eta_s is None else round(self.eta_s, 1), "message": self.message}


ProgressCallback = Callable[[ProgressEvent], None]


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


class Reporter:
    """Turns (stage, done, total) into events with an ETA and checks for cancellation."""

    def __init__(self, callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None):
        self.callback = callback
        self.cancel = cancel
        self._stage = ""
        self._stage_start = time.perf_counter()

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled by the user; nothing was written")

    def report(self, stage: str, done: int = 0, total: int = 1, message: str = "") -> None:
        self.check_cancel()
        now = time.perf_counter()
        if stage != self._stage:
            self._stage, self._stage_start = stage, now
        elapsed = now - self._stage_start
        eta = elapsed / done * (total - done) if done > 0 else None
        if self.callback is not None:
            self.callback(ProgressEvent(stage, done, total, eta, message))
