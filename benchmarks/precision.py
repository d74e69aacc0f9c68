"""bfloat16 against fp32 for the bundled models: speed of the network and what it does to the labels.

The accuracy check behind ``precision="auto"`` (e2miseg/runtime.py): each bundled model segments
validation cases of its dataset with the engine (OpenVINO on the CPU) twice, in fp32 and in bfloat16
(with the layers the runtime keeps in fp32), alternating; reported per model: the
network's time per case (median), the voxels whose label changes, and the Dice against the reference
labels in both precisions. Only meaningful on a CPU with native bfloat16 (AVX512-BF16 or AMX).

    .venv/bin/python benchmarks/precision.py [--cases 6] [--threads 2]

Writes benchmarks/results/precision.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import finish_machine, machine, network_calls_timed, write_results  # noqa: E402

MODELS = {"e2miseg-hippocampus": "Task04_Hippocampus", "ehanet-acdc": "ACDC", "s2anet-leftatrium": "LeftAtrium2018"}
PRECISIONS = ("f32", "bf16")


def measure(model_name: str, dataset: str, cases: int) -> dict:
    import SimpleITK as sitk

    import e2miseg
    from edges_common import validation_cases

    from e2miseg_train.validation import dice

    model, card = e2miseg.load_model(model_name, device="cpu")
    labels = [int(label["value"]) for label in card["labels"]]
    spent = {"seconds": 0.0}

    def record(shape: tuple[int, ...], seconds: float, precision: str) -> None:
        spent["seconds"] += seconds

    rows = []
    with network_calls_timed(record):
        for image, reference in validation_cases(dataset)[:cases]:
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
            out, seconds = {}, {}
            for precision in PRECISIONS:  # untimed warm-up of this shape in both precisions
                e2miseg.predict(str(image), model, runtime="openvino", precision=precision)
            for precision in PRECISIONS:
                times = []
                for _ in range(3):
                    spent["seconds"] = 0.0
                    result = e2miseg.predict(str(image), model, runtime="openvino", precision=precision)
                    times.append(spent["seconds"])
                out[precision] = sitk.GetArrayFromImage(result)
                seconds[precision] = statistics.median(times)
            changed = out["f32"] != out["bf16"]
            foreground = (out["f32"] > 0) | (out["bf16"] > 0)
            rows.append({"case": Path(image).name, "network_seconds": seconds,
                         "changed_voxels": float(changed.mean()),
                         "changed_foreground": float(changed[foreground].mean()) if foreground.any() else 0.0,
                         "dice": {p: {str(k): dice(out[p] == k, ref == k) for k in labels} for p in PRECISIONS}})
            print(f"{model_name} {rows[-1]['case']}: f32 {seconds['f32']:.3f} s, bf16 {seconds['bf16']:.3f} s, "
                  f"{100 * rows[-1]['changed_voxels']:.3f} % voxels changed", flush=True)
    speedup = statistics.median(r["network_seconds"]["f32"] / r["network_seconds"]["bf16"] for r in rows)
    mean_dice = {p: {str(k): statistics.mean(r["dice"][p][str(k)] for r in rows) for k in labels} for p in PRECISIONS}
    return {"model": model_name, "architecture": card["architecture"]["name"], "cases": rows,
            "network_speedup_bf16": speedup, "mean_dice": mean_dice,
            "max_changed_voxels": max(r["changed_voxels"] for r in rows),
            "auto_precision": _auto_precision(model),
            "label_names": {str(l["value"]): l["name"] for l in card["labels"]}}


def _auto_precision(model) -> str:
    import torch

    from e2miseg.runtime import resolve_precision

    return resolve_precision("auto", "openvino", torch.device("cpu"), model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=6, help="validation cases per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(MODELS))
    args = parser.parse_args()

    import os
    import tempfile

    import torch

    from e2miseg.runtime import native_bf16

    if not native_bf16():
        print("this CPU has no native bfloat16 arithmetic: nothing to compare (precision auto is fp32 here)")
        return
    torch.set_num_threads(args.threads)
    os.environ.setdefault("E2MISEG_CACHE", tempfile.mkdtemp(prefix="e2miseg-precision-"))
    info = machine(args.threads)
    results = [measure(name, MODELS[name], args.cases) for name in args.only.split(",")]
    info = finish_machine(info)
    lines = ["| model | auto picks | cases | network time fp32 / bf16 (median per case) | voxels changed (max) | "
             "Dice fp32 → bf16 (mean per label) |", "|---|---|---:|---:|---:|---|"]
    for r in results:
        dice_text = "; ".join(f"{r['label_names'][k]} {r['mean_dice']['f32'][k]:.4f} → {r['mean_dice']['bf16'][k]:.4f}"
                              for k in r["mean_dice"]["f32"])
        lines.append(f"| {r['model']} | {r['auto_precision']} | {len(r['cases'])} | {r['network_speedup_bf16']:.2f}× | "
                     f"{100 * r['max_changed_voxels']:.3f} % | {dice_text} |")
    notes = ["bf16: OpenVINO with INFERENCE_PRECISION_HINT bf16, the layers the network names kept fp32 "
             "(default FP32_LAYERS: normalisation, softmax; E2MISeg: its depthwise dilated convolutions); network time = "
             "seconds inside the engine's network calls, median of 3 per case and precision.",
             "auto picks bf16 for networks with prefers_bf16 (all three bundled ones) on CPUs with native bfloat16."]
    write_results("precision", {"machine": info, "models": results}, lines, notes)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
