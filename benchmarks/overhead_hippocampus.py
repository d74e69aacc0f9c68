"""Where a bundled-model prediction spends its time outside the network, before and after a change.

Each run is a fresh process, as a CLI call or a benchmark harness would be: load the bundled
``e2miseg-hippocampus`` model, predict the sample case with the OpenVINO runtime, write a .seg.nrrd.
A second prediction in the same process, with the model already loaded, shows what a cohort or a
Slicer session pays per case.
The stages are measured from outside the engine (progress events, and timers around the OpenVINO
runtime's call and compile), so any revision of the engine can be measured the same way:

    .venv/bin/python benchmarks/overhead_hippocampus.py --runs 5 [--reference HEAD~3] [--threads 1]

Writes benchmarks/results/overhead_hippocampus.{json,md}. Run by hand, never from the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE = ROOT / "E2MISegModule" / "Resources" / "SampleData" / "hippocampus_008.nii.gz"
MODEL = ROOT / "E2MISegModule" / "Resources" / "Models" / "e2miseg-hippocampus.safetensors"
STAGES = ["load_model", "read", "preprocess", "compile", "network", "stitch", "postprocess", "write"]


def worker(out_dir: str, threads: int) -> dict:
    """One cold run and one warm run in this process; seconds per stage for each."""
    started = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    import e2miseg
    from e2miseg import runtime
    from e2miseg.io import write_result

    import_s = time.perf_counter() - started
    spent = {"call": 0.0, "compile": 0.0}
    original_call, original_compile = runtime.OpenVinoForward.__call__, runtime.OpenVinoForward._compile

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapper

    from e2miseg import inference

    runtime.OpenVinoForward.__call__ = timed("call", original_call)
    runtime.OpenVinoForward._compile = timed("compile", original_compile)
    inference.Predictor.__init__ = timed("setup", inference.Predictor.__init__)  # runtime set-up (import, hashing)
    loaded_model: list = []

    def one_run(tag: str) -> dict:
        spent.update(call=0.0, compile=0.0, setup=0.0)
        marks: list[tuple[str, float]] = []

        def on_progress(event) -> None:
            if not marks or marks[-1][0] != event.stage:
                marks.append((event.stage, time.perf_counter()))

        start = time.perf_counter()
        if not loaded_model:  # a cohort or a Slicer session loads the model once
            loaded_model.extend(e2miseg.load_model(str(MODEL), device="cpu"))
        model, card = loaded_model
        loaded = time.perf_counter()
        labels = e2miseg.predict(str(SAMPLE), model, card, runtime="openvino", progress=on_progress)
        predicted = time.perf_counter()
        write_result(labels, card, Path(out_dir) / f"{tag}.seg.nrrd")
        end = time.perf_counter()
        bounds = [(stage, t) for stage, t in marks] + [("end", predicted)]
        stage_s = {a[0]: b[1] - a[1] for a, b in zip(bounds, bounds[1:])}
        infer = stage_s.get("infer", 0.0)
        compile_s = spent["compile"] + spent["setup"]
        network = spent["call"] - spent["compile"]
        total = end - start
        return {"load_model": loaded - start, "read": marks[0][1] - loaded + stage_s.get("load", 0.0),
                "preprocess": stage_s.get("preprocess", 0.0) - spent["setup"], "compile": compile_s, "network": network,
                "stitch": max(0.0, infer - spent["call"]), "postprocess": stage_s.get("postprocess", 0.0),
                "write": end - predicted, "total": total, "outside_share": 1.0 - network / total}

    return {"import": import_s, "cold": one_run("cold"), "warm": one_run("warm")}


def run_once(engine: Path, out_dir: Path, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(engine), "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--worker", str(out_dir), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict], which: str) -> dict:
    keys = STAGES + ["total", "outside_share"]
    return {key: statistics.median(run[which][key] for run in runs) for key in keys}


def table(results: dict) -> str:
    lines = ["| engine | run | " + " | ".join(STAGES) + " | total | outside network |",
             "|---|---|" + "---|" * len(STAGES) + "---|---|"]
    for label, summary in results.items():
        for which in ("cold", "warm"):
            row = summary[which]
            cells = " | ".join(f"{row[s]:.3f}" for s in STAGES)
            lines.append(f"| {label} | {which} | {cells} | {row['total']:.3f} | {row['outside_share']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per engine (alternating)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", help="git revision to compare against (e.g. HEAD~3)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="e2miseg-overhead-") as tmp:
        workdir = Path(tmp)
        from bench_common import engine_tree

        engines = {"current": engine_tree(None, workdir)}
        if args.reference:
            engines[args.reference] = engine_tree(args.reference, workdir)
        runs: dict[str, list[dict]] = {label: [] for label in engines}
        for engine in engines.values():  # warm-up: the OpenVINO conversion and file caches
            run_once(engine, workdir, args.threads)
        for _ in range(args.runs):
            for label, engine in engines.items():
                runs[label].append(run_once(engine, workdir, args.threads))
    results = {label: {"cold": summarise(r, "cold"), "warm": summarise(r, "warm"),
                       "import": statistics.median(x["import"] for x in r)} for label, r in runs.items()}
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "threads": args.threads, "load_average": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overhead_hippocampus.json").write_text(
        json.dumps({"machine": machine, "runs": args.runs, "median_seconds": results, "raw": runs}, indent=2), encoding="utf-8")
    text = (f"# Time outside the network: e2miseg-hippocampus on hippocampus_008 (OpenVINO, {args.threads} thread)\n\n"
            f"Median seconds of {args.runs} fresh processes per engine; *cold* is the first prediction of a process "
            f"(what one CLI call pays), *warm* a second one in the same process with the model loaded "
            f"(a cohort or a Slicer session). compile = the runtime's set-up: OpenVINO import, weights hash, "
            f"compiling the cached network. "
            f"Python and library imports are not included (median {results['current']['import']:.1f} s).\n"
            f"Machine: {machine['processor']}, {machine['cpus']} CPUs, load average {machine['load_average'][0]:.1f}.\n\n"
            + table(results) + "\n")
    (RESULTS / "overhead_hippocampus.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
