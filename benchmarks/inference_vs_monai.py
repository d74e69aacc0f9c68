"""E2MISeg's predictor against the pipeline a user would write with MONAI + SimpleITK, in one run.

For each (checkpoint, volume) job both pipelines run as sessions in fresh subprocesses (so peak
resident memory is each pipeline's own): one untimed warm-up session each (fills the OpenVINO
conversion cache and the file cache), then ``--pairs`` alternating pairs of sessions. A session loads
the model, segments the volume once cold (the *first call*: what one CLI call pays) and ``--repeats``
more times with the model loaded (what each case of a cohort script or a Slicer session pays).
Reported per job, for both measures: the median of the per-pair time ratios MONAI / E2MISeg, the
share of time outside the network (read, preprocess, stitching, resampling, write, and for the first
call model loading); and the voxel agreement of the two label maps and the peak RSS of each. Run by
hand, never from the tests:

    .venv/bin/python benchmarks/inference_vs_monai.py --pairs 3 --repeats 3 [--only e2miseg,ehanet,s2anet,ct] [--threads 2]

The peer is a genuine MONAI/SimpleITK pipeline that follows the model card as a careful user would;
the only thing it takes from this project is the network class (``e2miseg.models.build_model``):

- reads weights and card with ``safetensors`` (``safe_open``; the card is JSON in the metadata);
- crop to non-zero when the card says so (``monai.transforms.utils.generate_spatial_bounding_box``);
- normalises on the native grid, then resamples (the order the card's README documents: crop,
  normalise, resample), with ``monai.transforms.NormalizeIntensity``;
- resamples with SimpleITK (linear) onto a grid that keeps the image's physical extent, as MONAI's
  ``Spacing(pixdim, scale_extent=True)`` does (``monai.data.utils.compute_shape_offset``, option 2);
  a spacing already within 2 % of the card's is kept (MONAI's ``min_pixdim``/``max_pixdim``);
- ``sliding_window_inference`` with Gaussian weighting, the card's step as overlap and its sigma;
  2D/2.5D: ``SliceInferer`` over the slice axis (MONAI has no 2.5D inferer: its tutorial
  ``2d_inference_3d_volume`` slides a 2D net over slices, so neighbouring slices are stacked as
  channels first), the same number of slices per forward pass as the engine;
- resamples each class's probabilities back (linear) and takes the argmax with a running maximum.

Writes benchmarks/results/<name>.{json,md} (default name inference_vs_monai).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, SHARED, TimedForward, finish_machine, machine, write_results  # noqa: E402

SPACING_TOLERANCE = 0.02  # relative; the card's own tolerance for "already at the target spacing"
TARGET_SPEEDUP = {"3d": 2.0, "2d": 1.5, "2.5d": 1.5}
XYZ = {"x": 0, "y": 1, "z": 2}


# --------------------------------------------------------------------------- E2MISeg (instrumented)

def run_e2miseg(model_path: str, image_path: str, out_path: str, threads: int) -> dict:
    """One cold call: ``e2miseg.load_model`` + ``e2miseg.predict`` + write (what one CLI call does)."""
    session = load_e2miseg(model_path, threads)
    try:
        return segment_e2miseg(session, image_path, out_path)
    finally:
        session["restore"]()


def load_e2miseg(model_path: str, threads: int) -> dict:
    """Instrument the engine's network calls, then ``e2miseg.load_model``; the load time is kept in
    the session and added to the first ``segment_e2miseg`` call (that call is the cold one)."""
    import torch

    import e2miseg
    import e2miseg.inference as engine_inference

    torch.set_num_threads(threads)
    _import_untimed("e2miseg.api", "e2miseg.card", "e2miseg.runtime", "openvino", "SimpleITK")
    clock = {"network": 0.0, "calls": 0, "setup": 0.0}
    restore = _instrument_engine(engine_inference, clock)
    start = time.perf_counter()
    model, _card = e2miseg.load_model(model_path, device="cpu")
    return {"e2miseg": e2miseg, "model": model, "clock": clock, "wrapped": restore is not None,
            "restore": restore or (lambda: None), "pending_load_s": time.perf_counter() - start}


def segment_e2miseg(session: dict, image_path: str, out_path: str) -> dict:
    """``e2miseg.predict`` + write with a loaded model; the network calls are timed from outside."""
    import SimpleITK as sitk

    clock = session["clock"]
    clock.update(network=0.0, calls=0, setup=0.0)
    load_s, session["pending_load_s"] = session["pending_load_s"], 0.0
    stage_start: dict[str, float] = {}
    stage_time: dict[str, float] = {}

    def on_progress(event) -> None:
        now = time.perf_counter()
        stage_start.setdefault(event.stage, now)
        stage_time[event.stage] = now - stage_start[event.stage]

    start = time.perf_counter()
    labels = session["e2miseg"].predict(image_path, session["model"], progress=on_progress)
    sitk.WriteImage(labels, out_path, useCompression=True)
    total = time.perf_counter() - start + load_s
    if session["wrapped"] and clock["calls"]:
        network, source = clock["network"] - clock["setup"], "timed network calls (OpenVINO compile excluded)"
    else:  # the engine no longer exposes the hook: the infer stage is an upper bound of network time
        network, source = stage_time.get("infer", 0.0), "infer stage (includes stitching)"
    return {"seconds": total, "network_seconds": network, "outside_share": 1 - network / total,
            "model_load_seconds": load_s, "runtime_setup_seconds": clock["setup"], "forward_calls": clock["calls"],
            "network_time_source": source, "stages": stage_time, "precision": clock.get("precision", "f32")}


def _instrument_engine(engine_inference, clock: dict):
    """Wrap the engine's network call (``make_forward``) and OpenVINO compilation with timers;
    return the function that undoes it (None when the engine has no such hook)."""
    original = getattr(engine_inference, "make_forward", None)
    if original is None:
        return None

    def timed_make_forward(*args, **kwargs):
        forward = original(*args, **kwargs)
        clock["precision"] = getattr(forward, "precision", "f32")  # the engine's arithmetic (auto: bf16 or fp32)

        def timed(batch):
            t0 = time.perf_counter()
            out = forward(batch)
            clock["network"] += time.perf_counter() - t0
            clock["calls"] += 1
            return out

        return TimedForward(forward, timed)  # still answers for the engine's call (``uses_openvino``, ...)

    engine_inference.make_forward = timed_make_forward
    undo = [lambda: setattr(engine_inference, "make_forward", original)]
    try:
        from e2miseg.runtime import OpenVinoForward
    except ImportError:
        OpenVinoForward = None
    compile_original = getattr(OpenVinoForward, "_compile", None)
    if compile_original is not None:
        def timed_compile(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return compile_original(self, *args, **kwargs)
            finally:
                clock["setup"] += time.perf_counter() - t0

        OpenVinoForward._compile = timed_compile
        undo.append(lambda: setattr(OpenVinoForward, "_compile", compile_original))
    return lambda: [step() for step in undo]


# --------------------------------------------------------------------------- the MONAI + SimpleITK peer

def read_peer_checkpoint(model_path: str):
    """Network + card from a safetensors file, as a user would (no e2miseg loading code)."""
    import torch
    from safetensors import safe_open

    from e2miseg.models import build_model  # the network definition: the one thing both pipelines share

    with safe_open(model_path, framework="pt") as f:
        card = json.loads(f.metadata()["e2miseg_card"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # shipped fp16 -> fp32
    model = build_model(card["architecture"]["name"], **card["architecture"]["config"])
    model.load_state_dict(state)
    return model.eval(), card, torch


def peer_normalize(array, scheme: dict):
    import numpy as np
    from monai.transforms import NormalizeIntensity

    kind = scheme["scheme"]
    if kind == "none":
        return array
    if kind == "ct":
        array = np.clip(array, scheme["lower"], scheme["upper"])
        return NormalizeIntensity(subtrahend=scheme["mean"], divisor=scheme["std"])(array)
    if kind == "percentile":
        low, high = np.percentile(array, [scheme.get("lower", 0.5), scheme.get("upper", 99.5)])
        array = np.clip(array, low, high)
    return NormalizeIntensity(nonzero=kind == "nonzero_zscore")(array)


def extent_preserving_grid(image, target_xyz):
    """(size, spacing, origin) covering ``image``'s physical extent at about ``target_xyz``
    (MONAI ``Spacing(scale_extent=True)``), or None when the spacing already matches."""
    import numpy as np

    spacing = np.array(image.GetSpacing())
    target = np.array(target_xyz, dtype=float)
    if np.all(np.abs(spacing - target) <= SPACING_TOLERANCE * target):
        return None
    extent = np.array(image.GetSize()) * spacing
    size = np.maximum(1, np.round(extent / target)).astype(int)
    new_spacing = extent / size
    origin = np.array(image.GetOrigin()) + np.array(image.GetDirection()).reshape(3, 3) @ ((new_spacing - spacing) / 2)
    return [int(s) for s in size], [float(s) for s in new_spacing], [float(o) for o in origin]


def run_monai(model_path: str, image_path: str, out_path: str, threads: int) -> dict:
    """One cold call of the peer: read the checkpoint, build the network, segment, write."""
    return segment_monai(load_monai(model_path, threads), image_path, out_path)


def _import_untimed(*modules: str) -> None:
    """Libraries a pipeline imports lazily are imported before its clock starts (on both sides)."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def load_monai(model_path: str, threads: int) -> dict:
    _import_untimed("monai.inferers", "monai.transforms", "monai.transforms.utils", "safetensors", "SimpleITK",
                    "e2miseg.models")
    start = time.perf_counter()
    model, card, torch = read_peer_checkpoint(model_path)
    torch.set_num_threads(threads)
    if len(card["channels"]) != 1:
        raise SystemExit("the peer pipeline handles single-channel models only")
    return {"model": model, "card": card, "torch": torch, "pending_load_s": time.perf_counter() - start}


