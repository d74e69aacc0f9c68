"""Run the engine: in a subprocess through the CLI's JSON progress lines, or in-process on a thread.

Both runners have the same small interface so the logic does not care which one runs:
``start()``, ``poll() -> list of progress dicts``, ``finished``, ``cancel()``, ``result()``.
Neither touches MRML: the caller polls from its own (main) thread and imports the result there,
because MRML and Qt objects must only be modified from the application's main thread.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from e2miseg.errors import Cancelled, E2MISegError

# Share of the whole run each stage takes, for one determinate progress bar (inference dominates).
STAGE_WEIGHTS = (("load", 0.05), ("preprocess", 0.05), ("infer", 0.72), ("postprocess", 0.08),
                 ("write", 0.04), ("import", 0.06))
CANCELLED_EXIT_CODE = 130


class EngineError(E2MISegError):
    """The engine reported an error (its one-line message) or stopped without finishing."""

    def __init__(self, message: str, exitCode: int = 1):
        super().__init__(message)
        self.exit_code = exitCode


def overallFraction(stage: str, done: int, total: int) -> float:
    """Fraction of the whole run (0..1) reached at ``done`` of ``total`` steps of ``stage``."""
    start = 0.0
    for name, weight in STAGE_WEIGHTS:
        if name == stage:
            within = min(max(done / total, 0.0), 1.0) if total else 0.0
            return start + weight * within
        start += weight
    return 1.0 if stage == "done" else start


def progressEvent(stage: str, done: int = 0, total: int = 1, etaSeconds: Optional[float] = None,
                  message: str = "") -> dict[str, Any]:
    return {"stage": stage, "done": done, "total": total, "eta_s": etaSeconds, "message": message,
            "fraction": overallFraction(stage, done, total)}


def engineSearchPath() -> str:
    """The folder that holds the ``e2miseg`` package (the subprocess needs it on PYTHONPATH)."""
    import e2miseg

    return str(Path(e2miseg.__file__).resolve().parent.parent)


def cliOptionStrings() -> set[str]:
    """Every option the installed engine's ``predict`` command accepts (no torch import needed)."""
    from e2miseg.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # argparse keeps subcommands only here
        predict = action.choices.get("predict")
        if predict is not None:
            return {option for a in predict._actions for option in a.option_strings}
    return set()


def killProcessTree(pid: int, timeout: float = 5.0) -> None:
    """Kill a process and all its descendants.

    Inside Slicer the command starts with the PythonSlicer launcher, which runs the real Python as a
    child: killing only the launcher would leave the engine running.
    """
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    try:
        processes = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        processes = []
    processes.append(parent)
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=timeout)


