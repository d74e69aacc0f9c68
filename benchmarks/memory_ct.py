"""Peak resident memory of a CT-sized prediction: 512x512x200, one channel, a 4-class E2MISeg.

The target (issue 7): at most 3 GB for the whole process, with no full-resolution float buffer per
class. A synthetic CT (body ellipse, lungs, liver, kidneys, spine; 0.8 x 0.8 x 2.5 mm, int16 HU)
and an untrained 4-class E2MISeg checkpoint with a real configuration (1.5 mm network grid,
64x128x128 patch) are made once in the work folder; then ``e2miseg predict`` runs in a fresh
process per engine, which reports its peak resident set (VmHWM, the whole process) and wall time. ``--reference REV`` runs the engine of a git revision as well (the
design before slab-wise stitching, for example) and reports how many voxels the two agree on.
One API run of the current engine adds the time per stage (``predict(timings=...)``), and a run
per engine with a 1x1x1 convolution in place of the network measures the pipeline alone (its
buffers above the process's starting point, and its time: reading, preprocessing, stitching,
resampling back, labelling).

    .venv/bin/python benchmarks/memory_ct.py [--reference 29441b5] [--step 0.8] [--threads 1]

The network's cost does not change the memory (the stitching band is one patch deep whatever the
step), so the default step is the card's fast step, to keep a run to minutes on a shared 2-core
machine. Writes benchmarks/results/memory_ct.{json,md}. Run by hand, never from the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SIZE_XYZ = (512, 512, 200)
SPACING_XYZ = (0.8, 0.8, 2.5)
PATCH_ZYX = (64, 128, 128)
LIMIT_BYTES = 3 * 10**9
ORGANS = [("Liver", [0.87, 0.49, 0.38], 60), ("Kidney", [0.72, 0.24, 0.22], 30), ("Spleen", [0.62, 0.35, 0.55], 45)]


def ct_volume(path: Path) -> None:
    """A CT-like int16 volume in HU, built slab by slab."""
    import SimpleITK as sitk

    nx, ny, nz = SIZE_XYZ
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    x, y = (x - nx / 2) * SPACING_XYZ[0], (y - ny / 2) * SPACING_XYZ[1]  # mm from the centre
    volume = np.empty((nz, ny, nx), dtype=np.int16)
    for k in range(nz):
        z = (k - nz / 2) * SPACING_XYZ[2]
        body = (x / 170) ** 2 + (y / 120) ** 2 <= 1
        slab = np.full((ny, nx), -1000.0, dtype=np.float32)
        slab[body] = -90  # fat
        slab[(x / 150) ** 2 + (y / 100) ** 2 <= 1] = 40  # muscle and organs
        if z > 40:  # lungs in the upper slices
            for side in (-1, 1):
                slab[((x - side * 75) / 60) ** 2 + ((y + 10) / 70) ** 2 <= 1] = -850
        if -120 < z < 80:
            slab[((x + 60) / 75) ** 2 + ((y + 15) / 60) ** 2 + ((z + 20) / 90) ** 2 <= 1] = 60  # liver
            slab[((x - 70) / 40) ** 2 + ((y + 20) / 35) ** 2 + ((z + 10) / 50) ** 2 <= 1] = 45  # spleen
        for side in (-1, 1):  # kidneys
            slab[((x - side * 65) / 28) ** 2 + ((y - 45) / 22) ** 2 + ((z + 60) / 50) ** 2 <= 1] = 30
        slab[(x / 18) ** 2 + ((y - 75) / 18) ** 2 <= 1] = 700  # vertebra
        slab += rng.normal(0, 12, slab.shape).astype(np.float32)
        volume[k] = np.clip(slab, -1024, 3071)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((-204.4, -204.4, -250.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def ct_checkpoint(path: Path) -> None:
    """An untrained 4-class E2MISeg with a real configuration, in the real checkpoint format."""
    sys.path.insert(0, str(ROOT / "E2MISegModule"))
    sys.path.insert(0, str(ROOT / "Testing"))
    import torch
    from helpers import make_card, small_e2miseg_config

    from e2miseg.card import validate_card
    from e2miseg.checkpoint import save_checkpoint
    from e2miseg.models import build_model

    torch.manual_seed(0)
    config = small_e2miseg_config(patch=PATCH_ZYX, num_classes=1 + len(ORGANS))
    config.update(stem_kernel=[4, 4, 4], dims=[16, 16, 32, 32])
    labels = [{"value": i + 1, "name": name, "color": color} for i, (name, color, _) in enumerate(ORGANS)]
    card = make_card("3d", "e2miseg", config, PATCH_ZYX, labels=labels, spacing=(1.5, 1.5, 1.5), step=0.5, fast_step=0.8,
                     batch_size=2)
    card.update(name="ct-memory-benchmark", description="untrained: for memory and time measurements only")
    card["channels"] = [{"name": "CT", "modality": "CT"}]
    card["preprocessing"]["normalization"] = {"scheme": "ct", "lower": -1000, "upper": 1000, "mean": 0, "std": 500}
    save_checkpoint(path, build_model("e2miseg", **config).state_dict(), validate_card(card))


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: at exec the kernel folds the
    parent's high-water mark into ru_maxrss, so a child of a big parent would report the parent's."""
    with open("/proc/self/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))


def measured(command: list[str], env: dict) -> dict:
    """Run a worker (this file with ``--cli``/``--api``); its wall time and what it printed last."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out, tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        start = time.perf_counter()
        returncode = subprocess.run(command, env=env, stdout=out, stderr=err, check=False).returncode
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed:\n{stderr[-3000:]}")
    return {"seconds": seconds, **json.loads(stdout.strip().splitlines()[-1])}


def run_cli(engine: Path, image: Path, checkpoint: Path, out: Path, env: dict, step: float) -> dict:
    """``e2miseg predict`` in a fresh process (the CLI's own main, called by a worker that reports the peak)."""
    argv = ["predict", str(image), "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "--step", str(step)]
    return measured([sys.executable, __file__, "--cli", json.dumps(argv)], {**env, "PYTHONPATH": str(engine)})


def cli_worker(argv: list[str]) -> None:
    from e2miseg.cli import main as cli_main

    code = cli_main(argv)
    if code != 0:
        sys.exit(code)
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))


def api_worker(image: str, checkpoint: str, out: str, step: float) -> None:
    import e2miseg
    from e2miseg.io import write_result

    timings: dict[str, float] = {}
    start = time.perf_counter()
    model, card = e2miseg.load_model(checkpoint, device="cpu")
    load = time.perf_counter() - start
    labels = e2miseg.predict(image, model, card, step=step, timings=timings)
    write_start = time.perf_counter()
    write_result(labels, card, out)
    timings.update(load_model=load, write=time.perf_counter() - write_start, total=time.perf_counter() - start)
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "timings": timings}))