def segment_monai(session: dict, image_path: str, out_path: str) -> dict:
    import numpy as np
    import SimpleITK as sitk
    from monai.inferers import SliceInferer, sliding_window_inference
    from monai.transforms.utils import generate_spatial_bounding_box

    start = time.perf_counter()
    load_s, session["pending_load_s"] = session["pending_load_s"], 0.0
    model, card, torch = session["model"], session["card"], session["torch"]
    settings, prep = card["inference"], card["preprocessing"]
    scheme = card["channels"][0].get("normalization") or prep["normalization"]
    clock = {"network": 0.0, "calls": 0}

    def predictor(batch):
        t0 = time.perf_counter()
        logits = model(batch)
        clock["network"] += time.perf_counter() - t0
        clock["calls"] += 1
        return torch.softmax(logits, 1)

    image = sitk.ReadImage(image_path)
    full_shape = image.GetSize()[::-1]
    array = sitk.GetArrayFromImage(image)
    if prep["crop_to_nonzero"]:
        box_start, box_end = generate_spatial_bounding_box(array[None], select_fn=lambda a: a != 0)
        if any(e <= s for s, e in zip(box_start, box_end)):
            box_start, box_end = [0, 0, 0], list(full_shape)
    else:
        box_start, box_end = [0, 0, 0], list(full_shape)
    (z0, y0, x0), (z1, y1, x1) = box_start, box_end
    cropped = image[x0:x1, y0:y1, z0:z1] if prep["crop_to_nonzero"] else image  # slicing keeps the geometry
    geometry = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    array = peer_normalize(array[z0:z1, y0:y1, x0:x1].astype(np.float32), scheme)
    del image

    target = list(prep["target_spacing_xyz"] or cropped.GetSpacing())
    if settings["kind"] != "3d":  # slice-wise models keep the native slice spacing
        axis_xyz = XYZ[settings["slice_axis"]]
        target[axis_xyz] = cropped.GetSpacing()[axis_xyz]
    grid = extent_preserving_grid(cropped, target)
    normalized = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    normalized.CopyInformation(cropped)
    del array
    if grid is not None:
        size, spacing, origin = grid
        network_image = sitk.Resample(normalized, size, sitk.Transform(), sitk.sitkLinear, origin, spacing,
                                      cropped.GetDirection(), 0.0, sitk.sitkFloat32)
    else:
        network_image = normalized
    x = torch.from_numpy(sitk.GetArrayFromImage(network_image))[None, None]
    del normalized

    with torch.inference_mode():
        if settings["kind"] == "3d":
            probs = sliding_window_inference(x, settings["patch_size_zyx"], settings["batch_size"], predictor,
                                             overlap=1 - settings["step"], mode="gaussian",
                                             sigma_scale=settings["gaussian_sigma_scale"], padding_mode="constant", cval=0.0)
        else:
            axis = {"z": 2, "y": 3, "x": 4}[settings["slice_axis"]]
            divisor = int(getattr(model, "size_divisor", 1))
            in_plane = [s for d, s in enumerate(x.shape[2:], start=2) if d != axis]
            minimum = settings.get("patch_size_zyx") or [1, 1]
            roi = [int(math.ceil(max(s, m) / divisor) * divisor) for s, m in zip(in_plane, minimum)]
            k = settings.get("slices", 1) if settings["kind"] == "2.5d" else 1
            if k > 1:  # 2.5D: each slice with its neighbours (edge slices repeated) as channels
                half = k // 2
                moved = torch.movedim(x, axis, 2)
                idx = torch.arange(moved.shape[2])
                stacks = torch.cat([moved[:, :, (idx + o).clamp(0, moved.shape[2] - 1)] for o in range(-half, half + 1)], 1)
                x = torch.movedim(stacks, 2, axis)
            inferer = SliceInferer(roi_size=roi, sw_batch_size=settings["batch_size"] * 4, spatial_dim=axis - 2,
                                   overlap=1 - settings["step"], mode="gaussian",
                                   sigma_scale=settings["gaussian_sigma_scale"], padding_mode="constant", cval=0.0)
            probs = inferer(x, predictor)
    del x
    probs = probs[0].numpy()
    if grid is None:
        crop_labels = np.argmax(probs, axis=0).astype(np.uint8)
    else:
        best = crop_labels = None
        for k in range(probs.shape[0]):
            channel = sitk.GetImageFromArray(probs[k])
            channel.CopyInformation(network_image)
            back = sitk.GetArrayFromImage(sitk.Resample(channel, cropped, sitk.Transform(), sitk.sitkLinear, 0.0))
            if best is None:
                best, crop_labels = back, np.zeros(back.shape, np.uint8)
            else:
                crop_labels[back > best] = k
                np.maximum(best, back, out=best)
        del best
    del probs
    labels = np.zeros(full_shape, np.uint8)
    labels[z0:z1, y0:y1, x0:x1] = crop_labels
    out = sitk.GetImageFromArray(labels)
    out.SetSpacing(geometry[0])
    out.SetOrigin(geometry[1])
    out.SetDirection(geometry[2])
    sitk.WriteImage(out, out_path, useCompression=True)
    total = time.perf_counter() - start + load_s
    return {"seconds": total, "network_seconds": clock["network"], "outside_share": 1 - clock["network"] / total,
            "model_load_seconds": load_s, "forward_calls": clock["calls"]}