class SubprocessRunner:
    """``python -m e2miseg.cli predict ... --json-progress`` with reader threads and tree kill."""

    def __init__(self, command: Sequence[str], env: Optional[dict[str, str]] = None,
                 logCallback: Optional[Callable[[str], None]] = None):
        self.command = list(command)
        self.env = env
        self.logCallback = logCallback
        self.process: Optional[subprocess.Popen] = None
        self.finished = False
        self._queue: "queue.Queue[tuple[str, Any]]" = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stderrTail: deque[str] = deque(maxlen=20)
        self._doneEvent: Optional[dict] = None
        self._errorEvent: Optional[dict] = None
        self._cancelled = False
        self._returnCode: Optional[int] = None

    def start(self) -> None:
        flags = subprocess.CREATE_NO_WINDOW if os.name == "nt" else 0  # no console window on Windows
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        encoding="utf-8", errors="replace", bufsize=1, env=self.env,
                                        creationflags=flags)
        for stream, kind in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            thread = threading.Thread(target=self._read, args=(stream, kind), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read(self, stream, kind: str) -> None:
        for line in iter(stream.readline, ""):
            self._queue.put((kind, line.rstrip("\n")))
        stream.close()

    def poll(self) -> list[dict[str, Any]]:
        """Progress events that arrived since the last call; sets ``finished`` when the process is gone."""
        events = []
        while True:
            try:
                kind, line = self._queue.get_nowait()
            except queue.Empty:
                break
            event = self._parse(kind, line)
            if event is not None:
                events.append(event)
        if not self.finished and self.process is not None and self.process.poll() is not None:
            if all(not t.is_alive() for t in self._threads):  # every line read before deciding the outcome
                self._returnCode = self.process.returncode
                self.finished = True
                events.extend(self.poll())
        return events

    def _parse(self, kind: str, line: str) -> Optional[dict[str, Any]]:
        if kind == "stderr" or not line.startswith("{"):
            if line.strip():
                self._stderrTail.append(line.strip())
                if self.logCallback:
                    self.logCallback(line)
            return None
        try:
            payload = json.loads(line)
        except json.JSONDecodeError:
            if self.logCallback:
                self.logCallback(line)
            return None
        stage = payload.get("stage", "")
        if stage == "done":
            self._doneEvent = payload
            return progressEvent("write", 1, 1, 0.0)
        if stage == "error":
            self._errorEvent = payload
            return None
        return progressEvent(stage, int(payload.get("done", 0)), int(payload.get("total", 1) or 1),
                             payload.get("eta_s"), payload.get("message", ""))

    def cancel(self) -> None:
        self._cancelled = True
        if self.process is not None and self.process.poll() is None:
            killProcessTree(self.process.pid)

    def result(self) -> Path:
        """The output file; raises ``Cancelled`` or ``EngineError`` (with the engine's own message)."""
        if not self.finished:
            raise RuntimeError("result() called before the engine finished")
        if self._cancelled:
            raise Cancelled("cancelled by the user; the scene was not changed")
        if self._errorEvent is not None:
            code = int(self._errorEvent.get("exit_code", self._returnCode or 1))
            raise EngineError(self._errorEvent.get("message", "unknown engine error"), code)
        if self._returnCode == 0 and self._doneEvent is not None:
            return Path(self._doneEvent["output"])
        if self._returnCode == CANCELLED_EXIT_CODE:
            raise Cancelled("the engine was cancelled (SIGTERM); the scene was not changed")
        raise EngineError(self._unexpectedExitMessage(), self._returnCode or 70)

    def _unexpectedExitMessage(self) -> str:
        code = self._returnCode
        if code is not None and code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"stopped with exit code {code}"
        last = next((line for line in reversed(self._stderrTail) if line.startswith("e2miseg:")),
                    self._stderrTail[-1] if self._stderrTail else "")
        detail = f" Last message: {last}" if last else ""
        return (f"The segmentation engine {how} before finishing.{detail} If the computer ran out of memory, "
                f"choose quality 'fast', the CPU device, or crop the volume, then run again.")


class InProcessRunner:
    """``e2miseg.predict`` on a worker thread, with a cancel token checked between tiles."""

    def __init__(self, images: list, modelLoader: Callable[[], Any], predictOptions: dict[str, Any]):
        self.images = images
        self.modelLoader = modelLoader
        self.predictOptions = predictOptions
        self.finished = False
        self._cancel = threading.Event()
        self._queue: "queue.Queue[dict]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._result = None
        self._error: Optional[BaseException] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from e2miseg import api

        try:
            self._queue.put(progressEvent("load", 0, 1))
            model, card = self.modelLoader()
            self._result = api.predict(self.images, model, card, progress=self._onProgress, cancel=self._cancel,
                                       **self.predictOptions)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            self._error = exc

    def _onProgress(self, event) -> None:
        self._queue.put(progressEvent(event.stage, event.done, event.total, event.eta_s, event.message))

    def poll(self) -> list[dict[str, Any]]:
        events = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not self.finished and self._thread is not None and not self._thread.is_alive():
            self.finished = True
            events.extend(self.poll())
        return events

    def cancel(self) -> None:
        self._cancel.set()

    def result(self):
        if not self.finished:
            raise RuntimeError("result() called before the engine finished")
        if self._cancel.is_set() and (self._error is None or isinstance(self._error, Cancelled)):
            raise Cancelled("cancelled by the user; the scene was not changed")
        if self._error is not None:
            raise self._error
        return self._result


def subprocessEnvironment(base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment for the engine process: the engine on PYTHONPATH, unbuffered output."""
    env = dict(os.environ if base is None else base)
    paths = [engineSearchPath()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"  # the engine's messages contain non-ASCII (…, ²) whatever the locale
    return env


def pythonExecutable() -> str:
    """Inside Slicer ``sys.executable`` is the application; PythonSlicer runs scripts with its Python."""
    import shutil

    import slicer

    if hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable
