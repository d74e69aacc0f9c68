"""What every speed benchmark shares: the machine description, a busy-machine check, result files.

Speed numbers are only worth keeping with the machine they came from and a note of whether anything
else was running, so each result file records the CPU, core count, library versions, date, the load
average before and after, and any training process seen on the machine.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"
if str(ROOT / "E2MISegModule") not in sys.path:
    sys.path.insert(0, str(ROOT / "E2MISegModule"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        imported = __import__(module)
    except ImportError:
        return None
    return getattr(imported, "__version__", None) or getattr(getattr(imported, "version", None), "__version__", None)


def busy_processes() -> list[str]:
    """Other heavy jobs (training runs) that would make timings meaningless."""
    try:
        # the console script and `python -m e2miseg_train.cli fit` (how torchrun and nohup runs start it)
        out = subprocess.run(["pgrep", "-af", "e2miseg[-_]train(\\.cli)? fit"], capture_output=True, text=True).stdout
    except OSError:
        return []
    own = str(os.getpid())
    return [line[:120] for line in out.splitlines() if line and line.split()[0] != own and "pgrep" not in line]


def machine(threads: int) -> dict[str, Any]:
    import torch

    flags = ""
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "threads": threads,
        "isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma") if f" {f}" in flags],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "openvino": _version("openvino"),
        "monai": _version("monai"),
        "simpleitk": _version("SimpleITK"),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "busy_processes_start": busy_processes(),
    }


def finish_machine(info: dict[str, Any]) -> dict[str, Any]:
    """Record the load at the end and whether the machine was quiet throughout."""
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["busy_processes_end"] = busy_processes()
    cores = info.get("logical_cores") or 1
    # the benchmark itself keeps up to `threads` cores busy; anything well above that is someone else
    limit = info["threads"] + 0.5 * cores
    info["quiet"] = not info["busy_processes_start"] and not info["busy_processes_end"] and \
        info["load_average_start"][0] <= limit and info["load_average_end"][1] <= limit
    return info


def machine_line(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {info[k]}" for k in ("torch", "openvino", "monai", "simpleitk") if info.get(k))
    state = "quiet machine" if info.get("quiet") else \
        f"LOADED machine (load {info['load_average_start'][0]} -> {info.get('load_average_end', ['?'])[0]}, " \
        f"{len(info['busy_processes_start'])} training jobs): timings not representative"
    return (f"{info['cpu']}, {info['logical_cores']} logical cores, {info['threads']} threads; {versions}; "
            f"Python {info['python']}; {info['date_utc']}; {state}")


def write_results(name: str, payload: dict[str, Any], table: list[str], notes: list[str] | None = None,
                  folder: Path = RESULTS) -> tuple[Path, Path]:
    """``<name>.json`` (everything) and ``<name>.md`` (machine line, table, notes)."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [f"# {name}", "", f"Machine: {machine_line(payload['machine'])}", "", *table]
    if notes:
        lines += ["", *notes]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path


class TimedForward:
    """A timing wrapper around the engine's network call that still answers for it
    (``precision``, ``uses_openvino``, ...), so the engine behaves as it does unwrapped."""

    def __init__(self, forward, timed):
        self._forward, self._timed = forward, timed

    def __call__(self, batch):
        return self._timed(batch)

    def __getattr__(self, name):
        return getattr(self._forward, name)


@contextlib.contextmanager
def network_calls_timed(on_call: Callable[[tuple[int, ...], float, str], None]) -> Iterator[None]:
    """Time every network call the engine makes inside the block, from outside the engine.

    The engine's ``make_forward`` is wrapped, so each call reports (batch shape, seconds, precision the
    runtime chose) to ``on_call``; stitching, resampling and I/O are not included.
    """
    import e2miseg.inference as engine_inference

    original = engine_inference.make_forward

    def timed_make_forward(*args, **kwargs):
        forward = original(*args, **kwargs)
        precision = getattr(forward, "precision", "f32")

        def timed(batch):
            t0 = time.perf_counter()
            out = forward(batch)
            on_call(tuple(batch.shape), time.perf_counter() - t0, precision)
            return out

        return TimedForward(forward, timed)

    engine_inference.make_forward = timed_make_forward
    try:
        yield
    finally:
        engine_inference.make_forward = original


def update_model_results(name: str, model: str, entry: dict[str, Any], render: Callable[[dict[str, Any]], str],
                         folder: Path = RESULTS) -> str:
    """Put one model's ``entry`` into ``<name>.json`` (other models' entries stay) and rewrite ``<name>.md``
    from the whole file with ``render``; return the markdown. A rerun for one model (new weights)
    replaces only that model's rows. The markdown is rendered before anything is written, so a failure
    leaves the old files whole."""
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    results = json.loads(json_path.read_text(encoding="utf-8")) if json_path.is_file() else {"models": {}}
    results["models"][model] = entry
    text = render(results)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, separators=(",", ":")) + "\n", encoding="utf-8")
    tmp.replace(json_path)
    md_path.write_text(text, encoding="utf-8")
    return text


def quoted_results(name: str, folder: Path = RESULTS) -> str:
    """``<name>.md`` without its title line: what a docs page quotes between its markers."""
    lines = (folder / f"{name}.md").read_text(encoding="utf-8").strip().splitlines()
    return "\n".join(lines[1:]).strip()


def quote_results_in_page(name: str, page: Path, folder: Path = RESULTS) -> bool:
    """Replace the block between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in ``page`` with the
    results file, so the page shows what is on disk after every rerun; True when the page changed.
    A page without the markers is left alone."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if not page.is_file():
        return False
    text = page.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{quoted_results(name, folder)}\n{end}{tail}"
    if new != text:
        page.write_text(new, encoding="utf-8")
    return new != text


def publish_model_results(name: str, model: str, entry: dict[str, Any], render: Callable[[dict[str, Any]], str],
                          folder: Path, page: Path) -> str:
    """``update_model_results``, then quote the new table in the docs ``page`` when the results went to
    the project's own folder (a run into a scratch folder must not rewrite the docs)."""
    text = update_model_results(name, model, entry, render, folder)
    if folder.resolve() == RESULTS.resolve():
        quote_results_in_page(name, page)
    return text


def engine_tree(reference: str | None, workdir: Path) -> Path:
    """The engine package a benchmark child imports: this checkout's, or git ``reference``'s extracted into
    ``workdir`` (so "before" and "after" run side by side in one benchmark run)."""
    if reference is None:
        return ROOT / "E2MISegModule"
    archive = subprocess.run(["git", "archive", reference, "E2MISegModule/e2miseg"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    target = workdir / f"engine-{reference.replace('/', '_')}"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "E2MISegModule"