# --------------------------------------------------------------------------- inputs

def ct_sized_volume(folder: Path, size_xyz=(512, 512, 200), spacing_xyz=(0.8, 0.8, 2.0), network_mm: float = 3.0) -> str:
    """A CT-sized volume (512x512x200 voxels of 0.8 x 0.8 x 2 mm, int16) whose content is real anatomy.

    Agreement between two pipelines only means something where the network is confident; an untrained
    head on a synthetic phantom gives labels that flip with every window placement. So the volume is
    made of real hippocampus MRI crops from ../shared/data, tiled side by side on a ``network_mm`` grid
    (each crop z-scored, then mapped to 500 +- 100) and resampled (linear) onto the CT-sized grid: on
    the model's ``network_mm`` grid the network sees the anatomy it was trained on, at its scale.
    """
    import numpy as np
    import SimpleITK as sitk

    crops = []
    for image_path in sorted((SHARED / "Task04_Hippocampus" / "imagesTr").glob("hippocampus_*.nii.gz"))[:8]:
        crop = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))).astype(np.float32)
        crops.append(500 + 100 * (crop - crop.mean()) / max(float(crop.std()), 1e-6))
    tile = np.array([max(c.shape[d] for c in crops) for d in range(3)])
    crops = [np.pad(c, [(0, t - n) for t, n in zip(tile, c.shape)], mode="edge") for c in crops]
    extent_zyx = np.array(size_xyz[::-1]) * np.array(spacing_xyz[::-1])
    grid_zyx = np.ceil(extent_zyx / network_mm).astype(int)
    canvas = np.empty(tuple(grid_zyx), np.float32)
    index = 0
    for z in range(0, grid_zyx[0], tile[0]):
        for y in range(0, grid_zyx[1], tile[1]):
            for x in range(0, grid_zyx[2], tile[2]):
                block = canvas[z:z + tile[0], y:y + tile[1], x:x + tile[2]]
                block[...] = crops[index % len(crops)][:block.shape[0], :block.shape[1], :block.shape[2]]
                index += 1
    coarse = sitk.GetImageFromArray(canvas)
    coarse.SetSpacing([network_mm] * 3)
    reference = sitk.Image([int(v) for v in size_xyz], sitk.sitkInt16)
    reference.SetSpacing([float(v) for v in spacing_xyz])
    volume = sitk.Resample(coarse, reference, sitk.Transform(), sitk.sitkLinear, 500.0, sitk.sitkInt16)
    cols, rows, depth = size_xyz
    path = folder / f"ct_sized_{cols}x{rows}x{depth}.nii.gz"
    sitk.WriteImage(volume, str(path), useCompression=True)
    return str(path)


