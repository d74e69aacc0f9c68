"""e2miseg-train: plan, split, cache, sampler, a short real training run, resume, evaluate, export."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import ROOT, shared_file

sys.path.insert(0, str(ROOT / "training"))  # the training package, also when not pip-installed

from e2miseg_train.dataset import Case, split_cases  # noqa: E402

TINY_CONFIG = {"dims": [8, 8, 16, 16], "proj_sizes": [8, 8, 8, 4], "num_heads": 2, "feature_size": 8, "dropout": 0.0}
TINY_PATCH = [16, 32, 16]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hippocampus_mini() -> Path:
    return shared_file("fixtures/Hippocampus_mini")


@pytest.fixture(scope="module")
def tiny_plan(hippocampus_mini):
    from e2miseg_train.plan import make_plan

    plan = make_plan(hippocampus_mini, "e2miseg", name="tiny-hippocampus")
    plan["card"]["inference"]["patch_size_zyx"] = TINY_PATCH
    plan["card"]["architecture"]["config"].update(TINY_CONFIG, patch_size=TINY_PATCH)
    return plan


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_plan):
    """Four real iterations on the fixture, validated twice with the engine's predictor."""
    from e2miseg_train.trainer import FitOptions, fit

    out = tmp_path_factory.mktemp("run")
    options = FitOptions(out=str(out), epochs=2, iters_per_epoch=2, batch_size=2, val_every=1, device="cpu",
                         threads=1, warmup_iters=0, cache_dir=str(out / "cache"), save_every_minutes=100)
    summary = fit(tiny_plan, options)
    return out, summary


def test_split_rule_holds_out_every_fifth_patient():
    names = [f"hippocampus_{i:03d}" for i in (1, 3, 4, 6, 8, 11, 14, 15, 19, 20)]
    cases = [Case(n, (Path(n),), Path(n)) for n in reversed(names)]
    train, val = split_cases(cases)
    assert [c.name for c in val] == ["hippocampus_008", "hippocampus_020"]
    assert len(train) == 8
    # ACDC: both frames of a patient land on the same side
    acdc = [Case(f"patient{p:03d}_frame0{f}", (Path("x"),), Path("y")) for p in range(1, 11) for f in (1, 2)]
    train, val = split_cases(acdc)
    assert sorted({c.patient for c in val}) == ["patient005", "patient010"]
    assert len(val) == 4 and not {c.patient for c in train} & {c.patient for c in val}


