"""The command line as a clinician who scripts meets it: what models there are, what a run produced,
cohort restarts, and the mistakes a first hour brings (a label map as the image, a misspelt name,
the wrong number of channels)."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_file
from e2miseg.cli import main
from e2miseg.errors import InputImageError
from helpers import make_card, make_e2miseg_checkpoint, small_e2miseg_config

ACDC_LABEL = "fixtures/ACDC_mini/labelsTr/patient021_frame01.nii.gz"
ACDC_IMAGE = "fixtures/ACDC_mini/imagesTr/patient021_frame01.nii.gz"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_e2miseg_checkpoint(tmp_path_factory.mktemp("models") / "tiny.safetensors", spacing=(3.0, 3.0, 3.0))


def test_label_map_as_the_image_is_refused_before_the_network(tmp_path, capsys):
    out = tmp_path / "out.seg.nrrd"
    code = main(["predict", str(shared_file(ACDC_LABEL)), "-o", str(out), "--model", "ehanet-acdc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and not out.exists()
    assert "patient021_frame01.nii.gz looks like a label map, not an image" in err[0]
    assert "values 0, 1, 2, 3" in err[0] and "--accept-label-map" in err[0]


def test_label_map_flag_accepts_it_and_the_api_refuses_it_too(tmp_path, checkpoint, hippocampus_label):
    import e2miseg

    model, _ = e2miseg.load_model(str(checkpoint), device="cpu")
    with pytest.raises(InputImageError, match="looks like a label map"):
        e2miseg.predict(str(hippocampus_label), model)
    assert e2miseg.predict(str(hippocampus_label), model, accept_label_map=True).GetSize() == \
        sitk.ReadImage(str(hippocampus_label)).GetSize()
    assert main(["predict", str(hippocampus_label), "-o", str(tmp_path / "o.nii.gz"), "--model", str(checkpoint),
                 "--device", "cpu", "--accept-label-map", "--quiet"]) == 0


def test_a_real_integer_scan_is_not_taken_for_a_label_map(tmp_path, checkpoint, hippocampus_image):
    scan = sitk.Cast(sitk.RescaleIntensity(sitk.ReadImage(str(hippocampus_image)), 0, 255), sitk.sitkUInt8)
    sitk.WriteImage(scan, str(tmp_path / "uint8.nii.gz"))
    assert main(["predict", str(tmp_path / "uint8.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--model", str(checkpoint),
                 "--device", "cpu", "--quiet"]) == 0


def test_predict_prints_segment_volumes_and_the_preview(tmp_path, checkpoint, hippocampus_image, capsys):
    out, preview = tmp_path / "case.nii.gz", tmp_path / "case.png"
    assert main(["predict", str(hippocampus_image), "-o", str(out), "--model", str(checkpoint), "--device", "cpu",
                 "--preview", str(preview)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    voxel_ml = float(np.prod(sitk.ReadImage(str(out)).GetSpacing())) / 1000
    assert lines[0] == f"wrote {out}" and lines[-1] == f"preview: {preview}" and preview.exists()
    for line, (value, name) in zip(lines[1:3], [(1, "Anterior hippocampus"), (2, "Posterior hippocampus")]):
        voxels = int((labels == value).sum())
        assert line.split() == [*name.split(), f"{voxels * voxel_ml:.3f}", "mL", f"{voxels:,d}", "voxels"]


def test_quiet_prints_nothing(tmp_path, checkpoint, hippocampus_image, capsys):
    assert main(["predict", str(hippocampus_image), "-o", str(tmp_path / "o.nii.gz"), "--model", str(checkpoint),
                 "--device", "cpu", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_models_list_has_a_header_and_says_what_each_model_segments(capsys):
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "SEGMENTS", "MODALITY", "CHANNELS", "LICENCE"]
    hippocampus = next(line for line in lines if line.startswith("e2miseg-hippocampus "))
    assert "Anterior hippocampus, Posterior hippocampus" in hippocampus and " MR " in hippocampus and "CC-BY-SA" in hippocampus
    acdc = next(line for line in lines if line.startswith("ehanet-acdc "))
    assert "Left ventricle" in acdc and "Myocardium" in acdc
    assert main(["models", "list", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries["s2anet-leftatrium"]["labels"][0]["name"] == "Left atrium"
    assert entries["s2anet-leftatrium"]["modality"] == ["MR"] and entries["s2anet-leftatrium"]["channels"]


def test_models_info_is_a_short_summary_and_json_is_the_whole_card(capsys):
    assert main(["models", "info", "e2miseg-hippocampus"]) == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) < 30 and "hippocampus_0" not in text  # no case-ID lists
    for expected in ("Segments:", "Anterior hippocampus", "#", "Inputs:", "MRI (T1-weighted MPRAGE) (MR)", "Spacing:", "Defaults:",
                     "Validation:", "Dice", "Licence:", "Provenance:"):
        assert expected in text
    assert "Volumes:    Anterior hippocampus  1192-2593 mm³ on validation" in text  # the plausibility range (issue 21)
    assert main(["models", "info", "e2miseg-hippocampus", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["provenance"]["split"]["val_cases"] and card["preprocessing"] and card["defaults"]["comparison"]
    assert main(["models", "info", "s2anet-leftatrium", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)["defaults"]
    assert main(["models", "info", "s2anet-leftatrium"]) == 0
    text = capsys.readouterr().out  # its measured defaults, whatever the validation chose
    assert f"quality {measured['quality']}" in text
    assert ("largest component per label kept" if measured["keep_largest"] else "largest component per label not enforced") in text


def test_did_you_mean_for_a_misspelt_model(tmp_path, hippocampus_image, capsys):
    assert main(["predict", str(hippocampus_image), "-o", str(tmp_path / "o.nii.gz"), "--model", "hipocampus"]) == 4
    assert "did you mean 'e2miseg-hippocampus'?" in capsys.readouterr().err
    assert main(["models", "info", "leftatrium"]) == 4
    assert "did you mean 's2anet-leftatrium'?" in capsys.readouterr().err


def test_channel_message_fits_too_few_and_too_many(tmp_path, hippocampus_image, capsys):
    from e2miseg.checkpoint import save_checkpoint
    from e2miseg.models import build_model

    config = small_e2miseg_config(in_channels=2)
    path = tmp_path / "two.safetensors"
    save_checkpoint(path, build_model("e2miseg", **config).state_dict(),
                    make_card("3d", "e2miseg", config, (16, 16, 16), channels=2))
    assert main(["predict", str(hippocampus_image), "-o", str(tmp_path / "o.nii.gz"), "--model", str(path)]) == 3
    too_few = capsys.readouterr().err
    assert ("takes 2 input channels [T1_0 (MR), T1_1 (MR)] but was given 1 (hippocampus_001.nii.gz); give 2 files, one "
            "per channel in that order, or one 4D image with 2 channels") in too_few
    three = [str(hippocampus_image)] * 3
    assert main(["predict", *three, "-o", str(tmp_path / "o.nii.gz"), "--model", str(path)]) == 3
    assert "but was given 3 (" in capsys.readouterr().err


def test_cohort_says_what_it_skipped_and_overwrite_redoes_it(tmp_path, checkpoint, hippocampus_image, capsys):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("a", "b"):
        shutil.copy(hippocampus_image, cohort / f"{name}.nii.gz")
    common = [str(cohort), "-o", str(tmp_path / "out"), "--model", str(checkpoint), "--device", "cpu"]
    assert main(["predict", *common]) == 0
    first = capsys.readouterr().err
    assert "already done" not in first and "rank" not in first and "segmented 2 of 2 case(s)" in first
    assert main(["predict", *common]) == 0
    again = capsys.readouterr().err
    assert "2 of 2 cases already done, skipped (--overwrite redoes them)" in again and "rank" not in again
    assert "segmented 0 of 0 case(s)" in again
    stamp = (tmp_path / "out" / "a.seg.nrrd").stat().st_mtime_ns
    assert main(["predict", *common, "--overwrite"]) == 0
    assert "segmenting them again (--overwrite)" in capsys.readouterr().err
    assert (tmp_path / "out" / "a.seg.nrrd").stat().st_mtime_ns != stamp


def test_cohort_names_ranks_only_when_there_are_several(tmp_path, checkpoint, hippocampus_image, capsys, monkeypatch):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("a", "b"):
        shutil.copy(hippocampus_image, cohort / f"{name}.nii.gz")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["predict", str(cohort), "-o", str(tmp_path / "out"), "--model", str(checkpoint), "--device", "cpu"]) == 0
    assert "rank 2 of 2: segmented 1 of 1 case(s)" in capsys.readouterr().err


def test_openvino_notice_only_when_a_conversion_happens_with_its_time(tmp_path, monkeypatch, caplog, hippocampus_image):
    pytest.importorskip("openvino", reason="the notice belongs to the OpenVINO runtime")
    import e2miseg

    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    path = make_e2miseg_checkpoint(tmp_path / "fresh.safetensors", seed=7, spacing=(3.0, 3.0, 3.0))
    model, card = e2miseg.load_model(str(path), device="cpu")
    with caplog.at_level(logging.INFO, logger="e2miseg"):
        e2miseg.predict(str(hippocampus_image), model, card, runtime="openvino")
    notices = [r.getMessage() for r in caplog.records if "OpenVINO" in r.getMessage()]
    assert len(notices) == 1 and notices[0].startswith("optimised the network for this CPU with OpenVINO in ")
    assert " s (once per model and window size" in notices[0] and "about a minute" not in notices[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="e2miseg"):
        e2miseg.predict(str(hippocampus_image), model, card, runtime="openvino")  # a second case: nothing to say
    assert not [r for r in caplog.records if "OpenVINO" in r.getMessage()]


def test_preview_draws_thick_slices_at_true_aspect_with_a_legend(tmp_path):
    from e2miseg.checkpoint import read_card
    from e2miseg.preview import render_preview, views_through_segmentation
    from e2miseg.store import resolve

    image = sitk.ReadImage(str(shared_file(ACDC_IMAGE)))
    labels = sitk.Cast(sitk.ReadImage(str(shared_file(ACDC_LABEL))), sitk.sitkUInt8)
    axial, coronal, sagittal = views_through_segmentation(image, labels)
    sx, sy, sz = image.GetSpacing()
    assert (axial.name, coronal.name, sagittal.name) == ("Axial", "Coronal", "Sagittal")
    assert coronal.row_mm == pytest.approx(sz) and coronal.col_mm == pytest.approx(sx)  # 10 mm slices stay 10 mm tall
    assert coronal.aspect == pytest.approx(coronal.grey.shape[1] * sx / (coronal.grey.shape[0] * sz))
    assert axial.grey.shape[0] < image.GetSize()[1] or axial.grey.shape[1] < image.GetSize()[0]  # air cropped away
    card = read_card(resolve("ehanet-acdc").path)
    rgb = render_preview(image, labels, card, title="ACDC")
    assert rgb.ndim == 3 and rgb.dtype == np.uint8
    for label in card["labels"]:  # each segment's colour is drawn (outlines and legend patches are opaque)
        color = np.round(np.array(label["color"]) * 255).astype(int)
        assert (np.abs(rgb.astype(int) - color).sum(axis=2) <= 3).sum() > 30, label["name"]
