"""``e2miseg-train``: plan, fit, evaluate, compare, export, amend an exported card (choose-defaults,
volume-ranges), and the learned boundary refiner (train-refiner, attach-refiner)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from e2miseg.errors import E2MISegError
from e2miseg.settings import Settings, card_fields


def _plan_from(args) -> dict:
    from .plan import make_plan, read_plan

    source = Path(args.plan)
    if source.is_file():
        return read_plan(source)
    return make_plan(source, args.arch, name=getattr(args, "name", None))


def cmd_plan(args) -> int:
    from .plan import make_plan, write_plan

    plan = make_plan(args.dataset, args.arch, name=args.name, max_patch_voxels=args.max_patch_voxels,
                     target_spacing_xyz=args.spacing)
    out = Path(args.out or f"runs/plans/{plan['card']['name']}.json")
    write_plan(plan, out)
    fp = plan["fingerprint"]
    print(f"{fp['dataset']}: {fp['num_cases']} cases, median spacing (x,y,z) {fp['median_spacing_xyz']}, "
          f"median shape (z,y,x) {fp['median_shape_zyx']}, class frequencies {[round(f, 4) for f in fp['class_frequencies']]}")
    print(f"proposed: spacing {plan['card']['preprocessing']['target_spacing_xyz']}, patch (z,y,x) "
          f"{plan['card']['inference']['patch_size_zyx']}, normalisation "
          f"{[c['normalization']['scheme'] for c in plan['card']['channels']]}, mirror axes {plan['card']['inference']['mirror_axes']}, "
          f"split {len(plan['split']['train'])} train / {len(plan['split']['val'])} val")
    print(f"plan written to {out}")
    return 0


def _apply_overrides(plan: dict, args) -> dict:
    from .baselines import baseline_plan

    card = plan["card"]
    if args.patch:
        card["inference"]["patch_size_zyx"] = list(args.patch)
        if "patch_size" in card["architecture"]["config"]:
            card["architecture"]["config"]["patch_size"] = list(args.patch)
    if args.config:
        card["architecture"]["config"].update(json.loads(args.config))
    if args.name:
        card["name"] = args.name
    if args.baseline:
        plan = baseline_plan(plan, args.baseline, **json.loads(args.baseline_config or "{}"))
        if args.name:
            plan["card"]["name"] = args.name
    from e2miseg.card import validate_card

    validate_card(plan["card"])
    return plan


def _json_object(text: str | None, option: str) -> dict:
    """A JSON object given on the command line, or a one-line error naming the option."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise E2MISegError(f"{option} is not valid JSON ({error.msg}); give an object such as '{{\"weighting\": \"none\"}}'") from None
    if not isinstance(value, dict):
        raise E2MISegError(f"{option} must be a JSON object, got {type(value).__name__}")
    return value


def cmd_fit(args) -> int:
    from .trainer import FitOptions, fit

    plan = _apply_overrides(_plan_from(args), args)
    options = FitOptions(out=args.out, epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, batch_size=args.batch_size,
                         optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                         schedule_clock=args.schedule_clock, warmup_iters=args.warmup, ema_decay=args.ema, max_minutes=args.max_minutes,
                         val_every=args.val_every, val_step=args.val_step, max_val_cases=args.max_val_cases,
                         save_every_minutes=args.save_every, device=args.device, threads=args.threads, seed=args.seed,
                         fg_fraction=args.fg_fraction, grad_clip=args.grad_clip, loss=args.loss, loss_config=_json_object(args.loss_config, '--loss-config'),
                         augment=not args.no_augment,
                         amp=not args.no_amp, channels_last=not args.no_channels_last, init=args.init, cache_dir=args.cache_dir, save_rank_weights=args.save_rank_weights)
    fit(plan, options)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import NETWORK_ONLY, evaluate

    chosen = Settings(**{spec.name: getattr(args, spec.name) for spec in card_fields()})
    if args.network_only:
        chosen = chosen.over(NETWORK_ONLY)
    summary = evaluate(args.model, args.dataset, args.out, cases=args.cases, device=args.device, threads=args.threads,
                       step=args.step, limit=args.limit, settings=chosen)
    print(summary["markdown"])
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    comparison = None
    if args.compare:
        from .evaluate import comparison_table

        comparison = comparison_table([json.loads(Path(p).read_text(encoding="utf-8")) for p in args.compare])
    path = export_run(args.run, args.out, checkpoint=args.checkpoint, metrics=args.metrics, name=args.name,
                      version=args.version, half_precision=not args.fp32, record=args.record, comparison=comparison,
                      notes=Path(args.notes).read_text(encoding="utf-8") if args.notes and Path(args.notes).is_file() else args.notes,
                      regression_table=args.regression_table, regression_cases=args.regression_cases, data_root=args.data_root)
    print(f"exported {path}")
    if args.regression_table:
        print(f"regression figures of {path.name} written to {args.regression_table}")
    return 0


