"""Run the BAD rows of issue 21 through the CLI (and the API) of one engine checkout; print a table.

Usage: python scripts/bad_rows.py ENGINE_DIR [--only NAME ...] [--json OUT]
where ENGINE_DIR holds the ``e2miseg`` package (e.g. ``E2MISegModule`` of any checkout), so the same
cases can be run against an older commit ("before") and this one ("after"). Each row records the
exit code, the last stderr line, and whether the user's files survived. Needs the tiny test
checkpoint helpers from ``Testing/`` and, for the intensity rows, the bundled hippocampus model and
``/work/shared/data``. The rows themselves are tested in ``Testing/test_bad_input.py``; this script
only reports figures.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Testing"))
HIPPO = Path("/work/shared/data/Task04_Hippocampus/imagesTr/hippocampus_004.nii.gz")


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def good(folder: Path, name: str = "good.nii.gz") -> Path:
    from bad_inputs import good_array, volume

    sitk.WriteImage(volume(good_array()), str(folder / name))
    return folder / name


class Runner:
    def __init__(self, engine: Path, checkpoint: Path, store: Path):
        self.engine, self.checkpoint, self.store = engine, checkpoint, store

    def env(self, **extra: str) -> dict[str, str]:
        env = {"PYTHONPATH": str(self.engine), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "E2MISEG_RUNTIME": "torch",
               "E2MISEG_MODELS": str(self.store), "HOME": os.environ.get("HOME", "/root"), "PYTHONUTF8": "1"}
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    def cli(self, args: list[str], env: dict | None = None, timeout: float = 300, cwd: Path | None = None):
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "e2miseg.cli", *args], capture_output=True, text=True,
                                env=env or self.env(), timeout=timeout, cwd=cwd)
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        return result.returncode, (lines[-1] if lines else ""), time.monotonic() - start


def rows(r: Runner, d: Path) -> list[tuple[str, str, object]]:
    """(name, command, callable returning (code, message, note))."""
    ck = str(r.checkpoint)
    out: list = []

    def predict(name, extra, setup=None, env=None, files=()):
        def run():
            case = d / name.replace(" ", "_").replace("/", "_")
            case.mkdir()
            image = good(case)
            args = ["predict", str(image), "-o", str(case / "out.seg.nrrd"), "--model", ck, "--device", "cpu"]
            if setup:
                args = setup(case, image)
            args += [a.format(case=case, image=image) for a in extra]
            watched = [image] + [case / f for f in files]
            before = {p: digest(p) for p in watched}
            code, msg, _ = r.cli(args, env=env(case) if callable(env) else env)
            changed = [p.name for p in watched if digest(p) != before[p]]
            return code, msg, ("CHANGED: " + ", ".join(changed)) if changed else "inputs unchanged"
        out.append((name, "predict good.nii.gz -o out.seg.nrrd " + " ".join(extra), run))

    predict("uncertainty is the input", ["--uncertainty", "{image}"])
    predict("uncertainty is the output", ["-o", "{case}/x.nii.gz", "--uncertainty", "{case}/x.nii.gz"])

    def preview_is_input():
        # a 2D model reads PNG slices: the bundled ACDC model, one slice of a case written as PNG
        case = d / "preview_png"
        case.mkdir()
        source = Path("/work/shared/data/ACDC/imagesTr")
        if not source.is_dir():
            return None, "no data", "skipped"
        volume = sitk.ReadImage(str(sorted(source.glob("*.nii.gz"))[0]))
        plane = sitk.GetArrayFromImage(volume)[volume.GetSize()[2] // 2]
        plane = (255 * (plane - plane.min()) / max(1e-6, float(plane.max() - plane.min()))).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(plane), str(case / "scan.png"))
        before = digest(case / "scan.png")
        code, msg, _ = r.cli(["predict", str(case / "scan.png"), "-o", str(case / "out.seg.nrrd"), "--model", "ehanet-acdc",
                              "--device", "cpu", "--preview", str(case / "scan.png")])
        return code, msg, "inputs unchanged" if digest(case / "scan.png") == before else "CHANGED: scan.png"
    out.append(("preview is the input PNG (2D model)", "predict scan.png -o out.seg.nrrd --model ehanet-acdc --preview scan.png",
                preview_is_input))

    for bad in ("50", "-1", "nan", "1e-6", "inf", "0"):
        predict(f"--step {bad}", ["--step", bad])
    predict("--min-island-mm3 inf", ["--min-island-mm3", "inf"])
    predict("--min-island-mm3 -5", ["--min-island-mm3", "-5"])
    predict("--edge-strength nan", ["--refine-edges", "--edge-strength", "nan"])
    predict("E2MISEG_MEMORY_LIMIT_MB=inf", [], env=r.env(E2MISEG_MEMORY_LIMIT_MB="inf"))
    predict("E2MISEG_MEMORY_LIMIT_MB=abc", [], env=r.env(E2MISEG_MEMORY_LIMIT_MB="abc"))
    predict("E2MISEG_MEMORY_LIMIT_MB=-1", [], env=r.env(E2MISEG_MEMORY_LIMIT_MB="-1"))
    predict("E2MISEG_RUNTIME=fast", [], env=r.env(E2MISEG_RUNTIME="fast"))
    predict("E2MISEG_PRECISION=f64", [], env=r.env(E2MISEG_PRECISION="f64"))
    predict("HOME empty, model by name", [], env=r.env(HOME="", E2MISEG_MODELS=None))

    for fmt in (".nhdr", ".mhd"):
        def detached(fmt=fmt):
            case = d / f"detached{fmt}"
            case.mkdir()
            image = good(case)
            code, msg, _ = r.cli(["predict", str(image), "-o", str(case / f"out{fmt}"), "--model", ck, "--device", "cpu"])
            header = (case / f"out{fmt}").read_text(errors="replace") if (case / f"out{fmt}").exists() else ""
            data = [line for line in header.splitlines() if line.lower().startswith(("data file", "elementdatafile"))]
            leftovers = sorted(p.name for p in case.iterdir() if ".tmp" in p.name)
            return code, msg, f"{data[0] if data else 'no header'}; temp files left: {leftovers}"
        out.append((f"output {fmt}", f"predict good.nii.gz -o out{fmt}", detached))

    for fmt in (".nii.gz", ".nrrd", ".nii", ".nhdr", ".mha", ".seg.nrrd"):
        def full(fmt=fmt):
            mount = d / f"full{fmt}"
            mount.mkdir()
            if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True).returncode:
                return None, "mount not permitted", "skipped"
            try:
                image = good(d, f"in_{fmt.strip('.').replace('.', '_')}.nii.gz")
                target = mount / f"out{fmt}"
                target.write_bytes(b"previous good output\n")
                previous = digest(target)
                try:
                    with open(mount / "filler", "wb") as f:
                        while True:
                            f.write(b"\0" * 4096)
                            f.flush()
                except OSError:
                    pass
                code, msg, _ = r.cli(["predict", str(image), "-o", str(target), "--model", ck, "--device", "cpu"])
                kept = digest(target) == previous
                return code, msg, "previous output intact" if kept else f"PREVIOUS OUTPUT LOST ({target.stat().st_size if target.exists() else 'gone'} bytes)"
            finally:
                subprocess.run(["umount", str(mount)])
        out.append((f"disk full, {fmt}", f"predict in.nii.gz -o FULL_TMPFS/out{fmt}", full))

    def refine(name, extra, seg_setup=None):
        def run():
            case = d / ("refine_" + name.replace(" ", "_"))
            case.mkdir()
            image = good(case)
            seg = case / "seg.nii.gz"
            from bad_inputs import volume
            labels = volume((sitk.GetArrayFromImage(sitk.ReadImage(str(image))) > 150).astype(np.uint8))
            if seg_setup:
                seg_setup(labels)
            sitk.WriteImage(labels, str(seg))
            before = {p: digest(p) for p in (image, seg)}
            code, msg, _ = r.cli(["refine", str(image), str(seg), "-o", str(case / "refined.nii.gz")]
                                 + [a.format(case=case, image=image, seg=seg) for a in extra])
            changed = [p.name for p in (image, seg) if digest(p) != before[p]]
            return code, msg, ("CHANGED: " + ", ".join(changed)) if changed else "inputs unchanged"
        out.append((f"refine: {name}", "refine good.nii.gz seg.nii.gz -o refined.nii.gz " + " ".join(extra), run))

    refine("uncertainty is the image", ["--uncertainty", "{image}"])
    refine("uncertainty is the segmentation", ["--uncertainty", "{seg}"])
    refine("--band-mm nan", ["--band-mm", "nan"])
    refine("--strength inf", ["--strength", "inf"])
    refine("--roi nan", ["--roi", "nan,0,0,5,5,5"])
    refine("segmentation shifted 50 mm", [], seg_setup=lambda labels: labels.SetOrigin((46.5, 12.0, 40.25)))

    def cohort_same():
        folder = d / "cohort"
        folder.mkdir()
        for n in (1, 2):
            good(folder, f"case{n}.nii.gz")
        before = sorted(p.name for p in folder.iterdir())
        code, msg, _ = r.cli(["predict", str(folder), "-o", str(folder), "--format", ".nii.gz", "--model", ck, "--device", "cpu"])
        return code, msg, f"files before {before}, after {sorted(p.name for p in folder.iterdir())}"
    out.append(("cohort output folder = input folder", "predict cases/ -o cases/ --format .nii.gz", cohort_same))

    def models_import():
        blocker = d / "a_file"
        blocker.write_text("x")
        code, msg, _ = r.cli(["models", "import", ck], env=r.env(E2MISEG_MODELS=str(blocker / "store")))
        return code, msg, ""
    out.append(("models import, store cannot be created", "E2MISEG_MODELS=<file>/store models import tiny.safetensors", models_import))

    def fifo():
        path = d / "pipe.nii.gz"
        os.mkfifo(path)
        process = subprocess.Popen([sys.executable, "-m", "e2miseg.cli", "predict", str(path), "-o", str(d / "fifo.seg.nrrd"),
                                    "--model", ck], stderr=subprocess.PIPE, text=True, env=r.env())
        try:
            code = process.wait(timeout=15)
            return code, process.stderr.read().strip().splitlines()[-1], "returned without SIGTERM"
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            start = time.monotonic()
            try:
                code = process.wait(timeout=5)
                return code, (process.stderr.read().strip().splitlines() or [""])[-1], f"hung; SIGTERM ended it in {time.monotonic() - start:.1f} s"
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                return None, "", "hung 15 s; SIGTERM ignored for 5 s (killed)"
    out.append(("FIFO named .nii.gz", "mkfifo pipe.nii.gz; predict pipe.nii.gz ...", fifo))

    def poor(name, build, args_after=()):
        def run():
            case = d / ("poor_" + name.replace(" ", "_"))
            case.mkdir()
            path = build(case)
            code, msg, _ = r.cli(["predict", str(path), "-o", str(case / "o.seg.nrrd"), "--model", ck, "--device", "cpu", *args_after])
            return code, msg, ""
        out.append((name, f"predict <{name}> -o o.seg.nrrd", run))

    def seg_as_image(case):
        from bad_inputs import volume
        import slicerio  # noqa: F401
        labels = volume(np.zeros((12, 14, 16), np.uint8))
        sitk.WriteImage(labels, str(case / "x.seg.nrrd"))
        return case / "x.seg.nrrd"
    poor(".seg.nrrd as the image", seg_as_image)

    def all_nan(case):
        from bad_inputs import volume
        sitk.WriteImage(volume(np.full((12, 14, 16), np.nan, np.float32)), str(case / "nan.nii.gz"))
        return case / "nan.nii.gz"
    poor("all-NaN .nii.gz", all_nan)

    def bool_nifti(case):
        from bad_inputs import good_array
        import struct
        sitk.WriteImage(sitk.GetImageFromArray((good_array() > 100).astype(np.uint8)), str(case / "b.nii"))
        raw = bytearray((case / "b.nii").read_bytes())
        raw[70:72] = struct.pack("<h", 1)  # datatype DT_BINARY
        raw[72:74] = struct.pack("<h", 1)  # bitpix 1
        (case / "b.nii").write_bytes(bytes(raw))
        return case / "b.nii"
    poor("bool (1-bit) NIfTI", bool_nifti)

    def dicom_gap(case):
        from bad_inputs import write_dicom_series
        folder = write_dicom_series(case / "series", "MR", slices=8)
        (folder / "004.dcm").unlink()
        return folder
    poor("DICOM series with a missing slice", dicom_gap)

    def dicom_dup(case):
        import shutil
        from bad_inputs import write_dicom_series
        folder = write_dicom_series(case / "series", "MR", slices=8)
        shutil.copy(folder / "003.dcm", folder / "003b.dcm")
        return folder
    poor("DICOM series with a duplicate slice", dicom_dup)

    api_code = """
