"""``fit``: the training loop (single process or torchrun DDP).

One iteration = one batch of augmented patches through the architecture's own loss. An "epoch" is a
fixed number of iterations (nnU-Net's convention), so validation and logging do not depend on the
dataset size. The run folder holds: ``plan.json``, ``train.log``, ``state.pt`` (resume state, tensors
and plain containers only, loaded with ``weights_only=True``), ``best.safetensors`` /
``last.safetensors`` (engine checkpoints with cards), ``history.json`` and ``curves.png``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from e2miseg.card import validate_card
from e2miseg.checkpoint import save_checkpoint
from e2miseg.inference import resolve_device
from e2miseg.errors import E2MISegError

from .baselines import build_network
from .cache import load_cases
from .dataset import list_cases
from .report import plot_curves, setup_logger
from .sampling import PatchSampler
from .validation import validate


@dataclass
class FitOptions:
    out: str
    epochs: int = 1000
    iters_per_epoch: int = 50
    batch_size: int = 2
    optimizer: str = "adamw"  # adamw | sgd (nesterov, momentum 0.99 as nnU-Net)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: str = "poly"  # poly | cosine
    schedule_clock: str = "iterations"  # iterations | time (anneal over --max-minutes instead)
    warmup_iters: int = 50
    max_minutes: float | None = None
    val_every: int = 2  # epochs
    val_step: float | None = None
    max_val_cases: int | None = None
    save_every_minutes: float = 3.0
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    fg_fraction: float = 0.33
    grad_clip: float = 12.0
    loss: str = "architecture"  # architecture (the network's own loss) | dice-ce (see ``make_loss``)
    loss_config: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the network's own loss
    augment: bool = True
    ema_decay: float = 0.0  # > 0: validate and save an exponential moving average of the weights
    amp: bool = True  # CUDA: float16 with loss scaling; CPU: bfloat16 where ``training_precision`` says so
    channels_last: bool = True  # 2D networks on the CPU (``prefers_channels_last``); False keeps contiguous memory
    init: str | None = None  # a checkpoint of the same architecture to start from (ignored when resuming state.pt)
    cache_dir: str = "runs/cache"
    save_rank_weights: bool = False  # debugging/tests: every DDP rank writes its final weights
    extra: dict[str, Any] = field(default_factory=dict)


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def iteration_seed(seed: int, rank: int, iteration: int) -> int:
    """The seed of one iteration's randomness (patches, augmentation, dropout) on one rank.

    Every iteration draws from its own stream, so a run resumed at iteration N sees exactly the
    batches an uninterrupted run sees from N on: the sampler's position is the iteration count.
    """
    return int(np.random.SeedSequence([seed, rank, iteration]).generate_state(1)[0])


def lr_factor(progress: float, schedule: str, iteration: int, warmup: int) -> float:
    """Multiplier of the base lr at ``progress`` in [0, 1] (after a short linear warm-up)."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "poly":
        factor = (1 - progress) ** 0.9
    elif schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use poly or cosine")
    if warmup and iteration < warmup:
        factor *= (iteration + 1) / warmup
    return max(factor, 1e-3)