def pipeline_worker(image: str, checkpoint: str, step: float) -> None:
    """Everything but the network: a 1x1x1 convolution stands in for it (PyTorch runtime), so the
    peak above the starting point is the pipeline's own buffers and the time is its own work."""
    import torch

    import e2miseg
    from e2miseg.checkpoint import read_card

    card = read_card(checkpoint)

    class Pointwise(torch.nn.Module):
        kind = "3d"
        num_classes = 1 + len(ORGANS)

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, self.num_classes, 1)
            with torch.no_grad():  # intensity bands -> classes, so the labels have real boundaries
                self.conv.weight.copy_(torch.tensor([0.0, 3.0, 6.0, -3.0]).view(-1, 1, 1, 1, 1))
                self.conv.bias.copy_(torch.tensor([0.0, -1.0, -3.0, -2.0]))

        def forward(self, x):
            return self.conv(x)

    net = Pointwise().eval()
    with torch.inference_mode():
        net(torch.zeros((2, 1) + PATCH_ZYX))
    before = peak_rss_bytes()
    start = time.perf_counter()
    e2miseg.predict(image, net, card, device="cpu", runtime="torch", step=step)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_above_start_bytes": peak_rss_bytes() - before, "pipeline_seconds": seconds}))


def voxel_agreement(a: Path, b: Path) -> float:
    import slicerio

    first, second = slicerio.read_segmentation(str(a))["voxels"], slicerio.read_segmentation(str(b))["voxels"]
    return float(np.mean(first == second))


