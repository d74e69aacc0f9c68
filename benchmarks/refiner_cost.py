"""What the learned boundary refiner costs on the CPU: one inference against the network's, one training step.

On one hippocampus case (the first validation case of the model's card, or ``--case``):
- the network's seconds of ``e2miseg.predict`` (its ``timings["network"]``, the default runtime);
- the refiner's seconds on that prediction (``refine_with_uncertainty`` with the learned method: the
  band, features, tiles and network; the model's own refiner when it has one, else an untrained one
  of the default config: the cost does not depend on the weights);
- one training step of ``train-refiner`` (default options): sampling a batch, forward + backward.

    .venv/bin/python benchmarks/refiner_cost.py --threads 1 [--model e2miseg-hippocampus] [--repeats 3]

Writes benchmarks/results/refiner_cost.{json,md}. Run by hand, never from the tests.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))
import bench_common  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "E2MISegModule/Resources/Models/e2miseg-hippocampus.safetensors"))
    parser.add_argument("--dataset", default=str(bench_common.SHARED / "Task04_Hippocampus"))
    parser.add_argument("--case", help="case name (default: the card's first validation case)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="refiner_cost")
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from e2miseg.api import load_model, predict
    from e2miseg.card import num_classes
    from e2miseg.edges.learned import LearnedRefiner
    from e2miseg.edges.learned_net import DEFAULT_CONFIG, build_refiner
    from e2miseg.edges.refine import EdgeOptions, refine_with_uncertainty
    from e2miseg.settings import Settings
    from e2miseg_train.dataset import list_cases
    from e2miseg_train.refiner_cases import read_case
    from e2miseg_train.refiner_data import case_margin, crop_case
    from e2miseg_train.refiner_train import RefinerOptions, band_loss, batch, patch_shape
    import SimpleITK as sitk

    info = bench_common.machine(args.threads)
    model, card = load_model(args.model, "cpu")
    names = (card.get("provenance") or {}).get("split", {}).get("val_cases") or []
    case = next(c for c in list_cases(args.dataset) if c.name == (args.case or names[0]))
    refiner = model.refiner
    if refiner is None:
        network = build_refiner({**DEFAULT_CONFIG, "num_classes": num_classes(card)})
        with torch.no_grad():
            network.head.weight.normal_(0.0, 0.1)
        refiner = LearnedRefiner(network, card["channels"][0].get("normalization") or card["preprocessing"]["normalization"])
    # wall seconds, and CPU seconds of the whole process (all threads, OpenVINO's included): on a machine
    # shared with other jobs only the CPU seconds compare the two fairly
    network_s, refine_s, predict_cpu_s, refine_cpu_s = [], [], [], []
    for _ in range(args.repeats):
        timings: dict[str, float] = {}
        cpu = time.process_time()
        labels = predict([str(p) for p in case.images], model, card, Settings(refine_edges=False), timings=timings)
        predict_cpu_s.append(time.process_time() - cpu)
        network_s.append(timings["network"])
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(case.images[0]))).astype(np.float32)
        array = sitk.GetArrayFromImage(labels)
        spacing = tuple(labels.GetSpacing())[::-1]
        started, cpu = time.perf_counter(), time.process_time()
        refine_with_uncertainty(image, array, spacing, options=EdgeOptions(method="learned", refiner=refiner))
        refine_s.append(time.perf_counter() - started)
        refine_cpu_s.append(time.process_time() - cpu)
    options = RefinerOptions(out="unused")
    trainee = build_refiner({**DEFAULT_CONFIG, "num_classes": num_classes(card)})
    shape = patch_shape(trainee, options)
    image, reference, spacing = read_case(case, card)
    prepared = [crop_case(case.name, image, reference, array, spacing,
                          case_margin(shape, spacing, DEFAULT_CONFIG["distance_clip_mm"], False))]
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=options.lr)
    sample_s, step_s = [], []
    rng = np.random.default_rng(0)
    for _ in range(args.repeats):
        cpu = time.process_time()
        features, targets, masks = batch(prepared, rng, shape, trainee, options)
        sample_s.append(time.process_time() - cpu)
        cpu = time.process_time()
        optimizer.zero_grad()
        loss, _, _ = band_loss(trainee(features), targets, masks, shape.halo_zyx)
        loss.backward()
        optimizer.step()
        step_s.append(time.process_time() - cpu)
    info = bench_common.finish_machine(info)
    median = statistics.median
    figures = {"case": case.name, "shape_zyx": list(array.shape), "network_s": median(network_s), "refine_s": median(refine_s),
               "cost_fraction": median(refine_s) / median(network_s), "predict_cpu_s": median(predict_cpu_s),
               "refine_cpu_s": median(refine_cpu_s), "cpu_cost_fraction": median(refine_cpu_s) / median(predict_cpu_s),
               "train_sample_s": median(sample_s),
               "train_step_s": median(step_s), "batch_size": options.batch_size, "patch_zyx": list(shape.input_zyx),
               "refiner_parameters": sum(p.numel() for p in trainee.parameters()), "repeats": args.repeats,
               "trained_refiner": model.refiner is not None}
    table = ["| case | network wall (s) | refiner wall (s) | share | predict CPU (s) | refiner CPU (s) | share of CPU | "
             "training batch sampling CPU (s) | training step fwd+bwd CPU (s) |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {case.name} {tuple(array.shape)} | {figures['network_s']:.3f} | {figures['refine_s']:.3f} | "
             f"{100 * figures['cost_fraction']:.1f} % | {figures['predict_cpu_s']:.3f} | {figures['refine_cpu_s']:.3f} | "
             f"{100 * figures['cpu_cost_fraction']:.1f} % | {figures['train_sample_s']:.3f} | {figures['train_step_s']:.3f} |"]
    notes = [f"Medians of {args.repeats} runs. CPU = process CPU seconds, all threads (the whole predict call: read, "
             f"preprocess, network, stitching); wall = the engine's network timing and the refinement's wall time. "
             f"Training step: batch {options.batch_size} of {tuple(shape.input_zyx)} patches, "
             f"{figures['refiner_parameters']} parameters; model {card['name']} {card['version']}."]
    json_path, md_path = bench_common.write_results(args.name, {"machine": info, "figures": figures}, table, notes)
    print("\n".join(table + notes))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
