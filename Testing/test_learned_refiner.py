"""The learned boundary refiner: stored in the model file, refused when tampered with, confined to the band,
ROI and chosen segments, and able to learn (a short real training on a synthetic case)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from e2miseg.checkpoint import REFINER_PREFIX, read_checkpoint, save_checkpoint
from e2miseg.edges.band import band_mask
from e2miseg.edges.learned import LearnedRefiner
from e2miseg.edges.learned_net import DEFAULT_CONFIG, build_refiner
from e2miseg.edges.metrics import binary_metrics
from e2miseg.edges.refine import EdgeOptions, refine_with_uncertainty
from e2miseg.errors import CheckpointError, E2MISegError
from e2miseg.refiner_part import load_refiner, refiner_digest, with_refiner
from helpers import make_e2miseg_checkpoint


def random_refiner(num_classes: int = 3, seed: int = 0, **config) -> torch.nn.Module:
    """A refiner whose output layer is not zero, so it changes labels (an untrained one changes nothing)."""
    torch.manual_seed(seed)
    network = build_refiner({**DEFAULT_CONFIG, "num_classes": num_classes, "width": 4, **config})
    with torch.no_grad():
        network.head.weight.normal_(0.0, 2.0)
        network.head.bias.zero_()
        network.head.bias[1] = 3.0  # grows label 1 wherever it may: the test sees every voxel it could touch
    return network


def attach_random(source: Path, target: Path) -> dict:
    tensors, card = read_checkpoint(source)
    network = random_refiner()
    joined, joined_card = with_refiner(tensors, card, network.state_dict(), {"config": network.config, "training": {"test": 1}})
    save_checkpoint(target, joined, joined_card)
    return network.state_dict()


@pytest.fixture
def model_files(tmp_path):
    plain = make_e2miseg_checkpoint(tmp_path / "plain.safetensors")
    refined = tmp_path / "refined.safetensors"
    state = attach_random(plain, refined)
    return plain, refined, state


def test_checkpoint_with_and_without_refiner(model_files):
    from e2miseg.api import load_model
    from e2miseg.settings import resolve

    plain, refined, state = model_files
    model_a, card_a = load_model(plain, "cpu")
    model_b, card_b = load_model(refined, "cpu")
    assert model_a.refiner is None and "refiner" not in card_a
    assert isinstance(model_b.refiner, LearnedRefiner)
    for key, value in state.items():  # the refiner's weights come back exactly
        assert torch.equal(model_b.refiner.network.state_dict()[key], value)
    for key, value in model_a.state_dict().items():  # and the network's are untouched by the attachment
        assert torch.equal(model_b.state_dict()[key], value)
    assert card_b["refiner"]["weights_sha256"] == refiner_digest({k: v.float() for k, v in state.items()})
    # a model with a refiner refines with it unless told otherwise; one without keeps the classical default
    assert resolve(None, card_b).edge_method == "learned"
    assert resolve(None, card_a).edge_method == "meanfield"


def _flip_refiner_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    start, _ = header[REFINER_PREFIX + "head.bias"]["data_offsets"]
    data[8 + header_len + start] ^= 0x55
    path.write_bytes(bytes(data))


def test_tampered_refiner_is_refused_in_one_line(model_files):
    from e2miseg.api import load_model

    _, refined, _ = model_files
    _flip_refiner_byte(refined)
    with pytest.raises(CheckpointError) as info:
        load_model(refined, "cpu")
    message = str(info.value)
    assert "sha256" in message and "attach-refiner" in message and "\n" not in message


def test_tampered_refiner_fails_the_cli_cleanly(model_files, tmp_path, capsys):
    import SimpleITK as sitk

    from e2miseg.cli import main

    _, refined, _ = model_files
    _flip_refiner_byte(refined)
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((12, 14, 16)).astype(np.float32))
    labels = np.zeros((12, 14, 16), np.uint8)
    labels[3:9, 4:10, 4:12] = 1
    label_image = sitk.GetImageFromArray(labels)
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    sitk.WriteImage(label_image, str(tmp_path / "labels.nii.gz"))
    output = tmp_path / "out.nii.gz"
    code = main(["refine", str(tmp_path / "image.nii.gz"), str(tmp_path / "labels.nii.gz"), "-o", str(output),
                 "--model", str(refined)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and not output.exists()
    assert len(error) == 1 and "attach-refiner" in error[0]


def test_refiner_weights_without_a_card_section_are_refused(model_files):
    _, refined, _ = model_files
    tensors, card = read_checkpoint(refined)
    card.pop("refiner")
    card.get("defaults", {}).pop("edge_method", None)
    with pytest.raises(CheckpointError, match="does not describe"):
        load_refiner(tensors, card, "x.safetensors")


def test_learned_refinement_stays_in_band_roi_and_segments():
    rng = np.random.default_rng(1)
    shape = (24, 30, 28)
    labels = np.zeros(shape, np.uint8)
    labels[4:20, 6:24, 5:16] = 1
    labels[4:20, 6:24, 16:24] = 2
    labels[10:14, 2:8, 10:20] = 3  # a label the refiner does not know: locked, and no class of its own
    image = rng.normal(size=shape).astype(np.float32)
    refiner = LearnedRefiner(random_refiner(num_classes=3, band_mm=2.0), {"scheme": "zscore"}, "test")
    editable = np.zeros(shape, bool)
    editable[:, :, 8:] = True
    spacing = (1.0, 0.8, 0.8)
    options = EdgeOptions(method="learned", refiner=refiner)
    result, uncertainty = refine_with_uncertainty(image, labels, spacing, values=[1], editable=editable, options=options)
    changed = result != labels
    assert changed.sum() > 20  # the refiner does act, so the confinement below is tested
    allowed = band_mask(labels, spacing, 2.0, [1]) & editable & np.isin(labels, [0, 1])
    assert not (changed & ~allowed).any()
    assert set(np.unique(result[changed])) <= {0, 1}  # only the chosen segment and background are placed
    assert np.array_equal(result[labels == 2], labels[labels == 2]) and np.array_equal(result[labels == 3], labels[labels == 3])
    assert (uncertainty[~editable] == 0).all()
    # strength 0 is off, and a label the refiner does not know cannot be refined by it
    assert np.array_equal(refine_with_uncertainty(image, labels, spacing, options=EdgeOptions(
        method="learned", refiner=refiner, strength=0.0))[0], labels)
    with pytest.raises(E2MISegError, match="classical method"):
        refine_with_uncertainty(image, labels, spacing, values=[3], options=options)


def test_learned_method_needs_a_refiner():
    with pytest.raises(E2MISegError, match="learned refiner"):
        EdgeOptions(method="learned")


def _blob(seed: int, shape=(28, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid with a soft edge in noise, and its mask."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    radii = rng.uniform(6, 10, 3)
    mask = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    image = ndimage.gaussian_filter(2.0 * mask.astype(np.float32), 0.7) + rng.normal(0, 0.15, shape).astype(np.float32)
    return image.astype(np.float32), mask.astype(np.uint8)


def test_short_training_reduces_boundary_error(tmp_path):
    """A few dozen iterations on synthetic cases: a 2-voxel dilated mask comes measurably closer to the truth."""
    from e2miseg.preprocess import normalize
    from e2miseg_train.refiner_data import case_margin, crop_case
    from e2miseg_train.refiner_train import RefinerOptions, patch_shape, read_refiner_file, train_refiner

    torch.set_num_threads(1)
    config = {**DEFAULT_CONFIG, "width": 8, "dilations": [1, 2], "band_mm": 3.5, "distance_clip_mm": 4.0}
    options = RefinerOptions(out=str(tmp_path / "run"), iterations=40, batch_size=2, core_voxels=12, lr=1e-2,
                             warmup_iters=4, prediction_fraction=0.0, log_every=10, config=config)
    shape = patch_shape(build_refiner({**config, "num_classes": 2}), options)
    scheme = {"scheme": "zscore"}
    cases = []
    for seed in range(3):
        image, mask = _blob(seed)
        cases.append(crop_case(f"c{seed}", normalize(image, scheme), mask, None, (1.0, 1.0, 1.0),
                               case_margin(shape, (1.0, 1.0, 1.0), config["distance_clip_mm"], False)))
    train_refiner(cases, 2, options, log=lambda line: None)
    weights, meta = read_refiner_file(tmp_path / "run")
    network = build_refiner(meta["config"])
    network.load_state_dict(weights)
    refiner = LearnedRefiner(network, scheme, "test")
    image, truth = _blob(11)
    damaged = (ndimage.distance_transform_edt(truth == 0) <= 2).astype(np.uint8)
    fixed, _ = refine_with_uncertainty(image, damaged, (1.0, 1.0, 1.0), options=EdgeOptions(method="learned", refiner=refiner))
    before = binary_metrics(damaged, truth, (1.0, 1.0, 1.0))["assd_mm"]
    after = binary_metrics(fixed, truth, (1.0, 1.0, 1.0))["assd_mm"]
    assert after < 0.7 * before, (before, after)


def test_pipeline_refines_with_the_models_refiner(model_files):
    """``predict(refine_edges=True)`` on a model with a refiner: the learned method by default, on the labels alone."""
    import SimpleITK as sitk

    from e2miseg.api import load_model, predict

    _, refined, _ = model_files
    model, card = load_model(refined, "cpu")
    image = sitk.GetImageFromArray(np.random.default_rng(3).normal(size=(20, 22, 18)).astype(np.float32))
    plain = sitk.GetArrayFromImage(predict(image, model, refine_edges=False))
    result = sitk.GetArrayFromImage(predict(image, model, refine_edges=True))
    expected, _ = refine_with_uncertainty(sitk.GetArrayFromImage(image), plain, (1.0, 1.0, 1.0),
                                          options=EdgeOptions(method="learned", refiner=model.refiner))
    assert np.array_equal(result, expected)
    changed = result != plain
    assert not (changed & ~band_mask(plain, (1.0, 1.0, 1.0), model.refiner.band_mm)).any()


def test_train_resume_and_attach_commands(tmp_path, capsys):
    """train-refiner on the model's predictions + perturbed references, resumed; attach-refiner measures and stores it."""
    from conftest import shared_file
    from e2miseg.api import load_model
    from e2miseg_train.cli import main

    data = shared_file("fixtures/Hippocampus_mini")
    model = make_e2miseg_checkpoint(tmp_path / "model.safetensors")
    out = tmp_path / "refiner"
    common = ["train-refiner", str(model), str(data), "--out", str(out), "--threads", "1", "--limit-cases", "2",
              "--width", "4"]
    assert main(common + ["--iterations", "2"]) == 0
    assert len(list((out / "predictions").glob("*.nii.gz"))) == 2  # each training case predicted once and cached
    assert main(common + ["--iterations", "3"]) == 0
    assert "resumed from" in (out / "train.log").read_text() and json.loads((out / "history.json").read_text())[-1]["iteration"] == 3
    attached = tmp_path / "attached.safetensors"
    assert main(["attach-refiner", str(model), str(out), "--dataset", str(data), "--cases", "hippocampus_004",
                 "--out", str(attached), "--threads", "1"]) == 0
    loaded, card = load_model(attached, "cpu")
    figures = card["refiner"]["evaluation"]
    assert loaded.refiner is not None and figures["cases"] == 1
    assert set(figures["perturbed_2_voxels"]) == {"dilate", "erode", "shift"}
    assert card["defaults"]["edge_method"] == "learned" and card["defaults"]["refine_edges"] == figures["targets_met"]
    assert card["refiner"]["training"]["iterations"] == 3