def ct_model(folder: Path, trained_from: str, spacing_mm: float) -> str:
    """The bundled trained E2MISeg with its card's network spacing set to ``spacing_mm`` (for the CT-sized job).

    Same weights, labels and normalisation; only the resampling target changes, so a CT-sized volume
    becomes a few hundred windows, as a real CT model's coarse grid would. (The 4-class memory target
    is measured by memory_ct.py.)
    """
    from e2miseg.checkpoint import read_checkpoint, save_checkpoint

    tensors, card = read_checkpoint(Path(trained_from))
    card = {**card, "name": f"{card['name']}-at-{spacing_mm:g}mm",
            "description": f"benchmark only: {card['name']} resampled to {spacing_mm:g} mm (not a clinical model)",
            "preprocessing": {**card["preprocessing"], "target_spacing_xyz": [spacing_mm] * 3, "crop_to_nonzero": False}}
    path = folder / f"{card['name']}.safetensors"
    save_checkpoint(path, tensors, card)
    return str(path)


def validation_volume(dataset: str, index: int = 0) -> str:
    """The ``index``-th validation volume of a dataset (project split: sorted patients, index % 5 == 4)."""
    from edges_common import validation_cases

    return str(validation_cases(dataset)[index][0])


def resolve_model(name_or_path: str) -> tuple[str, dict]:
    from e2miseg.checkpoint import read_card
    from e2miseg.store import resolve

    path = resolve(name_or_path).path
    return str(path), read_card(path)


