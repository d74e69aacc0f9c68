"""E2MISeg's predictor against the pipeline a user would write with MONAI + SimpleITK, in one run.

For each (checkpoint, volume) pair both pipelines run alternately in fresh subprocesses (so peak
resident memory is each pipeline's own), several times; we report the median time ratio
MONAI / E2MISeg, the voxel agreement of the two label maps, peak RSS of each, and E2MISeg's share of
time outside the network. Run by hand (never from the tests):

    .venv/bin/python benchmarks/inference_vs_monai.py --pairs 3 [--ct-sized] [--threads 2]

Writes benchmarks/results/inference_vs_monai.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "E2MISegModule"))
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"


# --------------------------------------------------------------------------- the two pipelines

def run_e2miseg(model_path: str, image_path: str, out_path: str, threads: int) -> dict:
    import torch

    import e2miseg

    torch.set_num_threads(threads)
    start = time.perf_counter()
    stage_start: dict[str, float] = {}
    stage_time: dict[str, float] = {}

    def on_progress(event) -> None:
        now = time.perf_counter()
        stage_start.setdefault(event.stage, now)
        stage_time[event.stage] = now - stage_start[event.stage]

    model, card = e2miseg.load_model(model_path, device="cpu")
    load_s = time.perf_counter() - start
    labels = e2miseg.predict(image_path, model, progress=on_progress)
    import SimpleITK as sitk

    sitk.WriteImage(labels, out_path, useCompression=True)
    total = time.perf_counter() - start
    network = stage_time.get("infer", 0.0)
    return {"seconds": total, "network_seconds": network, "outside_share": 1 - network / total, "model_load_seconds": load_s}


def run_monai(model_path: str, image_path: str, out_path: str, threads: int) -> dict:
    """What a user would write: resample to the card's spacing, normalise, MONAI sliding window /
    slice inference with Gaussian weighting and 50 % overlap, resample probabilities back, argmax."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.inferers import SliceInferer, sliding_window_inference

    from e2miseg.api import build_from_card
    from e2miseg.checkpoint import load_weights_into, read_checkpoint

    torch.set_num_threads(threads)
    start = time.perf_counter()
    tensors, card = read_checkpoint(model_path)
    model = build_from_card(card)
    load_weights_into(model, tensors, "peer")
    model.eval()
    image = sitk.ReadImage(image_path, sitk.sitkFloat32)
    settings, prep = card["inference"], card["preprocessing"]
    target = prep["target_spacing_xyz"] or list(image.GetSpacing())
    if settings["kind"] != "3d":  # 2D models keep the native through-plane spacing
        target = list(target)
        target[{"x": 0, "y": 1, "z": 2}[settings["slice_axis"]]] = image.GetSpacing()[{"x": 0, "y": 1, "z": 2}[settings["slice_axis"]]]
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), target)]
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), target, image.GetDirection())
    array = sitk.GetArrayFromImage(resampled)
    array = (array - array.mean()) / max(array.std(), 1e-8)
    x = torch.from_numpy(array)[None, None]

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(batch), 1)

    with torch.inference_mode():
        if settings["kind"] == "3d":
            probs = sliding_window_inference(x, settings["patch_size_zyx"], settings["batch_size"], predictor,
                                             overlap=0.5, mode="gaussian")
        else:
            axis = {"z": 2, "y": 3, "x": 4}[settings["slice_axis"]]
            divisor = int(getattr(model, "size_divisor", 1))
            in_plane = [s for d, s in enumerate(x.shape[2:], start=2) if d != axis]
            roi = [int(np.ceil(s / divisor) * divisor) for s in in_plane]
            k = settings.get("slices", 1)
            if k > 1:  # 2.5D: MONAI's SliceInferer feeds one slice; stack neighbours as channels ourselves
                half = k // 2
                moved = torch.movedim(x, axis, 2)
                idx = torch.arange(moved.shape[2])
                stacks = torch.cat([moved[:, :, (idx + o).clamp(0, moved.shape[2] - 1)] for o in range(-half, half + 1)], 1)
                x, axis = torch.movedim(stacks, 2, axis), axis
            inferer = SliceInferer(roi_size=roi, sw_batch_size=settings["batch_size"] * 4, spatial_dim=axis - 2,
                                   overlap=0.5, mode="gaussian", padding_mode="constant")
            probs = inferer(x, predictor)
    probs = probs[0].numpy()
    labels_net = None
    best = None
    for k in range(probs.shape[0]):
        channel = sitk.GetImageFromArray(probs[k])
        channel.CopyInformation(resampled)
        back = sitk.GetArrayFromImage(sitk.Resample(channel, image, sitk.Transform(), sitk.sitkLinear, 0.0))
        if best is None:
            best, labels_net = back, np.zeros(back.shape, np.uint8)
        else:
            better = back > best
            labels_net[better] = k
            best = np.maximum(best, back)
    out = sitk.GetImageFromArray(labels_net)
    out.CopyInformation(image)
    sitk.WriteImage(out, out_path, useCompression=True)
    return {"seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------- harness

def child(args) -> None:
    runner = run_e2miseg if args.pipeline == "e2miseg" else run_monai
    result = runner(args.model, args.image, args.out, args.threads)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_child(pipeline: str, model: str, image: str, out: str, threads: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", pipeline, "--model", model, "--image", image, "--out", out,
                           "--threads", str(threads)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{pipeline} failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a: str, b: str) -> float:
    import numpy as np
    import SimpleITK as sitk

    return float(np.mean(sitk.GetArrayViewFromImage(sitk.ReadImage(a)) == sitk.GetArrayViewFromImage(sitk.ReadImage(b))))


def ct_sized_volume(folder: Path) -> str:
    """A 512x512x200 single-channel volume (0.8 x 0.8 x 2 mm) with smooth synthetic anatomy."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.linspace(-1, 1, 200), np.linspace(-1, 1, 512), np.linspace(-1, 1, 512), indexing="ij")
    body = (x ** 2 + y ** 2 < 0.8).astype(np.float32)
    volume = body * (40 + 200 * ((x - 0.2) ** 2 + y ** 2 + z ** 2 < 0.1)) + rng.normal(0, 10, body.shape)
    image = sitk.GetImageFromArray(volume.astype(np.float32) - 1000 * (1 - body))
    image.SetSpacing((0.8, 0.8, 2.0))
    path = folder / "ct_sized.nrrd"
    sitk.WriteImage(image, str(path))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=["e2miseg", "monai"])
    parser.add_argument("--model", default=str(ROOT / "E2MISegModule/Resources/Models/e2miseg-hippocampus.safetensors"))
    parser.add_argument("--image", action="append")
    parser.add_argument("--out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--ct-sized", action="store_true", help="add a 512x512x200 volume")
    parser.add_argument("--name", default="inference_vs_monai")
    args = parser.parse_args()
    if args.child:
        args.pipeline = args.child
        args.image = args.image[0]
        child(args)
        return
    images = args.image or [str(SHARED / "Task04_Hippocampus/imagesTr/hippocampus_008.nii.gz"),
                            str(SHARED / "Task04_Hippocampus/imagesTr/hippocampus_020.nii.gz")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.ct_sized:
            images.append(ct_sized_volume(tmp))
        for image in images:
            runs = {"e2miseg": [], "monai": []}
            for pair in range(args.pairs):
                order = ("e2miseg", "monai") if pair % 2 == 0 else ("monai", "e2miseg")  # alternate who goes first
                for pipeline in order:
                    runs[pipeline].append(run_child(pipeline, args.model, image, str(tmp / f"{pipeline}.nii.gz"), args.threads))
            ratio = statistics.median(m["seconds"] / e["seconds"] for m, e in zip(runs["monai"], runs["e2miseg"]))
            rows.append({
                "image": Path(image).name, "model": Path(args.model).name, "threads": args.threads,
                "e2miseg_s": statistics.median(r["seconds"] for r in runs["e2miseg"]),
                "monai_s": statistics.median(r["seconds"] for r in runs["monai"]),
                "speedup_monai_over_e2miseg": ratio,
                "agreement": agreement(str(tmp / "e2miseg.nii.gz"), str(tmp / "monai.nii.gz")),
                "e2miseg_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["e2miseg"]),
                "monai_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["monai"]),
                "e2miseg_outside_network_share": statistics.median(r["outside_share"] for r in runs["e2miseg"]),
            })
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, {platform.python_version()}"
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = [f"Machine: {machine}", "", "| image | E2MISeg s | MONAI s | MONAI/E2MISeg | agreement | RSS E2MISeg MB | RSS MONAI MB | outside network |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['image']} | {r['e2miseg_s']:.2f} | {r['monai_s']:.2f} | {r['speedup_monai_over_e2miseg']:.2f}× | "
                     f"{100 * r['agreement']:.2f} % | {r['e2miseg_peak_rss_mb']:.0f} | {r['monai_peak_rss_mb']:.0f} | "
                     f"{100 * r['e2miseg_outside_network_share']:.0f} % |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