def training_precision(model: torch.nn.Module, device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype of a training step, or None for float32.

    CUDA: float16 (with a GradScaler). CPU: bfloat16 only for slice-wise networks that ask for it at
    inference (``prefers_bf16``, the same flag the engine's runtime reads) and only on CPUs with native
    bf16 arithmetic (AVX512-BF16/AMX): elsewhere bf16 is emulated and slower than float32. With
    channels-last, fit trains EHANet 2.26x and S2aNet 2.03x faster than in float32 with contiguous memory
    (benchmarks/results/training_throughput_bf16.md, 2 threads, AMD EPYC with AVX512-BF16).
    3D networks keep float32 on the CPU: every E2MISeg/DynUNet comparison so far was trained in it.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    slice_wise = getattr(model, "kind", "3d") in ("2d", "2.5d")
    if device.type == "cpu" and slice_wise and getattr(model, "prefers_bf16", False):
        from e2miseg.runtime import native_bf16

        return torch.bfloat16 if native_bf16() else None
    return None


def prefers_channels_last(model: torch.nn.Module, device: torch.device) -> bool:
    """Channels-last memory for 2D networks on the CPU (oneDNN's native layout for 2D convolutions; part
    of the gain in ``training_precision``); 3D networks stay contiguous (measured slower, training/README)."""
    return device.type == "cpu" and getattr(model, "kind", "3d") in ("2d", "2.5d")


def start_from_checkpoint(model: torch.nn.Module, card: dict[str, Any], path: str) -> None:
    """Load a checkpoint's weights (read without unpickling) into a freshly built network, so a run can
    continue a shipped model when its run folder (state.pt) is gone; the architecture and its config
    must be the plan's."""
    from e2miseg.checkpoint import load_weights_into, read_checkpoint

    tensors, other = read_checkpoint(path)
    mine, theirs = card["architecture"], other["architecture"]
    # compare the networks' full configs (a card may list only the non-default keys)
    if mine["name"] != theirs["name"] or build_network(theirs["name"], theirs.get("config", {})).config != model.config:
        raise E2MISegError(f"--init {path} holds {theirs['name']} {json.dumps(theirs.get('config', {}), sort_keys=True)}, but "
                           f"this plan trains {mine['name']} {json.dumps(model.config, sort_keys=True)}; give a checkpoint of the same network")
    load_weights_into(model, tensors, str(path))


LOSSES = ("architecture", "dice-ce")


def ema_update(decay: float):
    """``multi_avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: an EMA whose decay warms up.

    With a fixed decay of 0.995 the average would still be mostly the random initial weights after a
    few hundred iterations; ``(1 + n) / (10 + n)`` (as timm's and TensorFlow's EMA) lets it follow
    the early, fast-moving weights; it reaches 0.995 after about 1800 updates.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current):  # counters (e.g. BatchNorm's num_batches_tracked) follow the model
            if not a.is_floating_point():
                a.copy_(c)

    return update


def make_loss(model: torch.nn.Module, name: str, config: dict[str, Any] | None = None) -> torch.nn.Module:
    """The training loss: the architecture's own (``default_loss``), or ``dice-ce``: MONAI's DiceCE
    (the DynUNet baseline's loss) on each of the network's outputs, with the network's own
    deep-supervision weighting, so a comparison with the baseline can hold the loss fixed."""
    if name == "architecture":
        try:
            return model.default_loss(**(config or {}))
        except (TypeError, ValueError) as error:  # an unknown keyword or a value out of range
            raise E2MISegError(f"--loss-config does not fit {type(model).__name__}'s loss: {error}") from None
    if config:
        raise E2MISegError("--loss-config sets the network's own loss; it does not apply to --loss dice-ce")
    if name == "dice-ce":
        from e2miseg.losses import DeepSupervisionLoss

        from .baselines import DiceCELabels

        own = model.default_loss()
        if not isinstance(own, DeepSupervisionLoss):  # EHANet's edge head, S2aNet's adaptive class weights
            raise E2MISegError(f"--loss dice-ce replaces the region loss of deep-supervised networks (E2MISeg, the "
                             f"DynUNet baseline); {type(model).__name__} has its own loss structure: use --loss architecture")
        return DeepSupervisionLoss(DiceCELabels(), own.weights)
    raise ValueError(f"unknown loss '{name}'; use one of {', '.join(LOSSES)}")


def make_optimizer(model: torch.nn.Module, options: FitOptions) -> torch.optim.Optimizer:
    if options.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=options.lr, momentum=0.99, nesterov=True,
                               weight_decay=options.weight_decay)
    if options.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    raise ValueError(f"unknown optimizer {options.optimizer!r}; use adamw or sgd")


class Distributed:
    """torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK) or a single process."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1:
            import torch.distributed as dist

            backend = "nccl" if device.type == "cuda" else "gloo"
            if not dist.is_initialized():
                dist.init_process_group(backend=backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if any rank says so (so all ranks stop at the same iteration)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        tensor = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item() > 0)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank, as DDP does before each forward."""
        if self.world > 1:
            import torch.distributed as dist

            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class _StopRequest:
    """SIGTERM/SIGINT end the run cleanly at the next iteration (state and checkpoints saved)."""

    def __init__(self) -> None:
        import signal
        import threading

        self.flag = False
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.flag = True

    def restore(self) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def training_card(plan: dict[str, Any], state: dict[str, Any], options: FitOptions, train_names, val_names,
                  best: dict[str, Any] | None) -> dict[str, Any]:
    """The plan's card plus provenance of this run (filled again by ``export`` with evaluation)."""
    card = json.loads(json.dumps(plan["card"]))
    labels = {str(label["value"]): label["name"] for label in card["labels"]}
    card["provenance"] = {
        "dataset": plan.get("dataset_name"), "dataset_path": plan.get("dataset"),
        "split": {"rule": plan["split"]["rule"], "train_count": len(train_names), "val_count": len(val_names),
                  "val_cases": list(val_names)},
        "training": {"iterations": state["iteration"], "epochs": state["epoch"],
                     "wall_time_minutes": round(state["train_seconds"] / 60, 1),
                     "batch_size": options.batch_size, "optimizer": options.optimizer, "lr": options.lr,
                     "weight_decay": options.weight_decay, "schedule": options.schedule,
                     "schedule_clock": options.schedule_clock, "fg_fraction": options.fg_fraction,
                     "grad_clip": options.grad_clip, "loss": options.loss, "seed": options.seed,
                     **({"loss_config": options.loss_config} if options.loss_config else {}),
                     **({"init": str(options.init)} if options.init else {}),
                     "ema_decay": options.ema_decay,
                     "augmentation": options.augment,
                     "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
                     "torch": torch.__version__, "trainer": "e2miseg-train"},
    }
    if best:
        card["provenance"]["validation_during_training"] = {
            "epoch": best["epoch"], "grid": "network grid",
            "dice": {labels.get(k, k): round(v, 4) for k, v in best["val_dice"].items()}}
    return card


def fit(plan: dict[str, Any], options: FitOptions, *, clock: Callable[[], float] = time.monotonic,
        after_iteration: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train as ``plan`` says; returns the final state summary. Resumes from ``out/state.pt``.

    SIGTERM/SIGINT end the run cleanly at the next iteration (final validation, checkpoints, state).
    ``clock`` (seconds) measures the time budget and the time-clock schedule; ``after_iteration``
    gets ``{"iteration", "loss", "lr"}`` after every step. Both let tests drive a run without
    depending on how fast this machine is.
    """
    stop_requested = _StopRequest()
    try:
        return _fit(plan, options, stop_requested, clock, after_iteration)
    finally:
        stop_requested.restore()


def _fit(plan: dict[str, Any], options: FitOptions, stop_requested: "_StopRequest", clock: Callable[[], float],
         after_iteration: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    if options.ema_decay and not 0 < options.ema_decay < 1:  # before any data is loaded
        raise E2MISegError(f"--ema must lie between 0 and 1 (got {options.ema_decay}); try 0.995")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    if options.threads:
        torch.set_num_threads(options.threads)
    device = resolve_device(options.device)
    dist = Distributed(device)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    log = setup_logger(out / "train.log", dist.rank)
    say = (lambda msg: (log.info(msg), print(msg, flush=True))) if dist.main else (lambda msg: None)
    card = validate_card(plan["card"])  # defaults filled: the settings inference will use
    if dist.main:
        (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
        (out / "options.json").write_text(json.dumps(asdict(options), indent=2) + "\n", encoding="utf-8")

    cases = {c.name: c for c in list_cases(plan["dataset"])}
    train_names = [n for n in plan["split"]["train"] if n in cases]
    val_names = [n for n in plan["split"]["val"] if n in cases]
    if options.max_val_cases:
        val_names = val_names[: options.max_val_cases]
    wanted = [cases[n] for n in train_names + val_names]
    if not dist.main:
        dist.barrier()  # rank 0 fills the cache first; the others then only read it
    arrays = load_cases(wanted, card, plan["dataset"], options.cache_dir, verbose=dist.main)
    if dist.main:
        dist.barrier()
    val_arrays = {n: arrays[n] for n in val_names}

    set_seeds(options.seed)  # identical initial weights on every rank
    model = build_network(card["architecture"]["name"], card["architecture"]["config"]).to(device)
    if options.init and not (out / "state.pt").exists():
        start_from_checkpoint(model, card, options.init)
        say(f"initial weights from {options.init}")
    loss_fn = make_loss(model, options.loss, options.loss_config)
    optimizer = make_optimizer(model, options)
    amp_dtype = training_precision(model, device, options.amp)
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda") if use_amp and device.type == "cuda" else None
    channels_last = options.channels_last and prefers_channels_last(model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist.main:
        say(f"precision {amp_dtype or torch.float32} autocast, {'channels-last' if channels_last else 'contiguous'} memory")
    ema = None
    if options.ema_decay:
        from torch.optim.swa_utils import AveragedModel

        # Buffers are averaged too, so the saved network is one consistent set of tensors.
        ema = AveragedModel(model, multi_avg_fn=ema_update(options.ema_decay), use_buffers=True)
        ema.module.eval()
    state: dict[str, Any] = {"iteration": 0, "epoch": 0, "train_seconds": 0.0, "best_score": -1.0, "history": [],
                             "epoch_losses": []}

    state_path = out / "state.pt"
    if state_path.exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            if not saved.get("ema"):
                raise E2MISegError(f"{state_path} was saved without --ema; resume it without --ema or start a new run folder")
            ema.load_state_dict(saved["ema"])
        state.update({k: saved[k] for k in ("iteration", "epoch", "train_seconds", "best_score", "history")})
        # the losses of a part-done epoch, so its logged mean is the uninterrupted run's
        state["epoch_losses"] = [float(v) for v in saved.get("epoch_losses", [])]
        say(f"resumed from {state_path} at iteration {state['iteration']} (epoch {state['epoch']}, "
            f"{state['train_seconds'] / 60:.1f} min trained)")
    # Each iteration reseeds from (seed, rank, iteration) below: a resumed run continues the same data.
    sampler = PatchSampler([arrays[n] for n in train_names], card, seed=options.seed * 1000 + dist.rank,
                           fg_fraction=options.fg_fraction, augment=options.augment)

    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    total_iters = options.epochs * options.iters_per_epoch
    budget = options.max_minutes * 60 if options.max_minutes else None
    labels = {label["value"]: label["name"] for label in card["labels"]}
    say(f"training {card['architecture']['name']} on {len(train_names)} cases (val {len(val_names)}), "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, device {device}, world {dist.world}, "
        f"{total_iters} iterations max" + (f", budget {options.max_minutes} min" if budget else ""))

    def save_state() -> None:
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                   "scaler": scaler.state_dict() if scaler is not None else {},
                   "ema": ema.state_dict() if ema is not None else {},
                   **{k: state[k] for k in ("iteration", "epoch", "train_seconds", "best_score", "history", "epoch_losses")}}
        tmp = out / ".state.pt.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, state_path)

    # What validation scores and the checkpoints hold: the EMA weights when --ema is on.
    evaluated = ema.module if ema is not None else model

    def save_weights(name: str, best: dict[str, Any] | None) -> None:
        card_now = training_card(plan, state, options, train_names, val_names, best)
        # clone: some networks (MONAI DynUNet) alias one tensor under two names, which safetensors refuses
        save_checkpoint(out / name, {k: v.detach().clone() for k, v in evaluated.state_dict().items()}, card_now)

    def run_validation() -> dict[str, Any]:
        started = clock()
        result = validate(evaluated, card, val_arrays, device=str(device), step=options.val_step)
        entry = {"epoch": state["epoch"], "iteration": state["iteration"],
                 "val_dice": {str(k): v for k, v in result["dice"].items()}, "val_mean": result["mean_dice"],
                 "val_seconds": round(clock() - started, 1), "minutes": round(state["train_seconds"] / 60, 2)}
        state["history"].append(entry)
        scores = ", ".join(f"{labels[k]} {v:.4f}" for k, v in result["dice"].items())
        say(f"epoch {state['epoch']} iteration {state['iteration']}: validation Dice {scores} (mean {result['mean_dice']:.4f}, "
            f"{entry['val_seconds']}s)")
        if result["mean_dice"] > state["best_score"]:
            state["best_score"] = result["mean_dice"]
            save_weights("best.safetensors", entry)
            say(f"new best checkpoint (mean Dice {result['mean_dice']:.4f})")
        return entry

    from tqdm import tqdm

    progress_bar = tqdm(total=total_iters, initial=state["iteration"], disable=not dist.main, mininterval=10,
                        dynamic_ncols=True, desc=card["name"])
    model.train()
    session_start = clock()
    seconds_before = state["train_seconds"]
    last_state_save = clock()
    epoch_losses: list[float] = state["epoch_losses"]
    last_val_seconds = 0.0
    stop_reason = "iterations done"
    while state["iteration"] < total_iters:
        state["train_seconds"] = seconds_before + clock() - session_start
        # Stop early enough for the final validation and saving to fit in the budget.
        out_of_time = budget is not None and state["train_seconds"] + last_val_seconds * 1.2 >= budget
        if dist.any_flag(out_of_time or stop_requested.flag):
            stop_reason = "stop requested (SIGTERM/SIGINT)" if stop_requested.flag else f"time budget of {options.max_minutes} min reached"
            break
        if options.schedule_clock == "time" and budget:
            progress = max(state["iteration"] / total_iters, state["train_seconds"] / budget)
        else:
            progress = state["iteration"] / total_iters
        factor = lr_factor(progress, options.schedule, state["iteration"], options.warmup_iters)
        for group in optimizer.param_groups:
            group["lr"] = options.lr * factor
        step_seed = iteration_seed(options.seed, dist.rank, state["iteration"])
        set_seeds(step_seed)  # dropout and anything else drawing from the global generators
        sampler.reseed(step_seed)
        images, targets = sampler.batch(options.batch_size)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss = loss_fn(net(images), targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        epoch_losses.append(float(loss.detach()))
        state["iteration"] += 1
        progress_bar.update(1)
        if after_iteration is not None:
            after_iteration({"iteration": state["iteration"], "loss": epoch_losses[-1], "lr": options.lr * factor})
        if budget:
            progress_bar.set_postfix_str(f"loss {epoch_losses[-1]:.3f} lr {options.lr * factor:.2e} "
                                         f"budget left {max(0.0, budget - state['train_seconds']) / 60:.1f} min", refresh=False)
        if state["iteration"] % options.iters_per_epoch == 0:
            state["epoch"] += 1
            entry = {"epoch": state["epoch"], "iteration": state["iteration"], "loss": float(np.mean(epoch_losses)),
                     "lr": options.lr * factor, "minutes": round(state["train_seconds"] / 60, 2)}
            state["history"].append(entry)
            say(f"epoch {state['epoch']} iteration {state['iteration']}: loss {entry['loss']:.4f} lr {entry['lr']:.2e} "
                f"({entry['minutes']:.1f} min)")
            epoch_losses.clear()
            if dist.main and val_arrays and state["epoch"] % options.val_every == 0:
                val_entry = run_validation()
                last_val_seconds = val_entry["val_seconds"]
                plot_curves(state["history"], labels, out / "curves.png", card["name"])
                save_weights("last.safetensors", None)
            dist.barrier()
        if dist.main and clock() - last_state_save >= options.save_every_minutes * 60:
            save_state()
            last_state_save = clock()
    progress_bar.close()
    dist.sync_buffers(model)
    state["train_seconds"] = seconds_before + clock() - session_start
    if dist.main:
        if val_arrays and (not state["history"] or state["history"][-1].get("iteration") != state["iteration"]
                           or "val_dice" not in state["history"][-1]):
            run_validation()
        state["train_seconds"] = seconds_before + clock() - session_start
        save_weights("last.safetensors", None)
        if not (out / "best.safetensors").exists():
            save_weights("best.safetensors", None)
        save_state()
        (out / "history.json").write_text(json.dumps(state["history"], indent=1) + "\n", encoding="utf-8")
        plot_curves(state["history"], labels, out / "curves.png", card["name"])
        say(f"stopped: {stop_reason}; {state['iteration']} iterations, {state['train_seconds'] / 60:.1f} min, "
            f"best mean validation Dice {state['best_score']:.4f}")
    if options.save_rank_weights:
        save_checkpoint(out / f"rank{dist.rank}.safetensors", {k: v.detach().clone() for k, v in model.state_dict().items()}, plan["card"])
    dist.barrier()
    dist.close()
    return {k: state[k] for k in ("iteration", "epoch", "train_seconds", "best_score")}
