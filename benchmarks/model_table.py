"""Size / compute / CPU-speed table of the networks (run by hand, prints Markdown).

    PYTHONPATH=E2MISegModule .venv/bin/python benchmarks/model_table.py [--threads 1] [--only NAME]

GFLOPs come from ``torch.utils.flop_counter`` (2 FLOPs per multiply-add; counts convs, matmuls and
attention, not element-wise ops) for one eval-mode forward pass of batch 1. Time is the wall
clock of one further forward pass (after the counted pass, which also warms up) under
``torch.no_grad()`` with the given number of threads.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from e2miseg.models import PAPER_CONFIGS, SMALL_CONFIGS, build_preset
from e2miseg.models.blocks import count_parameters

PLANE = {"ehanet_paper": 256, "ehanet_small": 256, "s2anet_paper": 512, "s2anet_small": 256}


def example_input(preset: str, model: torch.nn.Module) -> torch.Tensor:
    if model.kind == "3d":
        return torch.randn(1, model.in_channels, *model.required_input_size)
    size = PLANE[preset]
    channels = model.in_channels * getattr(model, "slices", 1)
    return torch.randn(1, channels, size, size)


def measure(preset: str) -> dict[str, object]:
    model = build_preset(preset).eval()
    x = example_input(preset, model)
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        with counter:
            model(x)
        start = time.perf_counter()
        model(x)
        seconds = time.perf_counter() - start
    return {
        "preset": preset, "arch": model.arch_name, "kind": model.kind,
        "input": "x".join(str(s) for s in x.shape[1:]),
        "params": count_parameters(model) / 1e6,
        "trainable": count_parameters(model, trainable_only=True) / 1e6,
        "gflops": counter.get_total_flops() / 1e9, "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--only", nargs="*", help="preset names to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    presets = args.only or [*PAPER_CONFIGS, *SMALL_CONFIGS]
    print(f"CPU forward time per patch, batch 1, eval mode, torch {torch.__version__}, "
          f"{args.threads} thread(s); GFLOPs from torch.utils.flop_counter.\n")
    print("| preset | arch | kind | input (C x spatial) | params (M) | trainable (M) | GFLOPs | CPU s/patch |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for preset in presets:
        r = measure(preset)
        print(f"| {r['preset']} | {r['arch']} | {r['kind']} | {r['input']} | {r['params']:.2f} | "
              f"{r['trainable']:.2f} | {r['gflops']:.1f} | {r['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
