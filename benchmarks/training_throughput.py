"""Samples per second of ``e2miseg-train fit`` against a plain PyTorch loop over the same network,
sampler and loss, and against ``fit`` in float32 with contiguous memory (how it trained before
bfloat16 autocast and channels-last), in alternating fresh processes with the same thread count.

- fit: the real command (``e2miseg_train.cli.main(["fit", ...])`` in a child process), on a copy of
  the plan whose split keeps ``--cases`` training cases and one validation case, so loading is short;
  validation only runs after the last iteration (outside the measured window).
- fit-fp32: the same command with ``--no-amp --no-channels-last`` (the step before issue 24).
- plain: ``build_network`` + ``model.default_loss()`` + AdamW (same lr and weight decay) and the same
  ``PatchSampler`` (same cases, seeds, foreground fraction, augmentation, so the same patches); per iteration: batch,
  zero_grad, forward, loss, backward, step. No schedule, clipping, logging or checkpoints.

Both are timed the same way: a global optimizer step hook (``register_optimizer_step_post_hook``)
stamps every step; samples/s = batch x steps / time between the first and last stamp after
``--warmup`` steps. Run by hand:

    .venv/bin/python benchmarks/training_throughput.py [--iterations 40] [--pairs 2] [--threads 2] [--only e2miseg,s2anet,ehanet,dynunet2d]

Writes benchmarks/results/training_throughput.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, finish_machine, machine, write_results  # noqa: E402

sys.path.insert(0, str(ROOT / "training"))

# The bundled/ongoing runs' settings (training/README.md), so the measured loop is the one in use.
JOBS = {
    "e2miseg": {"plan": "runs/plans/e2miseg-hippocampus.json", "dataset": "Task04_Hippocampus", "config": {"dropout": 0.0},
                "batch_size": 2, "lr": 2e-3, "patch": None},
    "s2anet": {"plan": "runs/plans/s2anet-leftatrium.json", "dataset": "LeftAtrium2018",
               "config": {"width_scale": 4, "dropout": 0.1}, "batch_size": 8, "lr": 1e-3, "patch": None},
    "ehanet": {"plan": "runs/plans/ehanet-acdc.json", "dataset": "ACDC", "config": {}, "batch_size": 8, "lr": 1e-3,
               "patch": [160, 160]},
    # issue 24's same-budget anchor: MONAI's 2D DynUNet on EHANet's plan, fed exactly like it
    "dynunet2d": {"plan": "runs/plans/ehanet-acdc.json", "dataset": "ACDC", "arch": "ehanet", "config": {},
                  "baseline": ("monai-dynunet", {"filters": [16, 32, 64, 128, 256]}), "batch_size": 8, "lr": 1e-3,
                  "patch": [160, 160]},
}
WEIGHT_DECAY = 1e-4
KINDS = ("fit", "fit-fp32", "plain")


# --------------------------------------------------------------------------- children

def _stamp_steps(path: str) -> None:
    """Record the time of every optimizer step in this process; written at exit."""
    import atexit

    from torch.optim.optimizer import register_optimizer_step_post_hook

    stamps: list[float] = []
    register_optimizer_step_post_hook(lambda optimizer, args, kwargs: stamps.append(time.perf_counter()))
    atexit.register(lambda: Path(path).write_text(json.dumps(stamps)))


def child_fit(plan: str, job: dict, args, stamps: str, out: str, float32: bool = False) -> None:
    _stamp_steps(stamps)
    from e2miseg_train.cli import main as train_main

    argv = ["fit", plan, "--out", out, "--config", json.dumps(job["config"]), "--epochs", "1",
            "--iters-per-epoch", str(args.iterations), "--batch-size", str(job["batch_size"]), "--optimizer", "adamw",
            "--lr", str(job["lr"]), "--weight-decay", str(WEIGHT_DECAY), "--val-every", "1000", "--max-val-cases", "1",
            "--save-every", "1000", "--threads", str(args.threads), "--device", "cpu", "--seed", "0",
            "--cache-dir", args.cache_dir]
    if job["patch"]:
        argv += ["--patch", *map(str, job["patch"])]
    if "baseline" in job:
        argv += ["--baseline", job["baseline"][0], "--baseline-config", json.dumps(job["baseline"][1])]
    if float32:
        argv += ["--no-amp", "--no-channels-last"]
    code = train_main(argv)
    if code:
        raise SystemExit(code)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def child_plain(plan_path: str, job: dict, args, stamps: str) -> None:
    _stamp_steps(stamps)
    import torch
    from e2miseg.card import validate_card
    from e2miseg_train.baselines import build_network
    from e2miseg_train.cache import load_cases
    from e2miseg_train.dataset import list_cases
    from e2miseg_train.sampling import PatchSampler

    torch.set_num_threads(args.threads)
    plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    if "baseline" in job:
        from e2miseg_train.baselines import baseline_plan

        plan = baseline_plan(plan, job["baseline"][0], **job["baseline"][1])
    card = plan["card"]
    card["architecture"]["config"].update(job["config"])
    if job["patch"]:
        card["inference"]["patch_size_zyx"] = list(job["patch"])
        if "patch_size" in card["architecture"]["config"]:
            card["architecture"]["config"]["patch_size"] = list(job["patch"])
    card = validate_card(card)
    cases = {c.name: c for c in list_cases(plan["dataset"])}
    names = [n for n in plan["split"]["train"] if n in cases]
    arrays = load_cases([cases[n] for n in names], card, plan["dataset"], args.cache_dir)
    # the seeds fit uses with --seed 0 (fresh run): the same weights and the same patch/augmentation sequence
    seed_everything(0)
    model = build_network(card["architecture"]["name"], card["architecture"]["config"])
    sampler = PatchSampler([arrays[n] for n in names], card, seed=0, fg_fraction=0.33, augment=True)
    seed_everything(0)
    loss_fn = model.default_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=job["lr"], weight_decay=WEIGHT_DECAY)
    model.train()
    for _ in range(args.iterations):
        images, targets = sampler.batch(job["batch_size"])
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()


# --------------------------------------------------------------------------- harness

def plan_for(key: str, folder: Path) -> Path:
    """The training runs' plan (runs/plans, made by training/README.md's commands), or, on a fresh clone
    where runs/ is empty, the same plan made now with ``e2miseg-train plan``."""
    job = JOBS[key]
    source = ROOT / job["plan"]
    if source.is_file():
        return source
    from bench_common import SHARED
    from e2miseg_train.cli import main as train_cli

    made = folder / Path(job["plan"]).name
    code = train_cli(["plan", str(SHARED / job["dataset"]), "--arch", job.get("arch", key), "--name", Path(job["plan"]).stem,
                      "--out", str(made)])
    if code or not made.is_file():
        raise SystemExit(f"could not plan {job['dataset']} (is ../shared/data there?)")
    return made


def subset_plan(source: Path, cases: int, folder: Path) -> Path:
    """The plan with ``cases`` training cases and one validation case (throughput does not need more)."""
    plan = json.loads(source.read_text(encoding="utf-8"))
    plan["split"]["train"] = plan["split"]["train"][:cases]
    plan["split"]["val"] = plan["split"]["val"][:1]
    path = folder / source.name
    path.write_text(json.dumps(plan), encoding="utf-8")
    return path


def run_child(kind: str, key: str, plan: Path, args, folder: Path, index: int) -> dict:
    stamps = folder / f"{key}-{kind}-{index}.json"
    command = [sys.executable, __file__, "--child", kind, "--job", key, "--plan-file", str(plan), "--stamps", str(stamps),
               "--out", str(folder / f"run-{key}-{kind}-{index}"), "--iterations", str(args.iterations),
               "--threads", str(args.threads), "--cache-dir", args.cache_dir]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not stamps.exists():
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        raise RuntimeError(f"{kind} {key} failed:\n{tail}")
    times = json.loads(stamps.read_text())
    steps = times[args.warmup:]
    if len(steps) < 2:
        raise RuntimeError(f"{kind} {key}: only {len(times)} optimizer steps recorded; raise --iterations")
    seconds = steps[-1] - steps[0]
    batch = JOBS[key]["batch_size"]
    return {"steps_recorded": len(times), "steps_measured": len(steps) - 1, "seconds": seconds,
            "seconds_per_iteration": seconds / (len(steps) - 1),
            "samples_per_second": batch * (len(steps) - 1) / seconds, "process_wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--plan-file", help=argparse.SUPPRESS)
    parser.add_argument("--stamps", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--only", default="e2miseg,s2anet,ehanet", help="architectures (comma-separated)")
    parser.add_argument("--iterations", type=int, default=40, help="iterations per process")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the measurement")
    parser.add_argument("--cases", type=int, default=8, help="training cases loaded (from the plan's split)")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", help="preprocessed-array cache (default: a temporary one for this run; "
                        "runs/cache is the one e2miseg-train fills)")
    parser.add_argument("--name", default="training_throughput")
    args = parser.parse_args()
    if args.child:
        job = JOBS[args.job]
        if args.child in ("fit", "fit-fp32"):
            child_fit(args.plan_file, job, args, args.stamps, args.out, float32=args.child == "fit-fp32")
        else:
            child_plain(args.plan_file, job, args, args.stamps)
        return

    info = machine(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="e2miseg-train-bench-") as tmp:
        tmp = Path(tmp)
        args.cache_dir = args.cache_dir or str(tmp / "cache")  # filled by the first process of each architecture
        for key in args.only.split(","):
            job = JOBS[key]
            plan = subset_plan(plan_for(key, tmp), args.cases, tmp)
            runs = {kind: [] for kind in KINDS}
            for pair in range(args.pairs):
                order = KINDS if pair % 2 == 0 else KINDS[::-1]
                for kind in order:
                    runs[kind].append(run_child(kind, key, plan, args, tmp, pair))
            fit_sps = statistics.median(r["samples_per_second"] for r in runs["fit"])
            fp32_sps = statistics.median(r["samples_per_second"] for r in runs["fit-fp32"])
            plain_sps = statistics.median(r["samples_per_second"] for r in runs["plain"])
            rows.append({"architecture": key, "plan": job["plan"], "config": job["config"], "batch_size": job["batch_size"],
                         "patch": job["patch"], "iterations": args.iterations, "warmup": args.warmup, "pairs": args.pairs,
                         "threads": args.threads, "fit_samples_per_s": fit_sps, "fit_fp32_samples_per_s": fp32_sps,
                         "plain_samples_per_s": plain_sps, "fit_over_fp32": fit_sps / fp32_sps,
                         "fit_over_plain": fit_sps / plain_sps, "fit_runs": runs["fit"], "fit_fp32_runs": runs["fit-fp32"],
                         "plain_runs": runs["plain"]})
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_runs")}), flush=True)
    info = finish_machine(info)
    lines = ["| architecture | batch | fit samples/s | fit float32, contiguous (before) samples/s | fit / before | "
             "plain float32 loop samples/s | fit / plain |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['architecture']} ({Path(r['plan']).stem}) | {r['batch_size']} | {r['fit_samples_per_s']:.2f} | "
                     f"{r['fit_fp32_samples_per_s']:.2f} | {r['fit_over_fp32']:.2f} | "
                     f"{r['plain_samples_per_s']:.2f} | {r['fit_over_plain']:.2f} |")
    notes = [f"{args.iterations} iterations per process, the first {args.warmup} not measured; median over {args.pairs} "
             "alternating pairs of fresh processes; same threads, network, sampler (MONAI augmentation) and loss.",
             "fit additionally does the lr schedule, gradient clipping, loss logging and its progress bar per iteration; "
             "by default it trains networks that prefer bfloat16 (all three engine networks) in bf16 autocast on CPUs "
             "with native bf16, and 2D networks in channels-last memory; 'before' is fit with --no-amp --no-channels-last."]
    write_results(args.name, {"machine": info, "rows": rows}, lines, notes)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