def cmd_regression_table(args) -> int:
    from .regression import update_table

    table = update_table(args.out, args.models, data_root=args.data_root, count=args.cases)
    for model in args.models:
        entry = table["models"][Path(model).name]
        figures = "; ".join(f"{case} " + "/".join(f"{d:.4f}" for d in scores.values()) for case, scores in entry["cases"].items())
        print(f"{entry['name']} {entry['version']} ({entry['runtime']}, {entry['precision']}): {figures}")
    print(f"written to {args.out}")
    return 0


def cmd_compare(args) -> int:
    from .paired import compare_evaluations

    print(compare_evaluations(args.first, args.second, out=args.out, resamples=args.resamples, seed=args.seed), end="")
    return 0


def cmd_choose_defaults(args) -> int:
    from .defaults import choose_defaults, markdown

    comparison = choose_defaults(args.model, args.dataset, out=args.out, cases=args.cases, device=args.device,
                                 threads=args.threads, qualities=args.qualities, methods=args.methods,
                                 strengths=args.strengths, island_fractions=args.island_fractions, limit=args.limit,
                                 resamples=args.resamples, seed=args.seed, write=args.write, record=args.record,
                                 log=lambda line: print(line, file=sys.stderr))
    print(markdown(comparison), end="")
    if args.write:
        print(f"wrote the defaults into the card of {args.model}" + (" and its sha256 into index.json" if args.record else ""),
              file=sys.stderr)
    return 0


def cmd_volume_ranges(args) -> int:
    from .volumes import record_volume_ranges

    ranges = record_volume_ranges(args.model, args.dataset, cases=args.cases, metrics=args.metrics, write=args.write,
                                  record=args.record)
    for name, r in ranges.items():
        print(f"{name}: {r['min']:.1f} - {r['max']:.1f} mm³ over {r['cases']} validation case(s)")
    if args.write:
        print(f"wrote the ranges into the card of {args.model}" + (" and its sha256 into index.json" if args.record else ""),
              file=sys.stderr)
    return 0


def cmd_train_refiner(args) -> int:
    from .refiner_cli import train_refiner_command

    return train_refiner_command(args)


def cmd_attach_refiner(args) -> int:
    from .refiner_attach import attach

    attach(args.model, args.refiner, dataset=args.dataset, cases=args.cases, limit=args.limit, out=args.out,
           report=args.report, defaults=args.defaults, threads=args.threads, record=args.record,
           log=lambda line: print(line, file=sys.stderr))
    return 0