# --------------------------------------------------------------------------- harness

def child(args) -> None:
    """One session of one pipeline: load the model, a cold first case, then ``--repeats`` warm ones."""
    load, segment = (load_e2miseg, segment_e2miseg) if args.child == "e2miseg" else (load_monai, segment_monai)
    session = load(args.model, args.threads)
    cold = segment(session, args.image, args.out)
    warm = [segment(session, args.image, args.out) for _ in range(args.repeats)]
    print(json.dumps({"cold": cold, "warm": warm, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory since exec.

    VmHWM, not ``getrusage().ru_maxrss``: Linux carries ru_maxrss over execve, so a child forked from
    a big parent (the harness, after making the CT volume) would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(pipeline: str, model: str, image: str, out: str, threads: int, env: dict, repeats: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", pipeline, "--model", model, "--image", image, "--out", out,
                           "--threads", str(threads), "--repeats", str(repeats)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{pipeline} failed on {Path(image).name}:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a: str, b: str) -> float:
    import numpy as np
    import SimpleITK as sitk

    # GetArrayFromImage (a copy), not GetArrayViewFromImage: a view of a temporary image outlives its
    # buffer, and comparing freed memory gave the 98.87 % "agreement" of the first loaded-machine run
    first, second = sitk.GetArrayFromImage(sitk.ReadImage(a)), sitk.GetArrayFromImage(sitk.ReadImage(b))
    if first.shape != second.shape:
        raise RuntimeError(f"label maps differ in shape: {first.shape} vs {second.shape}")
    return float(np.mean(first == second))


def run_job(label: str, model: str, image: str, pairs: int, threads: int, tmp: Path, env: dict, repeats: int) -> dict:
    """Alternating pairs of sessions (fresh processes). Two measures per pipeline:

    - *session*: a case with the model already loaded (a script over a cohort, a Slicer session, the
      module's in-process mode): the median of the warm calls of each session;
    - *first call*: model loading + the first case in a fresh process (one CLI call, one subprocess
      Segment click), imports excluded.
    """
    model_path, card = resolve_model(model)
    outs = {p: str(tmp / f"{p}.nii.gz") for p in ("e2miseg", "monai")}
    # warm-up, untimed: OpenVINO conversion (once per model and shape), compiled-blob cache, file cache
    for p in ("e2miseg", "monai"):
        run_child(p, model_path, image, outs[p], threads, env, repeats=0)
    sessions = {"e2miseg": [], "monai": []}
    for pair in range(pairs):
        order = ("e2miseg", "monai") if pair % 2 == 0 else ("monai", "e2miseg")  # alternate who goes first
        for pipeline in order:
            sessions[pipeline].append(run_child(pipeline, model_path, image, outs[pipeline], threads, env, repeats))
    kind = card["inference"]["kind"]
    med = statistics.median

    def warm_s(session: dict) -> float:
        return med(r["seconds"] for r in session["warm"])

    def all_warm(p: str, key: str) -> float:
        return med(r[key] for s in sessions[p] for r in s["warm"])

    def all_cold(p: str, key: str) -> float:
        return med(s["cold"][key] for s in sessions[p])

    pairs_ = list(zip(sessions["monai"], sessions["e2miseg"]))
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(image)
    reader.ReadImageInformation()
    return {
        "job": label, "kind": kind, "model": card["name"], "model_path": model_path, "image": Path(image).name,
        "image_size_xyz": list(reader.GetSize()), "image_spacing_xyz": [round(s, 4) for s in reader.GetSpacing()],
        "card_spacing_xyz": card["preprocessing"]["target_spacing_xyz"], "pairs": pairs, "repeats": repeats,
        "threads": threads, "target_speedup": TARGET_SPEEDUP[kind],
        "e2miseg_s": all_warm("e2miseg", "seconds"), "monai_s": all_warm("monai", "seconds"),
        "speedup_monai_over_e2miseg": med(warm_s(m) / warm_s(e) for m, e in pairs_),
        "e2miseg_first_call_s": all_cold("e2miseg", "seconds"), "monai_first_call_s": all_cold("monai", "seconds"),
        "first_call_speedup": med(m["cold"]["seconds"] / e["cold"]["seconds"] for m, e in pairs_),
        "agreement": agreement(outs["e2miseg"], outs["monai"]),
        "e2miseg_peak_rss_mb": max(s["peak_rss_mb"] for s in sessions["e2miseg"]),
        "monai_peak_rss_mb": max(s["peak_rss_mb"] for s in sessions["monai"]),
        "e2miseg_network_s": all_warm("e2miseg", "network_seconds"), "monai_network_s": all_warm("monai", "network_seconds"),
        "e2miseg_outside_network_share": all_warm("e2miseg", "outside_share"),
        "monai_outside_network_share": all_warm("monai", "outside_share"),
        "e2miseg_first_call_outside_share": all_cold("e2miseg", "outside_share"),
        "monai_first_call_outside_share": all_cold("monai", "outside_share"),
        "e2miseg_network_time_source": sessions["e2miseg"][0]["cold"]["network_time_source"],
        "e2miseg_precision": sessions["e2miseg"][0]["cold"].get("precision", "f32"),
        "e2miseg_sessions": sessions["e2miseg"], "monai_sessions": sessions["monai"],
    }


def default_jobs(args, tmp: Path) -> list[tuple[str, str, str]]:
    wanted = set(args.only.split(","))
    jobs = []
    if "e2miseg" in wanted:
        for index in range(args.volumes):
            jobs.append(("E2MISeg 3D", args.e2miseg_model, validation_volume("Task04_Hippocampus", index)))
    if "ehanet" in wanted:
        for index in range(args.volumes):
            jobs.append(("EHANet 2D", args.ehanet_model, validation_volume("ACDC", index)))
    if "s2anet" in wanted:
        for index in range(args.volumes):
            jobs.append(("S2aNet 2.5D", args.s2anet_model, validation_volume("LeftAtrium2018", index)))
    if "ct" in wanted:
        trained = resolve_model(args.e2miseg_model)[0]
        jobs.append((f"E2MISeg 3D, CT-sized, network grid {args.ct_spacing:g} mm", ct_model(tmp, trained, args.ct_spacing),
                     ct_sized_volume(tmp, args.ct_size, network_mm=args.ct_spacing)))
    return jobs


def table(rows: list[dict]) -> list[str]:
    lines = ["| job | image | E2MISeg s | MONAI s | MONAI / E2MISeg (target) | agreement | outside network E2MISeg / MONAI "
             "| first call E2MISeg / MONAI s (ratio) | first call outside network E2MISeg | peak RSS E2MISeg / MONAI MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['job']} ({r['model']}, {r.get('e2miseg_precision', 'f32')}) | {r['image']} {'x'.join(map(str, r['image_size_xyz']))} | "
                     f"{r['e2miseg_s']:.2f} | {r['monai_s']:.2f} | **{r['speedup_monai_over_e2miseg']:.2f}×** "
                     f"(≥ {r['target_speedup']:.1f}×) | {100 * r['agreement']:.2f} % | "
                     f"{100 * r['e2miseg_outside_network_share']:.0f} % / {100 * r['monai_outside_network_share']:.0f} % | "
                     f"{r['e2miseg_first_call_s']:.2f} / {r['monai_first_call_s']:.2f} ({r['first_call_speedup']:.2f}×) | "
                     f"{100 * r['e2miseg_first_call_outside_share']:.0f} % | "
                     f"{r['e2miseg_peak_rss_mb']:.0f} / {r['monai_peak_rss_mb']:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", choices=["e2miseg", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--e2miseg-model", default="e2miseg-hippocampus", help="3D checkpoint (store name or path)")
    parser.add_argument("--ehanet-model", default="ehanet-acdc", help="2D checkpoint (store name or path)")
    parser.add_argument("--s2anet-model", default="s2anet-leftatrium", help="2.5D checkpoint")
    parser.add_argument("--run", nargs="+", action="append", metavar=("MODEL", "IMAGE"),
                        help="extra job: a checkpoint and one or more volumes (repeatable)")
    parser.add_argument("--only", default="e2miseg,ehanet,s2anet,ct", help="default jobs to run (comma-separated)")
    parser.add_argument("--volumes", type=int, default=2, help="validation volumes per dataset")
    parser.add_argument("--ct-spacing", type=float, default=3.0, help="network spacing (mm) of the synthetic CT model")
    parser.add_argument("--ct-size", type=int, nargs=3, default=[512, 512, 200], metavar=("X", "Y", "Z"),
                        help="size of the synthetic CT volume (smaller only for smoke tests)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs of sessions per job")
    parser.add_argument("--repeats", type=int, default=3, help="warm cases per session after the cold first one")
    parser.add_argument("--ct-repeats", type=int, default=1, help="warm cases per session for the CT-sized job")
    parser.add_argument("--name", default="inference_vs_monai")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    info = machine(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="e2miseg-bench-") as tmp:
        tmp = Path(tmp)
        # a private conversion cache: every run pays (untimed, in the warm-up) the one-time OpenVINO conversion
        env = {**os.environ, "E2MISEG_CACHE": str(tmp / "cache"), "PYTHONUTF8": "1"}
        jobs = default_jobs(args, tmp) if args.only else []
        for extra in args.run or []:
            jobs += [("extra", extra[0], image) for image in extra[1:]]
        for label, model, image in jobs:
            repeats = args.ct_repeats if "CT-sized" in label else args.repeats
            rows.append(run_job(label, model, image, args.pairs, args.threads, tmp, env, max(1, repeats)))
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_sessions")}), flush=True)
    info = finish_machine(info)
    notes = [
        "E2MISeg s, MONAI s, MONAI / E2MISeg: one case with the model already loaded (a script over a cohort, a Slicer "
        "session): per session the median of its warm calls, the ratio is the median over alternating pairs of "
        "sessions (fresh processes, after one untimed warm-up session each); wall time from reading the image to the "
        "written label file.",
        "First call: model loading + the first case in a fresh process (one CLI call or one Segment click in the "
        "module's subprocess mode); for E2MISeg this includes loading OpenVINO's compiled network from its disk cache. "
        "Python imports are not timed on either side.",
        "Outside network: share of that time not spent in the network's forward calls (read, preprocess, stitching, "
        "resampling, write; for the first call also model loading and compilation).",
        "Peer: MONAI sliding_window_inference / SliceInferer (Gaussian, card step and sigma) with SimpleITK resampling "
        "that keeps the physical extent (MONAI Spacing scale_extent=True); see the script's docstring. The peer "
        "computes in fp32; the precision after the model name is the engine's default (precision auto: bf16 on CPUs with "
        "native bfloat16, for all three bundled networks), and agreement is against the fp32 peer.",
        "CT-sized job: real hippocampus MRI crops tiled on the 3 mm network grid and resampled to 512x512x200 voxels "
        "of 0.8x0.8x2 mm, segmented by the bundled weights with a 3 mm card (see ct_sized_volume); the 4-class "
        "memory target is measured by memory_ct.py.",
    ]
    write_results(args.name, {"machine": info, "rows": rows}, table(rows), notes)
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