import sys, numpy as np, SimpleITK as sitk, e2miseg
model, card = e2miseg.load_model(sys.argv[1], device='cpu')
which = sys.argv[2]
try:
    if which == 'tuple':
        e2miseg.predict(sitk.Image(12, 14, 16, sitk.sitkFloat32) + 1, (model, card))
    elif which == 'ndarray':
        e2miseg.load_model(np.zeros(3))
    elif which == 'complex':
        rng = np.random.default_rng(0)
        a = (rng.normal(100, 20, (12, 14, 16)) + 1j * rng.normal(0, 20, (12, 14, 16))).astype(np.complex64)
        e2miseg.predict(sitk.GetImageFromArray(a), model)
    print('returned without error')
except Exception as exc:
    print(type(exc).__name__ + ': ' + str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
"""
    for which, text in (("tuple", "predict(image, (model, card))"), ("ndarray", "load_model(np.zeros(3))"),
                        ("complex", "predict(complex64 image, model)")):
        def api_row(which=which):
            result = subprocess.run([sys.executable, "-c", api_code, ck, which], capture_output=True, text=True, env=r.env(), timeout=300)
            lines = (result.stdout + result.stderr).strip().splitlines()
            return "API", lines[-1] if lines else "", ""
        out.append((f"API: {text}", f"python: e2miseg.{text}", api_row))

    intensity_code = """
import sys, numpy as np, SimpleITK as sitk, e2miseg
model, card = e2miseg.load_model('e2miseg-hippocampus', device='cpu')
image = sitk.ReadImage(sys.argv[1], sitk.sitkFloat32)
clean = sitk.GetArrayFromImage(e2miseg.predict(image, model))
array = sitk.GetArrayFromImage(image)
for value in (3.4028235e38, 1e30, 1e6, -3.4028235e38):
    bad = array.copy(); bad[0, 0, 0] = value
    img = sitk.GetImageFromArray(bad); img.CopyInformation(image)
    try:
        labels = sitk.GetArrayFromImage(e2miseg.predict(img, model))
    except Exception as exc:
        print(f'{value:g}: {type(exc).__name__}: {exc}'); continue
    inter = np.sum((labels > 0) & (clean > 0)); dice = 2 * inter / max(1, np.sum(labels > 0) + np.sum(clean > 0))
    print(f'{value:g}: foreground {int(np.sum(labels > 0))} of clean {int(np.sum(clean > 0))} voxels, Dice {dice:.4f}')
"""
    def intensity():
        if not HIPPO.exists():
            return None, "no data", "skipped"
        result = subprocess.run([sys.executable, "-c", intensity_code, str(HIPPO)], capture_output=True, text=True,
                                env=r.env(E2MISEG_MODELS=str(r.store)), timeout=600)
        return "API", " | ".join((result.stdout + result.stderr).strip().splitlines()[-4:]), ""
    out.append(("one extreme voxel (FLT_MAX, 1e30, 1e6, -FLT_MAX), bundled hippocampus model",
                "e2miseg.predict(hippocampus_004 with voxel [0,0,0] set)", intensity))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("engine", type=Path)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(args.engine.resolve()))
    from helpers import make_e2miseg_checkpoint

    with tempfile.TemporaryDirectory(prefix="bad-rows-") as tmp:
        d = Path(tmp)
        store = d / "store"
        store.mkdir()
        checkpoint = make_e2miseg_checkpoint(d / "tiny.safetensors", spacing=(1.5, 1.5, 1.5))
        runner = Runner(args.engine.resolve(), checkpoint, store)
        results = []
        for name, command, run in rows(runner, d):
            if args.only and not any(o in name for o in args.only):
                continue
            try:
                code, message, note = run()
            except Exception as exc:  # the script reports; it must not stop at one odd row
                code, message, note = None, f"script error: {type(exc).__name__}: {exc}", ""
            message = message.replace(str(d), "…")
            note = str(note).replace(str(d), "…")
            results.append({"row": name, "command": command, "exit": code, "message": message, "note": note})
            print(f"| {name} | `{command}` | {code} | {message} | {note} |", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