def add_card_amend_options(p: argparse.ArgumentParser, what: str) -> None:
    """The options of the commands that measure on a model's validation cases and may write the result into its card
    (choose-defaults, volume-ranges): which model, which dataset and cases (``evaluate.card_cases``), --write, --record."""
    p.add_argument("model", help="checkpoint path or store name")
    p.add_argument("dataset", nargs="?", help="the dataset folder (default: the card's provenance dataset_path)")
    p.add_argument("--cases", default="card", help="card (the card's validation cases), val, or comma-separated case names")
    p.add_argument("--write", action="store_true", help=f"rewrite the checkpoint's card with {what} (weights unchanged)")
    p.add_argument("--record", action="store_true", help="with --write: refresh the sha256 in the folder's index.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2miseg-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="fingerprint an MSD dataset and propose a training plan")
    p.add_argument("dataset")
    p.add_argument("--arch", default="e2miseg", choices=["e2miseg", "ehanet", "s2anet"])
    p.add_argument("--name", help="model name in the card (default ARCH-DATASET)")
    p.add_argument("--out", help="plan JSON path (default runs/plans/NAME.json)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="target spacing in mm (default: median)")
    p.add_argument("--max-patch-voxels", type=int, default=64 ** 3)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("fit", help="train (resumes from OUT/state.pt); launch with torchrun for DDP")
    p.add_argument("plan", help="plan JSON from `plan`, or a dataset folder (planned on the fly)")
    p.add_argument("--out", required=True, help="run folder (logs, state, checkpoints)")
    p.add_argument("--arch", default="e2miseg", choices=["e2miseg", "ehanet", "s2anet"])
    p.add_argument("--name")
    p.add_argument("--baseline", choices=["monai-dynunet"], help="train a comparison baseline with the same plan")
    p.add_argument("--baseline-config", help="JSON overrides of the baseline config")
    p.add_argument("--config", help="JSON overrides of the architecture config")
    p.add_argument("--patch", type=int, nargs="+", help="patch size (z y x) or in-plane (a b)")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--iters-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=["poly", "cosine"], default="poly")
    p.add_argument("--schedule-clock", choices=["iterations", "time"], default="iterations",
                   help="'time' anneals the lr over --max-minutes (for budgeted runs)")
    p.add_argument("--warmup", type=int, default=50, help="linear lr warm-up iterations")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights (e.g. 0.995; 0 = off)")
    p.add_argument("--max-minutes", type=float, help="wall-clock training budget (total over resumes)")
    p.add_argument("--val-every", type=int, default=2, help="validate every N epochs")
    p.add_argument("--val-step", type=float, help="sliding-window step for validation (default: card)")
    p.add_argument("--max-val-cases", type=int)
    p.add_argument("--save-every", type=float, default=3.0, help="minutes between resume states")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fg-fraction", type=float, default=0.33)
    p.add_argument("--grad-clip", type=float, default=12.0)
    p.add_argument("--loss", choices=["architecture", "dice-ce"], default="architecture",
                   help="the network's own loss, or MONAI DiceCE (the DynUNet baseline's) with the network's deep supervision")
    p.add_argument("--loss-config", help="JSON keyword arguments of the network's own loss, e.g. S2aNet's "
                   "'{\"weighting\": \"adaptive-foreground\", \"dice_weight\": 1}' (losses.WeightAdaptiveLoss)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--init", help="start from this checkpoint's weights (same network and config; e.g. a shipped model "
                   "whose run folder is gone); ignored when OUT/state.pt exists")
    p.add_argument("--no-channels-last", action="store_true",
                   help="keep 2D networks in contiguous memory on the CPU (default: channels-last, oneDNN's faster layout)")
    p.add_argument("--no-amp", action="store_true", help="train in float32 (default: float16 autocast on CUDA, bfloat16 on CPUs with native bf16 for networks that prefer it)")
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--save-rank-weights", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("evaluate", help="segment cases with the engine and score Dice / HD95 (mm)")
    p.add_argument("model", help="checkpoint path or store name")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="output folder (CSV, summary, box plot)")
    p.add_argument("--cases", default="val", help="val, train, all, or comma-separated case names")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--step", type=float)
    p.add_argument("--limit", type=int, help="evaluate at most N cases")
    p.add_argument("--network-only", action="store_true",
                   help="score the network alone: no clean-up, no refinement, no TTA (flags below still win)")
    Settings.add_arguments(p, only=[spec.name for spec in card_fields()])  # the card's settings, e.g. --tta
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write the single-file checkpoint with the full model card")
    p.add_argument("run", help="run folder from `fit`")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--checkpoint", default="best", help="best, last, or another NAME.safetensors stem in the run folder")
    p.add_argument("--metrics", help="summary.json from `evaluate` to put in the card")
    p.add_argument("--name")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--fp32", action="store_true", help="keep float32 (default stores fp16)")
    p.add_argument("--record", action="store_true", help="record the sha256 in the folder's index.json")
    p.add_argument("--notes", help="text (or a text file) for the card's provenance and the Markdown card")
    p.add_argument("--compare", nargs="+", help="summary.json files of other models on the same cases, tabled in NAME.md")
    p.add_argument("--regression-table", metavar="JSON",
                   help="also record per-case Dice of the exported file on a few validation cases (default runtime and "
                        "precision, card defaults) in this table, e.g. Testing/fixtures/shipped_models.json")
    p.add_argument("--regression-cases", type=int, default=3, metavar="N", help="validation cases in the regression table")
    p.add_argument("--data-root", help="folder holding the dataset (default: the path in the card)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("regression-table", help="record per-case Dice of exported models on a few validation cases, "
                                                "as CI's shipped-model tests re-check them")
    p.add_argument("models", nargs="+", help="exported .safetensors files")
    p.add_argument("--out", default="Testing/fixtures/shipped_models.json", help="the table (entries of other models are kept)")
    p.add_argument("--cases", type=int, default=3, help="validation cases per model (the first in the card's split)")
    p.add_argument("--data-root", help="folder holding the datasets (default: the paths in the cards)")
    p.set_defaults(func=cmd_regression_table)

    p = sub.add_parser("choose-defaults", help="measure postprocessing and quality candidates on the validation split; "
                                               "record the comparison and the chosen defaults in the card")
    add_card_amend_options(p, "the chosen defaults")
    p.add_argument("--out", help="folder for defaults.json / defaults.md")
    p.add_argument("--qualities", nargs="+", default=["fast", "normal", "normal+tta"], help="qualities to compare")
    p.add_argument("--methods", nargs="+", default=["meanfield"], help="edge refinement methods to try")
    p.add_argument("--strengths", nargs="+", type=float, default=[0.3, 0.6], help="edge refinement strengths to try")
    p.add_argument("--island-fractions", nargs="+", type=float, default=[0.02, 0.1],
                   help="island sizes to try, as fractions of the smallest structure's median volume")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--limit", type=int, help="at most N cases (for a quick look; the card should use them all)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the cases")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_choose_defaults)

    p = sub.add_parser("volume-ranges", help="record per-label volume ranges (mm³) of the validation split's reference "
                                             "labels in the card, for the engine's plausibility warning (no retraining)")
    add_card_amend_options(p, "the ranges")
    p.add_argument("--metrics", help="take the reference volumes from this `evaluate` summary.json instead of the label files")
    p.set_defaults(func=cmd_volume_ranges)

    p = sub.add_parser("train-refiner", help="train the model's learned boundary refiner on its own predictions over its "
                                            "training cases and on perturbed references (resumes from OUT/state.pt)")
    p.add_argument("model", help="the model's .safetensors file (or store name)")
    p.add_argument("dataset", nargs="?", help="the dataset folder (default: the card's provenance dataset_path)")
    p.add_argument("--out", required=True, help="run folder (state.pt, train.log, refiner.safetensors)")
    p.add_argument("--iterations", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget (total over resumes)")
    p.add_argument("--save-every", type=float, default=3.0, help="minutes between resume states")
    p.add_argument("--prediction-fraction", type=float, default=0.5,
                   help="share of samples on the model's own predictions (the rest: perturbed references)")
    p.add_argument("--band-mm", type=float, help="band the refiner acts in (default 3.5 in-plane voxels)")
    p.add_argument("--in-plane", choices=["auto", "yes", "no"], default="auto",
                   help="in-plane kernels (auto: when slices are over twice as thick as the in-plane spacing)")
    p.add_argument("--width", type=int, default=12, help="channels of the refiner's layers")
    p.add_argument("--limit-cases", type=int, help="use at most N training cases (quick runs)")
    p.add_argument("--predictions", help="cache folder of the model's predictions (default OUT/predictions)")
    p.set_defaults(func=cmd_train_refiner)

    p = sub.add_parser("attach-refiner", help="measure a trained refiner on the validation split (Dice, HD95, ASSD with "
                                             "vs without; damaged references) and store it in the model file with the figures")
    p.add_argument("model", help="the model's .safetensors file")
    p.add_argument("refiner", help="a train-refiner run folder or its refiner.safetensors")
    p.add_argument("--dataset", help="the dataset folder (default: the card's provenance dataset_path)")
    p.add_argument("--cases", default="card", help="card (the model's validation cases), val, or comma-separated names")
    p.add_argument("--limit", type=int, help="measure on at most N cases (a quick look; the card should use them all)")
    p.add_argument("--out", help="write the model with its refiner here (default: in place)")
    p.add_argument("--report", help="folder for refiner.json / refiner.md")
    p.add_argument("--defaults", choices=["auto", "on", "off"], default="auto",
                   help="refinement on by default in the card: auto = only where every target holds")
    p.add_argument("--threads", type=int)
    p.add_argument("--record", action="store_true", help="refresh the file's sha256 in its folder's index.json")
    p.set_defaults(func=cmd_attach_refiner)

    p = sub.add_parser("compare", help="pair two `evaluate` results case by case: Dice difference, 95 %% CI, Wilcoxon p")
    p.add_argument("first", help="evaluate folder (or its per_case.csv) of model A")
    p.add_argument("second", help="evaluate folder (or its per_case.csv) of model B, on the same cases")
    p.add_argument("--out", help="folder for paired.json / paired.md")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples of the cases")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except E2MISegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