def test_plan_fingerprints_the_fixture(hippocampus_mini, tmp_path):
    from e2miseg_train.cli import main

    out = tmp_path / "plan.json"
    assert main(["plan", str(hippocampus_mini), "--arch", "e2miseg", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    fp = plan["fingerprint"]
    assert fp["num_cases"] == 3
    assert fp["median_spacing_xyz"] == [1.0, 1.0, 1.0]
    assert abs(sum(fp["class_frequencies"]) - 1) < 1e-6 and len(fp["class_frequencies"]) == 3
    assert fp["intensity_per_channel"][0]["std"] > 0
    card = plan["card"]
    patch = card["inference"]["patch_size_zyx"]
    assert all(p % 16 == 0 for p in patch)  # stem 2 x three 2x stages
    assert card["architecture"]["config"]["patch_size"] == patch
    # label-ordered axes (anterior before posterior) are never mirrored
    assert not set(card["inference"]["mirror_axes"]) & set(fp["label_ordered_axes"])
    codes = [label["terminology"]["type_modifier"]["code"] for label in card["labels"]]
    assert codes == ["255549009", "255551008"]
    assert "CC-BY-SA 4.0" in card["license"]
    assert plan["split"]["val"] and not set(plan["split"]["val"]) & set(plan["split"]["train"])


def test_cached_labels_follow_the_image_onto_the_network_grid(tmp_path):
    from e2miseg_train.cache import preprocess_case
    from helpers import make_card

    array = np.zeros((10, 24, 20), dtype=np.float32)
    array[3:7, 8:16, 5:15] = 100
    image = sitk.GetImageFromArray(array + np.random.default_rng(0).normal(0, 1, array.shape).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 2.5))
    label = sitk.GetImageFromArray((array > 0).astype(np.uint8))
    label.CopyInformation(image)
    sitk.WriteImage(image, str(tmp_path / "img.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "lab.nii.gz"))
    card = make_card(spacing=(1.25, 1.25, 1.25))
    network_image, network_labels = preprocess_case(Case("c", (tmp_path / "img.nii.gz",), tmp_path / "lab.nii.gz"), card)
    assert network_image.shape[1:] == network_labels.shape == (20, 19, 16)
    assert set(np.unique(network_labels)) == {0, 1}
    # the bright block and the label still coincide after resampling
    bright = network_image[0] > network_image[0].mean()
    overlap = np.logical_and(bright, network_labels == 1).sum() / max(1, (network_labels == 1).sum())
    assert overlap > 0.9


def test_sampler_oversamples_foreground_and_keeps_patch_shapes(tiny_plan, tmp_path):
    from e2miseg.card import validate_card
    from e2miseg_train.cache import load_cases
    from e2miseg_train.dataset import list_cases
    from e2miseg_train.sampling import PatchSampler

    card = validate_card(tiny_plan["card"])
    arrays = load_cases(list_cases(tiny_plan["dataset"]), card, tiny_plan["dataset"], tmp_path)
    sampler = PatchSampler(list(arrays.values()), card, seed=3, fg_fraction=1.0)
    for _ in range(4):
        image, labels = sampler.sample()
        assert image.shape == (1, *TINY_PATCH) and labels.shape == tuple(TINY_PATCH)
        assert (labels > 0).any() and set(np.unique(labels)) <= {0, 1, 2}
    images, targets = sampler.batch(3)
    assert images.shape == (3, 1, *TINY_PATCH) and targets.dtype == torch.int64


def test_short_training_run_produces_a_loadable_checkpoint(trained_run, hippocampus_mini):
    import e2miseg

    out, summary = trained_run
    assert summary["iteration"] == 4 and summary["epoch"] == 2
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history if "val_dice" in h] == [1, 2]
    assert all(0 <= d <= 1 for h in history if "val_dice" in h for d in h["val_dice"].values())
    assert (out / "curves.png").stat().st_size > 1000 and "validation Dice" in (out / "train.log").read_text()
    model, card = e2miseg.load_model(out / "best.safetensors", device="cpu")
    assert card["provenance"]["split"]["val_cases"] == ["hippocampus_004"]
    image = hippocampus_mini / "imagesTr" / "hippocampus_004.nii.gz"
    labels = e2miseg.predict(str(image), model)
    reference = sitk.ReadImage(str(image))
    assert labels.GetSize() == reference.GetSize() and labels.GetSpacing() == reference.GetSpacing()
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1, 2}


def test_resume_continues_from_the_saved_iteration(trained_run, tiny_plan):
    from e2miseg_train.trainer import FitOptions, fit

    out, _ = trained_run
    before = torch.load(out / "state.pt", weights_only=True)
    assert before["iteration"] == 4
    options = FitOptions(out=str(out), epochs=3, iters_per_epoch=2, batch_size=2, val_every=1, device="cpu",
                         threads=1, warmup_iters=0, cache_dir=str(out / "cache"), save_every_minutes=100)
    summary = fit(tiny_plan, options)
    assert summary["iteration"] == 6 and summary["epoch"] == 3
    assert "resumed from" in (out / "train.log").read_text()
    after = torch.load(out / "state.pt", weights_only=True)
    assert after["iteration"] == 6
    assert len([h for h in after["history"] if "loss" in h]) == 3  # history kept across the resume
    changed = [k for k in before["model"] if not torch.equal(before["model"][k], after["model"][k])]
    assert changed  # the resumed run trained further


def test_time_budget_stops_a_run(tmp_path, tiny_plan):
    from e2miseg_train.trainer import FitOptions, fit

    now = [0.0]  # an injected clock: every iteration "takes" one second, however fast this machine is
    options = FitOptions(out=str(tmp_path), epochs=5, iters_per_epoch=2, batch_size=2, val_every=1000, device="cpu",
                         threads=1, max_minutes=2.5 / 60, cache_dir=str(tmp_path / "cache"), save_every_minutes=100)
    summary = fit(tiny_plan, options, clock=lambda: now[0], after_iteration=lambda step: now.__setitem__(0, now[0] + 1.0))
    assert summary["iteration"] == 3  # 0, 1 and 2 s are inside the 2.5 s budget; at 3 s it stops
    assert "time budget of" in (tmp_path / "train.log").read_text()
    assert (tmp_path / "last.safetensors").exists() and (tmp_path / "state.pt").exists()


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_plan):
    """Stopped mid-epoch by SIGTERM and resumed, a run takes the same steps as one that never stopped:
    same batches (so the same losses), lr schedule, weights, optimiser moments and EMA, bit for bit."""
    import signal

    from e2miseg_train.trainer import FitOptions, fit

    def options(out):
        return FitOptions(out=str(out), epochs=3, iters_per_epoch=2, batch_size=2, val_every=1000, device="cpu", threads=1,
                          warmup_iters=2, ema_decay=0.9, seed=5, cache_dir=str(tmp_path / "cache"), save_every_minutes=100)

    straight: list[dict] = []
    fit(tiny_plan, options(tmp_path / "straight"), after_iteration=straight.append)
    resumed: list[dict] = []

    def stop_after_three(step):
        resumed.append(step)
        if step["iteration"] == 3:  # inside epoch 2: the part-done epoch must carry over too
            signal.raise_signal(signal.SIGTERM)

    assert fit(tiny_plan, options(tmp_path / "resumed"), after_iteration=stop_after_three)["iteration"] == 3
    fit(tiny_plan, options(tmp_path / "resumed"), after_iteration=resumed.append)
    assert "resumed from" in (tmp_path / "resumed" / "train.log").read_text()

    assert [s["iteration"] for s in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed == straight  # loss (so the batch) and lr of every step
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for index, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    epochs = lambda state: [(h["epoch"], h["loss"], h["lr"]) for h in state["history"] if "loss" in h]
    assert epochs(a) == epochs(b) and len(epochs(a)) == 3


def test_augmentation_moves_image_and_labels_together(tiny_plan):
    """Rotation, scaling and mirroring applied to a pair where label == (image is bright): after
    augmentation the label still marks exactly the bright voxels (up to interpolation at the edge)."""
    from e2miseg.card import validate_card
    from e2miseg_train.sampling import PatchSampler, build_augmentation

    card = validate_card(json.loads(json.dumps(tiny_plan["card"])))
    card["inference"]["mirror_axes"] = ["x", "y", "z"]
    shape = (24, 40, 24)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    # an off-centre, asymmetric object: a mirror or rotation of one without the other shows
    labels = (((zz - 10) / 7) ** 2 + ((yy - 16) / 12) ** 2 + ((xx - 13) / 5) ** 2 <= 1).astype(np.uint8)
    labels[8:12, 16:30, 11:15] = 1
    image = np.where(labels == 1, 1.0, -1.0).astype(np.float32)[None]
    sampler = PatchSampler([(image, labels.astype(np.int16))], card, seed=11, fg_fraction=1.0, spatial_prob=1.0)
    # geometry only (mirroring on every axis, after the sampler's rotation/scaling): intensity noise would blur the check
    sampler.augment = build_augmentation(3, [0, 1, 2], seed=11, intensity=False)
    for _ in range(12):
        patch, patch_labels = sampler.sample()
        inside = patch_labels == 1
        assert inside.any()
        bright = patch[0] > 0
        agreement = (bright == inside).mean()
        assert agreement > 0.97, agreement
        edge_free = np.abs(patch[0]) > 0.9  # away from interpolated edges the two agree exactly
        assert np.array_equal(bright[edge_free], inside[edge_free])


def test_label_scores_perfect_and_empty_predictions():
    from e2miseg_train.evaluate import label_scores

    reference = np.zeros((12, 12, 12), dtype=np.uint8)
    reference[3:8, 4:9, 2:10] = 1
    perfect = label_scores(reference, reference, 1, (1.0, 1.0, 1.0))
    assert perfect["dice"] == pytest.approx(1.0) and perfect["hd95_mm"] == pytest.approx(0.0)
    shifted = np.roll(reference, 2, axis=0)
    scores = label_scores(shifted, reference, 1, (2.0, 1.0, 1.0))  # 2 voxels along z at 2 mm
    assert 0 < scores["dice"] < 1 and scores["hd95_mm"] == pytest.approx(4.0)
    missing = label_scores(np.zeros_like(reference), reference, 1, (1.0, 1.0, 1.0))
    assert missing["dice"] == 0.0 and math.isinf(missing["hd95_mm"])
    assert label_scores(reference, reference, 2, (1.0, 1.0, 1.0))["dice"] == 1.0  # absent in both


def test_comparison_rows_name_the_version_so_a_model_can_sit_beside_its_earlier_self():
    from e2miseg_train.evaluate import comparison_table

    def summary(version, dice):
        return {"model": "ehanet-acdc", "version": version, "architecture": "ehanet", "num_cases": 32,
                "labels": {"LV": {"dice_mean": dice, "dice_std": 0.01, "hd95_mm_mean": 2.0}}}

    rows = comparison_table([summary("0.2.0", 0.92), summary("1.0.0", 0.935)]).splitlines()[2:]
    assert rows == ["| ehanet-acdc 0.2.0 | ehanet | 32 | 0.9200 ± 0.0100 | 2.00 |",
                    "| ehanet-acdc 1.0.0 | ehanet | 32 | 0.9350 ± 0.0100 | 2.00 |"]


def test_evaluate_and_export_a_trained_run(trained_run, hippocampus_mini, tmp_path):
    import e2miseg
    from e2miseg.checkpoint import sha256_of
    from e2miseg_train.cli import main

    out, _ = trained_run
    eval_dir = tmp_path / "eval"
    assert main(["evaluate", str(out / "best.safetensors"), str(hippocampus_mini), "--out", str(eval_dir),
                 "--cases", "val", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(eval_dir / "per_case.csv")))
    assert [(r["case"], r["label"]) for r in rows] == [("hippocampus_004", "1"), ("hippocampus_004", "2")]
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    summary_md = (eval_dir / "summary.md").read_text()
    assert (eval_dir / "boxplot.png").exists() and "| Anterior hippocampus | 1 |" in summary_md
    # a run's checkpoint has no release version yet: the summary names the file, not the plan's "1.0.0"
    assert "training checkpoint best.safetensors, iteration" in summary_md and "1.0.0" not in summary_md

    target = tmp_path / "models" / "tiny-hippocampus.safetensors"
    table = tmp_path / "regression.json"
    assert main(["export", str(out), "--out", str(target), "--metrics", str(eval_dir / "summary.json"), "--record",
                 "--regression-table", str(table), "--regression-cases", "1"]) == 0
    # export measured the file it wrote on the card's validation case, as the shipped-model tests re-check it
    entry = json.loads(table.read_text())["models"]["tiny-hippocampus.safetensors"]
    assert entry["dataset"] == "Hippocampus_mini" and list(entry["cases"]) == ["hippocampus_004"]
    assert set(entry["cases"]["hippocampus_004"]) == {"1", "2"} and entry["sha256"] == sha256_of(target)
    from e2miseg_train.regression import case_dice

    case = hippocampus_mini / "imagesTr" / "hippocampus_004.nii.gz"
    recorded = case_dice(*e2miseg.load_model(target, device="cpu"), [case], hippocampus_mini / "labelsTr" / case.name)
    assert recorded == entry["cases"]["hippocampus_004"]
    index = json.loads((target.parent / "index.json").read_text())
    assert target.name in index and len(index[target.name]["sha256"]) == 64
    model, card = e2miseg.load_model(target, device="cpu")
    provenance = card["provenance"]
    assert provenance["split"]["val_cases"] == ["hippocampus_004"] and provenance["split"]["train_count"] == 2
    assert provenance["training"]["total_iterations"] >= 4
    assert set(provenance["validation"]["per_label"]) == {"Anterior hippocampus", "Posterior hippocampus"}
    assert card["labels"][0]["terminology"]["type"]["code"] == "5366008"
    # the reference volume of the one validation case is the card's plausibility range (issue 21)
    recorded = json.loads((eval_dir / "summary.json").read_text())["volumes_mm3"]["hippocampus_004"]
    reference = sitk.ReadImage(str(hippocampus_mini / "labelsTr" / "hippocampus_004.nii.gz"))
    for label in card["labels"]:
        volume = float((sitk.GetArrayFromImage(reference) == label["value"]).sum() * np.prod(reference.GetSpacing()))
        assert recorded[label["name"]]["reference"] == pytest.approx(volume, abs=0.05)
        assert label["validation_volume_mm3"] == {"min": pytest.approx(volume, abs=0.05),
                                                  "max": pytest.approx(volume, abs=0.05), "cases": 1}
    assert "## Validation volumes" in target.with_suffix(".md").read_text()
    assert "CC-BY-SA 4.0" in card["license"]
    markdown = target.with_suffix(".md").read_text()
    assert "Validation" in markdown and (target.parent / "tiny-hippocampus-curves.png").exists()
    # the box plot is the one of the evaluation the card's table reports, not a leftover of an older version
    boxplot = target.parent / "tiny-hippocampus-boxplot.png"
    assert boxplot.read_bytes() == (eval_dir / "boxplot.png").read_bytes() and "(tiny-hippocampus-boxplot.png)" in markdown
    exported_eval = tmp_path / "eval-exported"
    assert main(["evaluate", str(target), str(hippocampus_mini), "--out", str(exported_eval), "--device", "cpu"]) == 0
    assert f"tiny-hippocampus {card['version']} on" in (exported_eval / "summary.md").read_text()


def test_sigterm_ends_a_run_cleanly(tmp_path, tiny_plan):
    import signal

    from e2miseg_train.trainer import FitOptions, fit

    options = FitOptions(out=str(tmp_path), epochs=1000, iters_per_epoch=2, batch_size=2, val_every=1000, device="cpu",
                         threads=1, warmup_iters=0, cache_dir=str(tmp_path / "cache"), save_every_minutes=100)
    before = signal.getsignal(signal.SIGTERM)

    def terminate_after_three(step):  # SIGTERM delivered to this process at a known iteration, not after a delay
        if step["iteration"] == 3:
            signal.raise_signal(signal.SIGTERM)

    summary = fit(tiny_plan, options, after_iteration=terminate_after_three)
    assert summary["iteration"] == 3  # stopped at the next iteration, not after its 2000
    assert "stop requested" in (tmp_path / "train.log").read_text()
    assert torch.load(tmp_path / "state.pt", weights_only=True)["iteration"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_evaluate_uses_and_records_the_cards_defaults_unless_told_network_only(trained_run, hippocampus_mini,
                                                                                tmp_path):
    """A card whose defaults say largest component + TTA is scored that way (as the module runs it) and
    says so; ``--network-only`` scores the bare network, and an explicit flag still wins over it."""
    import shutil

    from e2miseg_train.amend import amend_card
    from e2miseg_train.cli import main

    out, _ = trained_run
    model = tmp_path / "with-defaults.safetensors"
    shutil.copy(out / "best.safetensors", model)
    amend_card(str(model), lambda card: card.__setitem__("defaults", {"keep_largest": True, "quality": "normal+tta"}))

    def settings_of(*flags: str) -> dict:
        folder = tmp_path / ("eval" + "".join(flags))
        assert main(["evaluate", str(model), str(hippocampus_mini), "--out", str(folder), "--device", "cpu", *flags]) == 0
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["tta"] == (summary["settings"]["quality"] == "normal+tta")
        return summary["settings"]

    card_defaults = settings_of()
    assert card_defaults["keep_largest"] is True and card_defaults["quality"] == "normal+tta"
    bare = settings_of("--network-only")
    assert bare["keep_largest"] is False and bare["quality"] == "normal" and bare["refine_edges"] is False
    assert bare["min_island_mm3"] == 0.0
    bare_with_tta = settings_of("--network-only", "--tta")
    assert bare_with_tta["keep_largest"] is False and bare_with_tta["quality"] == "normal+tta"


def test_dynunet_baseline_trains_on_the_same_plan_and_evaluates(tmp_path, tiny_plan, hippocampus_mini):
    from e2miseg_train.baselines import baseline_plan
    from e2miseg_train.evaluate import evaluate, load_any
    from e2miseg_train.trainer import FitOptions, fit

    plan = baseline_plan(tiny_plan, filters=[8, 8, 16, 16])
    assert plan["card"]["inference"] == tiny_plan["card"]["inference"] and plan["split"] == tiny_plan["split"]
    options = FitOptions(out=str(tmp_path), epochs=1, iters_per_epoch=2, batch_size=2, val_every=1, device="cpu",
                         threads=1, warmup_iters=0, cache_dir=str(tmp_path / "cache"), save_every_minutes=100)
    assert fit(plan, options)["iteration"] == 2
    model, card = load_any(str(tmp_path / "best.safetensors"), device="cpu")
    assert card["architecture"]["name"] == "monai-dynunet" and not model.training
    summary = evaluate(str(tmp_path / "best.safetensors"), hippocampus_mini, tmp_path / "eval", device="cpu")
    assert summary["num_cases"] == 1 and set(summary["labels"]) == {"Anterior hippocampus", "Posterior hippocampus"}


def test_dice_ce_loss_switch_keeps_the_networks_deep_supervision():
    """``--loss dice-ce``: MONAI DiceCE on every output, weighted 4:2:1 as the network's own loss is."""
    from e2miseg.losses import DeepSupervisionLoss, ScaleSensitiveLoss, resize_labels
    from e2miseg.models import build_model
    from e2miseg_train.baselines import DiceCELabels
    from e2miseg_train.trainer import make_loss
    from helpers import small_e2miseg_config

    model = build_model("e2miseg", **small_e2miseg_config()).train()
    torch.manual_seed(0)
    outputs = model(torch.randn(2, 1, 16, 16, 16))
    target = torch.randint(0, 3, (2, 1, 16, 16, 16)).float()
    own, dice_ce = make_loss(model, "architecture"), make_loss(model, "dice-ce")
    assert isinstance(own.loss, ScaleSensitiveLoss) and isinstance(dice_ce, DeepSupervisionLoss)
    labels = target[:, 0].long()
    weights = [4 / 7, 2 / 7, 1 / 7]
    expected = sum(w * DiceCELabels()(out, resize_labels(labels, out.shape[2:])) for w, out in zip(weights, outputs))
    torch.testing.assert_close(dice_ce(outputs, target), expected)
    assert not torch.allclose(dice_ce(outputs, target), own(outputs, target))
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        make_loss(model, "focal")
    # a network whose own loss is not deep-supervised region loss (EHANet: edge head) is refused, not
    # silently given DiceCE on its edge output
    from e2miseg.errors import E2MISegError

    with pytest.raises(E2MISegError, match="EHANet has its own loss structure"):
        make_loss(build_model("ehanet"), "dice-ce")


def test_ema_update_warms_up_then_holds_its_decay():
    from e2miseg_train.trainer import ema_update

    update = ema_update(0.995)
    averaged, current = [torch.zeros(3), torch.tensor(0)], [torch.ones(3), torch.tensor(7)]
    update(averaged, current, torch.tensor(0))  # first update: decay 1/10, weight 0.9 on the new value
    assert torch.allclose(averaged[0], torch.full((3,), 0.9))
    assert int(averaged[1]) == 7  # an integer buffer (a counter) is copied, not averaged
    averaged = [torch.zeros(3)]
    update(averaged, current[:1], torch.tensor(100000))  # late: the stated decay
    assert torch.allclose(averaged[0], torch.full((3,), 0.005))


def test_ema_run_saves_the_averaged_weights_and_resumes_them(tmp_path, tiny_plan):
    from e2miseg.checkpoint import read_checkpoint
    from e2miseg_train.trainer import FitOptions, fit

    def options(epochs):
        return FitOptions(out=str(tmp_path), epochs=epochs, iters_per_epoch=2, batch_size=2, val_every=1, device="cpu",
                          threads=1, warmup_iters=0, ema_decay=0.9, cache_dir=str(tmp_path / "cache"), save_every_minutes=100)

    fit(tiny_plan, options(2))
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert int(state["ema"]["n_averaged"]) == 4
    saved, card = read_checkpoint(tmp_path / "last.safetensors")
    assert card["provenance"]["training"]["ema_decay"] == 0.9
    weights = [k for k in state["model"] if state["model"][k].is_floating_point() and state["model"][k].dim() > 1]
    for name in weights:  # the checkpoint is the average, not the raw weights
        assert torch.allclose(saved[name].float(), state["ema"][f"module.{name}"].float(), atol=1e-3)
    assert any(not torch.allclose(state["ema"][f"module.{k}"], state["model"][k], atol=1e-4) for k in weights)
    fit(tiny_plan, options(3))
    resumed = torch.load(tmp_path / "state.pt", weights_only=True)
    assert int(resumed["ema"]["n_averaged"]) == 6  # continued, not restarted from the raw weights


def test_ema_decay_outside_zero_to_one_is_refused(tmp_path, tiny_plan):
    from e2miseg.errors import E2MISegError
    from e2miseg_train.trainer import FitOptions, fit

    for decay in (1.0, -0.5):
        options = FitOptions(out=str(tmp_path / str(decay)), epochs=1, iters_per_epoch=1, device="cpu", threads=1,
                             ema_decay=decay, cache_dir=str(tmp_path / "cache"))
        with pytest.raises(E2MISegError, match="--ema must lie between 0 and 1"):
            fit(tiny_plan, options)


def test_init_starts_a_run_from_a_checkpoint_of_the_same_network_only(trained_run, tiny_plan):
    """``fit --init``: continue a shipped model when its run folder is gone; another network is refused."""
    import copy

    from e2miseg.card import validate_card
    from e2miseg.checkpoint import read_checkpoint
    from e2miseg.errors import E2MISegError
    from e2miseg_train.baselines import build_network
    from e2miseg_train.trainer import start_from_checkpoint

    out, _ = trained_run
    card = validate_card(tiny_plan["card"])
    model = build_network(card["architecture"]["name"], card["architecture"]["config"])
    tensors, _ = read_checkpoint(out / "best.safetensors")
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in tensors.items())  # a fresh start differs
    start_from_checkpoint(model, card, str(out / "best.safetensors"))
    for key, value in tensors.items():
        assert torch.equal(model.state_dict()[key], value.to(model.state_dict()[key].dtype)), key

    wider = copy.deepcopy(card)
    wider["architecture"]["config"]["feature_size"] = 2 * int(card["architecture"]["config"].get("feature_size", 8))
    other = build_network(wider["architecture"]["name"], wider["architecture"]["config"])
    with pytest.raises(E2MISegError, match="same network"):
        start_from_checkpoint(other, wider, str(out / "best.safetensors"))