def _training_jobs() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import busy_processes

    busy = busy_processes()
    return f"{len(busy)} training job(s) running: timings not representative" if busy else "no training job running"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="git revision whose engine is measured as well")
    parser.add_argument("--step", type=float, default=0.8, help="sliding-window step (default: the card's fast step)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "e2miseg-memory-ct"))
    parser.add_argument("--api", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--cli", help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline:
        pipeline_worker(*args.pipeline, step=args.step)
        return
    if args.api:
        api_worker(*args.api, step=args.step)
        return
    if args.cli:
        cli_worker(json.loads(args.cli))
        return
    workdir = Path(args.workdir)
    image, checkpoint = workdir / "ct_512x512x200.nii.gz", workdir / "ct4.safetensors"
    if not image.exists():
        print("making the synthetic CT volume", file=sys.stderr)
        ct_volume(image)
    if not checkpoint.exists():
        ct_checkpoint(checkpoint)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "E2MISEG_CACHE": str(workdir / "cache"), "PYTHONUTF8": "1"}
    from bench_common import engine_tree

    engines = {"current": engine_tree(None, workdir)}
    if args.reference:
        engines[args.reference] = engine_tree(args.reference, workdir)
    # one small run first: the one-time OpenVINO conversion is not what is measured
    small = workdir / "warmup.nii.gz"
    if not small.exists():
        import SimpleITK as sitk

        reader = sitk.ReadImage(str(image))
        sitk.WriteImage(reader[128:384, 128:384, 40:110], str(small), useCompression=True)
    for engine in engines.values():
        run_cli(engine, small, checkpoint, workdir / "warmup.seg.nrrd", env, args.step)
    runs = {}
    for label, engine in engines.items():
        print(f"e2miseg predict with the {label} engine", file=sys.stderr)
        runs[label] = run_cli(engine, image, checkpoint, workdir / f"{label.replace('/', '_')}.seg.nrrd", env, args.step)
    pipeline = {}
    for label, engine in engines.items():
        print(f"pipeline without the network, {label} engine", file=sys.stderr)
        pipeline[label] = measured([sys.executable, __file__, "--step", str(args.step), "--pipeline", str(image), str(checkpoint)],
                                   {**env, "PYTHONPATH": str(engine)})
    print("API run of the current engine (time per stage)", file=sys.stderr)
    api = measured([sys.executable, __file__, "--step", str(args.step), "--api", str(image), str(checkpoint),
                    str(workdir / "api.seg.nrrd")], {**env, "PYTHONPATH": str(engines["current"])})
    agreement = {label: voxel_agreement(workdir / "current.seg.nrrd", workdir / f"{label.replace('/', '_')}.seg.nrrd")
                 for label in engines if label != "current"}
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "threads": args.threads, "load_average": os.getloadavg()}
    report = {"volume": {"size_xyz": SIZE_XYZ, "spacing_xyz": SPACING_XYZ, "dtype": "int16"},
              "model": {"classes": 1 + len(ORGANS), "network_spacing_mm": 1.5, "patch_zyx": PATCH_ZYX, "step": args.step},
              "limit_bytes": LIMIT_BYTES, "cli": runs, "api": api, "pipeline_without_network": pipeline,
              "agreement_with_current": agreement, "machine": machine}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory_ct.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    lines = [f"# Peak memory: 512x512x200 CT, 4-class E2MISeg (1.5 mm grid, patch 64x128x128, step {args.step})", "",
             "`e2miseg predict CT.nii.gz -o out.seg.nrrd` in a fresh process; peak resident set of the whole process "
             f"(target: at most {LIMIT_BYTES / 1e9:.0f} GB).", "",
             "| engine | peak RSS | wall time | voxels agreeing with current |", "|---|---|---|---|"]
    for label, run in runs.items():
        agree = "-" if label == "current" else f"{agreement[label]:.4%}"
        lines.append(f"| {label} | {run['peak_rss_bytes'] / 1e9:.2f} GB | {run['seconds']:.0f} s | {agree} |")
    lines += ["", "Everything but the network (a 1x1x1 convolution stands in for it): the pipeline's own memory "
              "above the process's starting point, and its time.", "",
              "| engine | pipeline peak above start | pipeline time |", "|---|---|---|"]
    for label, run in pipeline.items():
        lines.append(f"| {label} | {run['peak_above_start_bytes'] / 1e9:.2f} GB | {run['pipeline_seconds']:.1f} s |")
    stages = api["timings"]
    lines += ["", f"API run of the current engine: peak RSS {api['peak_rss_bytes'] / 1e9:.2f} GB; seconds per stage:", "",
              "| " + " | ".join(stages) + " |", "|" + "---|" * len(stages), "| " + " | ".join(f"{v:.1f}" for v in stages.values()) + " |",
              "", f"Machine: {machine['processor']}, {machine['cpus']} CPUs, {args.threads} thread(s), "
              f"load average {machine['load_average'][0]:.1f} at the end (this benchmark's own runs included); "
              f"{_training_jobs()}.", ""]
    (RESULTS / "memory_ct.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
