"""The network's achieved GFLOP/s during inference against the best single convolution torch reaches here.

1. Roof: a sweep of single 3D and 2D convolutions (3x3(x3) and pointwise 1x1(x1), shapes and channel
   counts like the networks' stages, contiguous and channels-last) timed with eager PyTorch under
   ``torch.inference_mode``, in fp32 and, on CPUs with native bfloat16, in bfloat16; the best GFLOP/s
   per precision is the machine's practical convolution limit for torch in that precision. A network
   is compared with the roof of the precision the engine runs it in (a bf16 network against fp32's
   roof would flatter it).
2. Networks: ``e2miseg.predict`` on real volumes with the engine's own runtime (OpenVINO on the CPU,
   the default) and with eager PyTorch; every network call is timed from outside the engine, and its
   FLOPs are counted once per batch shape with ``torch.utils.flop_counter.FlopCounterMode``
   (convolutions, matrix products, attention; 2 FLOPs per multiply-add, the convention of the sweep).
   Achieved = FLOPs of all calls / time inside the calls (stitching and resampling excluded).
3. Layer-wise bound: every convolution and linear layer the network runs, with the input shape the
   engine feeds it, is timed alone with eager torch (best of contiguous and channels-last, in the
   roof's precision). FLOPs of those layers / the sum of their best times is what the network would
   reach if each of its layers ran as fast as torch runs that layer on its own, with nothing between
   them: an upper bound for an implementation of this architecture built from these layers, and so
   the answer to whether the 60 % target is reachable without changing the architecture.

    .venv/bin/python benchmarks/conv_roofline.py [--threads 2] [--only e2miseg,ehanet,s2anet]

Writes benchmarks/results/conv_roofline.{json,md}. Target (issue 7): >= 60 % of the roof.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import finish_machine, machine, network_calls_timed, write_results  # noqa: E402

TARGET_SHARE = 0.60
# (batch, in, out, spatial): the E2MISeg hippocampus stages (patch 32x48x32, stem 2) and CT-sized windows
CONV3D_SHAPES = [
    (2, 16, 16, (32, 48, 32)), (2, 16, 16, (16, 24, 16)), (2, 32, 32, (8, 12, 8)), (2, 32, 32, (16, 24, 16)),
    (1, 32, 32, (32, 32, 32)), (1, 64, 64, (16, 16, 16)), (1, 64, 64, (32, 32, 32)), (1, 128, 128, (16, 16, 16)),
    (2, 64, 64, (8, 12, 8)), (1, 128, 128, (8, 8, 8)),
]
# (dims, batch, in, out, spatial) pointwise (1x1) convolutions: plain matrix products, which can run
# closer to the machine's peak than a 3x3 convolution (the networks have many of them)
POINTWISE_SHAPES = [(3, 1, 128, 128, (16, 16, 16)), (3, 2, 64, 64, (16, 24, 16)), (2, 8, 128, 128, (64, 64)),
                    (2, 8, 256, 256, (32, 32))]
# EHANet / S2aNet-like 2D stages (8 slices per pass as the engine batches them)
CONV2D_SHAPES = [
    (8, 32, 32, (128, 128)), (8, 64, 64, (64, 64)), (8, 64, 64, (128, 128)), (8, 128, 128, (32, 32)),
    (8, 128, 128, (64, 64)), (8, 256, 256, (16, 16)), (8, 256, 256, (32, 32)),
]


def time_call(fn, min_seconds: float, min_repeats: int = 3) -> float:
    """Median seconds per call after two warm-up calls, repeating for at least ``min_seconds``."""
    fn()
    fn()
    times = []
    started = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def conv_sweep(min_seconds: float, dtypes: tuple[str, ...] = ("f32",)) -> list[dict]:
    return [row for dtype in dtypes for row in _conv_sweep(min_seconds, dtype)]


def _conv_sweep(min_seconds: float, dtype: str) -> list[dict]:
    import torch

    torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    rows = []
    jobs = ([(3, 3) + shape for shape in CONV3D_SHAPES] + [(2, 3) + shape for shape in CONV2D_SHAPES]
            + [(dims, 1) + tuple(shape) for dims, *shape in POINTWISE_SHAPES])
    with torch.inference_mode():
        for dims, kernel, batch, cin, cout, spatial in jobs:
            conv_cls = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
            conv = conv_cls(cin, cout, kernel, padding=kernel // 2, bias=True).eval().to(torch_dtype)
            x = torch.randn(batch, cin, *spatial, dtype=torch_dtype)
            flops = 2 * batch * cout * cin * kernel ** dims * int(torch.tensor(spatial).prod())
            formats = [("contiguous", torch.contiguous_format),
                       ("channels_last", torch.channels_last_3d if dims == 3 else torch.channels_last)]
            for fmt_name, fmt in formats:
                layer = conv.to(memory_format=fmt)
                inp = x.contiguous(memory_format=fmt)
                seconds = time_call(lambda: layer(inp), min_seconds)
                rows.append({"dtype": dtype, "dims": dims, "kernel": kernel, "batch": batch, "in": cin, "out": cout,
                             "spatial": list(spatial), "memory_format": fmt_name, "seconds": seconds,
                             "gflops": flops / 1e9, "gflop_per_s": flops / seconds / 1e9})
            print(f"{dtype} conv{dims}d k{kernel} {batch}x{cin}->{cout} {spatial}: "
                  + ", ".join(f"{r['memory_format']} {r['gflop_per_s']:.1f}" for r in rows[-2:]) + " GFLOP/s", flush=True)
    return rows


def count_flops(model, shape: tuple[int, ...]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.randn(*shape))
    return int(counter.get_total_flops())


def network_rate(model_name: str, images: list[str], runtime: str, repeats: int) -> dict:
    """Predict ``images`` ``repeats`` times (after one untimed warm-up) with the engine; time its network calls."""
    import e2miseg

    model, card = e2miseg.load_model(model_name, device="cpu")
    calls: list[tuple[tuple[int, ...], float]] = []
    precisions: set[str] = set()

    def record(shape: tuple[int, ...], seconds: float, precision: str) -> None:
        calls.append((shape, seconds))
        precisions.add(precision)

    with network_calls_timed(record):
        for image in images:  # warm-up: OpenVINO conversion/compilation of every batch shape
            e2miseg.predict(image, model, runtime=runtime)
        calls.clear()
        started = time.perf_counter()
        for _ in range(repeats):
            for image in images:
                e2miseg.predict(image, model, runtime=runtime)
        wall = time.perf_counter() - started
    flops_by_shape = {shape: count_flops(model, shape) for shape in {s for s, _ in calls}}
    flops = sum(flops_by_shape[s] for s, _ in calls)
    network = sum(t for _, t in calls)
    return {"model": card["name"], "kind": card["inference"]["kind"], "runtime": runtime,
            "precision": "/".join(sorted(precisions)),
            "images": [Path(i).name for i in images], "repeats": repeats, "calls": len(calls),
            "batch_shapes": sorted({"x".join(map(str, s)) for s, _ in calls}),
            "calls_by_shape": dict(Counter("x".join(map(str, s)) for s, _ in calls)),
            "gflop_total": flops / 1e9, "gflop_per_call": {"x".join(map(str, s)): f / 1e9 for s, f in flops_by_shape.items()},
            "network_seconds": network, "predict_wall_seconds": wall, "gflop_per_s": flops / network / 1e9}


def network_layers(model, shape: tuple[int, ...]) -> list[tuple[object, tuple[int, ...]]]:
    """(layer, input shape) for every convolution / linear call of one forward pass at ``shape``."""
    import torch

    kinds = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d, torch.nn.Linear)
    seen: list[tuple[object, tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, tuple(args[0].shape))))
             for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.inference_mode():
            model(torch.randn(*shape))
    finally:
        for h in hooks:
            h.remove()
    return seen


def layer_bound(model, shape: tuple[int, ...], dtype: str, min_seconds: float) -> dict:
    """Sum of FLOPs / sum of best isolated times of the network's own conv and linear layers at ``shape``."""
    import copy

    import torch

    torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    timed: dict[tuple, tuple[float, float]] = {}  # identical layers (same type, config, shape) are timed once
    flops_total = seconds_total = 0.0
    calls: dict[tuple, int] = {}
    layers = network_layers(model, shape)
    for layer, in_shape in layers:
        key = (repr(layer), in_shape)
        if key not in timed:
            flops = count_flops(layer, in_shape)  # the count does not depend on the precision
            alone = copy.deepcopy(layer).eval().to(torch_dtype)
            x = torch.randn(*in_shape, dtype=torch_dtype)
            formats = [torch.contiguous_format]
            if x.dim() in (4, 5):
                formats.append(torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
            best = float("inf")
            with torch.inference_mode():
                for fmt in formats:
                    alone_fmt = alone.to(memory_format=fmt) if x.dim() in (4, 5) else alone
                    inp = x.contiguous(memory_format=fmt)
                    best = min(best, time_call(lambda: alone_fmt(inp), min_seconds))
            timed[key] = (float(flops), best)
        flops, seconds = timed[key]
        flops_total += flops
        seconds_total += seconds
        calls[key] = calls.get(key, 0) + 1
    per_layer = sorted(({"layer": k[0], "input": "x".join(map(str, k[1])), "calls": calls[k], "gflop": f / 1e9,
                         "seconds": t, "gflop_per_s": f / t / 1e9 if t else 0.0} for k, (f, t) in timed.items()),
                       key=lambda r: -r["seconds"] * r["calls"])
    return {"dtype": dtype, "batch_shape": "x".join(map(str, shape)), "layer_calls": len(layers), "distinct_layers": len(timed),
            "layer_gflop": flops_total / 1e9, "layer_seconds": seconds_total,
            "gflop_per_s": flops_total / seconds_total / 1e9 if seconds_total else 0.0,
            "layers_by_time": per_layer[:12]}


def default_models(only: set[str], volumes: int) -> list[tuple[str, list[str]]]:
    from edges_common import validation_cases

    chosen = {
        "e2miseg": ("e2miseg-hippocampus", "Task04_Hippocampus"),
        "ehanet": ("ehanet-acdc", "ACDC"),
        "s2anet": ("s2anet-leftatrium", "LeftAtrium2018"),
    }
    return [(model, [str(p) for p, _ in validation_cases(dataset)[:volumes]])
            for key, (model, dataset) in chosen.items() if key in only]


def shares(row: dict, best_of: dict, best_by_dims_of: dict) -> dict:
    """The network's GFLOP/s as shares of the roof of its own precision (and of the fp32 roof).

    A network that ran (partly) in bfloat16 is held to the bfloat16 roof when the sweep has one.
    """
    dims = 3 if row["kind"] == "3d" else 2
    own = "bf16" if "bf16" in row["precision"] and "bf16" in best_of else "f32"
    return {"roof_precision": own,
            "share_of_best_conv": row["gflop_per_s"] / best_of[own]["gflop_per_s"],
            "share_of_best_conv_same_dims": row["gflop_per_s"] / best_by_dims_of[own][dims]["gflop_per_s"],
            "share_of_best_f32_conv": row["gflop_per_s"] / best_of["f32"]["gflop_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="e2miseg,ehanet,s2anet", help="networks to measure (comma-separated)")
    parser.add_argument("--model", action="append", nargs="+", metavar=("MODEL", "IMAGE"),
                        help="measure MODEL on IMAGE(s) instead of the defaults (repeatable)")
    parser.add_argument("--volumes", type=int, default=3, help="validation volumes per default network")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the volumes")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timing per convolution shape")
    parser.add_argument("--runtimes", default="openvino,torch")
    parser.add_argument("--layer-seconds", type=float, default=0.2, help="timing per layer for the layer-wise bound")
    parser.add_argument("--name", default="conv_roofline")
    args = parser.parse_args()

    import os
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    # a private OpenVINO cache: conversion happens in the untimed warm-up, the user's cache is untouched
    os.environ.setdefault("E2MISEG_CACHE", tempfile.mkdtemp(prefix="e2miseg-roofline-"))
    import e2miseg
    from e2miseg.runtime import native_bf16

    info = machine(args.threads)
    dtypes = ("f32", "bf16") if native_bf16() else ("f32",)
    sweep = conv_sweep(args.min_seconds, dtypes)
    best_of = {t: max((r for r in sweep if r["dtype"] == t), key=lambda r: r["gflop_per_s"]) for t in dtypes}
    best_by_dims_of = {t: {d: max((r for r in sweep if r["dims"] == d and r["dtype"] == t), key=lambda r: r["gflop_per_s"])
                           for d in (2, 3)} for t in dtypes}
    best, best_by_dims = best_of["f32"], best_by_dims_of["f32"]
    jobs = [(m[0], m[1:]) for m in args.model] if args.model else default_models(set(args.only.split(",")), args.volumes)
    networks = []
    for model, images in jobs:
        for runtime in args.runtimes.split(","):
            row = network_rate(model, images, runtime, args.repeats)
            row.update(shares(row, best_of, best_by_dims_of))
            own = row["roof_precision"]
            # the engine's most frequent batch shape, layers timed in the roof's precision
            shape = max(row["batch_shapes"], key=lambda s: row["calls_by_shape"][s])
            bound = layer_bound(e2miseg.load_model(model, device="cpu")[0], tuple(int(v) for v in shape.split("x")),
                                own, args.layer_seconds)
            bound["share_of_best_conv"] = bound["gflop_per_s"] / best_of[own]["gflop_per_s"]
            row["layer_bound"] = bound
            networks.append(row)
            print(f"{row['model']} {runtime} {row['precision']}: {row['gflop_per_s']:.1f} GFLOP/s "
                  f"({100 * row['share_of_best_conv']:.0f} % of the best {own} convolution); its layers alone: "
                  f"{bound['gflop_per_s']:.1f} GFLOP/s ({100 * bound['share_of_best_conv']:.0f} %)", flush=True)
    info = finish_machine(info)

    def describe(r: dict) -> str:
        return (f"conv{r['dims']}d k{r.get('kernel', 3)} {r['batch']}x{r['in']}->{r['out']} {'x'.join(map(str, r['spatial']))} "
                f"{r['memory_format']}: {r['gflop_per_s']:.1f} GFLOP/s")

    lines = []
    for t in dtypes:
        lines += [f"Best single {t} convolution (eager torch): {describe(best_of[t])}",
                  f"Best {t} 3D: {describe(best_by_dims_of[t][3])}; best {t} 2D: {describe(best_by_dims_of[t][2])}"]
    lines += ["", "| network | runtime | precision | volumes × repeats | calls | GFLOP | network s | GFLOP/s | "
              "share of best conv in its precision (target ≥ 60 %) | share of best same-dim conv | share of best fp32 conv | "
              "layer-wise bound GFLOP/s (share of best conv) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in networks:
        lines.append(f"| {r['model']} ({r['kind']}) | {r['runtime']} | {r['precision']} | {len(r['images'])} × {r['repeats']} | "
                     f"{r['calls']} | {r['gflop_total']:.1f} | {r['network_seconds']:.2f} | {r['gflop_per_s']:.1f} | "
                     f"{100 * r['share_of_best_conv']:.0f} % | {100 * r['share_of_best_conv_same_dims']:.0f} % | "
                     f"{100 * r['share_of_best_f32_conv']:.0f} % | "
                     f"{r['layer_bound']['gflop_per_s']:.1f} ({100 * r['layer_bound']['share_of_best_conv']:.0f} %) |")
    notes = ["FLOPs: FlopCounterMode (2 per multiply-add; convolutions, matrix products, attention) per batch shape the "
             "engine fed the network; network time: wall time inside the engine's network calls only.",
             "Layer-wise bound: each convolution and linear layer of the network, at the input shape the engine's most "
             "frequent batch gives it, timed alone with eager torch in the roof's precision (best of contiguous and "
             "channels-last); their FLOPs over the sum of those times. No implementation built from these layers can "
             "beat it by much, so a bound under 60 % means the target needs a different architecture, not faster code.",
             f"The sweep ({len(sweep)} timings) is in the JSON file."]
    write_results(args.name, {"machine": info, "best_conv": best, "best_conv_by_dims": {str(k): v for k, v in best_by_dims.items()},
                              "best_conv_by_precision": best_of,
                              "target_share": TARGET_SHARE, "networks": networks, "sweep": sweep}, lines, notes)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
