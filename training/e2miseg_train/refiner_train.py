"""The training loop of the learned boundary refiner (``e2miseg-train train-refiner``).

Conventions as ``fit``: the run folder holds ``options.json``, ``train.log``, ``state.pt`` (resume
state: tensors and plain containers, loaded with ``weights_only=True``), ``history.json`` and the
result ``refiner.safetensors`` (weights + config + training summary in its metadata, read back
without unpickling by ``attach-refiner``). Every iteration draws from its own seeded stream
(``iteration_seed``), so a resumed run sees the batches an uninterrupted one would.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from e2miseg.edges.learned_net import DEFAULT_CONFIG, build_refiner
from e2miseg.errors import E2MISegError

from .refiner_data import PatchShape, RefinerCase, sample_patch
from .trainer import _StopRequest, iteration_seed, lr_factor, set_seeds

REFINER_FILE = "refiner.safetensors"
CONFIG_METADATA_KEY = "e2miseg_refiner"


@dataclass
class RefinerOptions:
    out: str
    iterations: int = 1200
    batch_size: int = 4
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 20
    seed: int = 0
    prediction_fraction: float = 0.5  # share of samples whose input is the model's own prediction
    core_voxels: int = 16  # loss region of a 3D patch (in-plane patches: 4 slices of 2x this); 30³ inputs with the halo
    save_every_minutes: float = 3.0
    max_minutes: float | None = None
    threads: int | None = None
    log_every: int = 50
    config: dict[str, Any] = field(default_factory=dict)  # refiner config (learned_net.DEFAULT_CONFIG keys)


def patch_shape(network, options: RefinerOptions) -> PatchShape:
    halo = network.halo_zyx
    core = (4, 2 * options.core_voxels, 2 * options.core_voxels) if network.config["in_plane"] else (options.core_voxels,) * 3
    return PatchShape(core, halo)


def batch(cases: list[RefinerCase], rng: np.random.Generator, shape: PatchShape, network, options: RefinerOptions):
    config = network.config
    items = [sample_patch(cases[int(rng.integers(len(cases)))], rng, shape, network.num_classes, config["distance_clip_mm"],
                          config["band_mm"], config["in_plane"], options.prediction_fraction)
             for _ in range(options.batch_size)]
    features, targets, masks = (torch.from_numpy(np.stack(parts)) for parts in zip(*items))
    return features, targets, masks


def band_loss(logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, halo_zyx) -> tuple[torch.Tensor, float, float]:
    """Cross-entropy over the band voxels of the core; also the band accuracy before (input labels) and after."""
    core = (slice(None), slice(None)) + tuple(slice(h, -h if h else None) for h in halo_zyx)
    logits = logits[core]
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    weight = masks.float()
    loss = (losses * weight).sum() / weight.sum().clamp_min(1.0)
    with torch.no_grad():
        chosen = logits.argmax(dim=1)
        accuracy = float(((chosen == targets) & masks).sum()) / max(1, int(masks.sum()))
    return loss, accuracy, float(weight.sum())


def save_refiner_file(path: Path, network, summary: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in network.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={CONFIG_METADATA_KEY: json.dumps({"config": network.config, "training": summary})})
    os.replace(tmp, path)


def read_refiner_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and {config, training} of a ``train-refiner`` result; never unpickles."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / REFINER_FILE
    if not path.is_file():
        raise E2MISegError(f"{path} does not exist; train one with `e2miseg-train train-refiner MODEL DATASET --out DIR`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})[CONFIG_METADATA_KEY])
        return load_file(str(path)), meta
    except Exception as exc:  # safetensors/json raise their own types; the message is what matters
        raise E2MISegError(f"{path.name} is not a refiner from `e2miseg-train train-refiner` ({exc}); train one again") from None


def train_refiner(cases: list[RefinerCase], num_classes: int, options: RefinerOptions, *,
                  clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print,
                  provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume, from ``out/state.pt``) and write ``out/refiner.safetensors``; returns the summary."""
    if not cases:
        raise E2MISegError("no training cases for the refiner; check the dataset and the model's split")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    if options.threads:
        torch.set_num_threads(options.threads)
    (out / "options.json").write_text(json.dumps(asdict(options), indent=2) + "\n", encoding="utf-8")
    set_seeds(options.seed)
    config = {**DEFAULT_CONFIG, **options.config, "num_classes": num_classes}
    network = build_refiner(config)
    optimizer = torch.optim.AdamW(network.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    state: dict[str, Any] = {"iteration": 0, "train_seconds": 0.0, "history": []}
    state_path = out / "state.pt"
    if state_path.exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        if saved.get("config") != json.dumps(config, sort_keys=True):
            raise E2MISegError(f"{state_path} was saved with another refiner config; resume with the same options or "
                               f"start a new run folder")
        network.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state.update({k: saved[k] for k in ("iteration", "train_seconds", "history")})
        log(f"resumed from {state_path} at iteration {state['iteration']}")
    shape = patch_shape(network, options)
    log(f"training the boundary refiner on {len(cases)} cases: {sum(p.numel() for p in network.parameters())} parameters, "
        f"patch {shape.input_zyx} (loss on {shape.core_zyx}), band {config['band_mm']} mm, "
        f"{'in-plane' if config['in_plane'] else '3D'} kernels, {options.iterations} iterations")

    def save_state() -> None:
        payload = {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                   "config": json.dumps(config, sort_keys=True), **{k: state[k] for k in ("iteration", "train_seconds", "history")}}
        tmp = out / ".state.pt.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, state_path)

    stop = _StopRequest()
    session_start, seconds_before, last_save = clock(), state["train_seconds"], clock()
    window: list[tuple[float, float]] = []
    network.train()
    try:
        while state["iteration"] < options.iterations:
            state["train_seconds"] = seconds_before + clock() - session_start
            if stop.flag or (options.max_minutes and state["train_seconds"] >= options.max_minutes * 60):
                log("stopped early: " + ("stop requested" if stop.flag else f"time budget of {options.max_minutes} min reached"))
                break
            step_seed = iteration_seed(options.seed, 0, state["iteration"])
            set_seeds(step_seed)
            rng = np.random.default_rng(step_seed)
            features, targets, masks = batch(cases, rng, shape, network, options)
            for group in optimizer.param_groups:
                group["lr"] = options.lr * lr_factor(state["iteration"] / options.iterations, "cosine", state["iteration"],
                                                     options.warmup_iters)
            optimizer.zero_grad(set_to_none=True)
            loss, accuracy, _ = band_loss(network(features), targets, masks, shape.halo_zyx)
            loss.backward()
            optimizer.step()
            state["iteration"] += 1
            window.append((float(loss.detach()), accuracy))
            if state["iteration"] % options.log_every == 0 or state["iteration"] == options.iterations:
                entry = {"iteration": state["iteration"], "loss": float(np.mean([w[0] for w in window])),
                         "band_accuracy": float(np.mean([w[1] for w in window])),
                         "minutes": round((seconds_before + clock() - session_start) / 60, 2)}
                state["history"].append(entry)
                window.clear()
                log(f"iteration {entry['iteration']}: loss {entry['loss']:.4f}, band accuracy {entry['band_accuracy']:.4f} "
                    f"({entry['minutes']:.1f} min)")
            if clock() - last_save >= options.save_every_minutes * 60:
                save_state()
                last_save = clock()
    finally:
        stop.restore()
    state["train_seconds"] = seconds_before + clock() - session_start
    save_state()
    summary = {"iterations": state["iteration"], "minutes": round(state["train_seconds"] / 60, 1), "seed": options.seed,
               "batch_size": options.batch_size, "lr": options.lr, "prediction_fraction": options.prediction_fraction,
               "patch_zyx": list(shape.input_zyx), "cases": len(cases), "torch": torch.__version__,
               "perturbations": "dilate/erode/shift by 1-3 voxels per label, whole or in a local ball",
               **(provenance or {})}
    network.eval()
    save_refiner_file(out / REFINER_FILE, network, summary)
    (out / "history.json").write_text(json.dumps(state["history"], indent=1) + "\n", encoding="utf-8")
    log(f"wrote {out / REFINER_FILE} after {state['iteration']} iterations ({summary['minutes']} min)")
    return summary
