"""``e2miseg-train train-refiner MODEL DATASET --out DIR``: from the command's arguments to a trained refiner."""
from __future__ import annotations

import sys
from pathlib import Path

from e2miseg.errors import E2MISegError


def train_refiner_command(args) -> int:
    import torch

    from e2miseg.api import load_model

    from .refiner_cases import auto_config, model_split, refiner_cases
    from .refiner_data import case_margin
    from .refiner_train import RefinerOptions, patch_shape, train_refiner
    from .report import setup_logger
    from e2miseg.edges.learned_net import DEFAULT_CONFIG, build_refiner

    if args.iterations < 1 or args.batch_size < 1:
        raise E2MISegError("--iterations and --batch-size must be at least 1")
    if not 0.0 <= args.prediction_fraction <= 1.0:
        raise E2MISegError(f"--prediction-fraction {args.prediction_fraction} is outside 0..1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logger = setup_logger(out / "train.log", 0)

    def log(message: str) -> None:
        logger.info(message)
        print(message, file=sys.stderr, flush=True)

    model, card = load_model(args.model, "cpu")
    dataset = Path(args.dataset or (card.get("provenance") or {}).get("dataset_path") or "")
    if not dataset.is_dir():
        raise E2MISegError(f"dataset folder '{dataset}' not found; give the model's dataset folder as DATASET")
    training, _ = model_split(card, dataset)
    training = training[: args.limit_cases or None]
    config = {**DEFAULT_CONFIG, "width": args.width, **auto_config(training, args.in_plane, args.band_mm)}
    options = RefinerOptions(out=str(out), iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             prediction_fraction=args.prediction_fraction, save_every_minutes=args.save_every,
                             max_minutes=args.max_minutes, threads=args.threads, config=config)
    shape = patch_shape(build_refiner({**config, "num_classes": 2}), options)
    margin = lambda spacing: case_margin(shape, spacing, config["distance_clip_mm"], config["in_plane"])  # noqa: E731
    predictions = Path(args.predictions) if args.predictions else out / "predictions"
    log(f"{card['name']}: {len(training)} training cases from {dataset}; model predictions cached in {predictions}")
    cases = refiner_cases(training, card, margin, model if options.prediction_fraction > 0 else None, predictions, log)
    from e2miseg.card import num_classes

    provenance = {"model": card["name"], "model_version": card["version"], "dataset": dataset.name,
                  "training_cases": len(cases)}
    train_refiner(cases, num_classes(card), options, log=log, provenance=provenance)
    return 0
