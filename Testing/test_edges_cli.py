"""`e2miseg refine` and the edge flags of `e2miseg predict`: geometry round trips, selection, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import oblique_image, require_module
from e2miseg.cli import main
from e2miseg.io import write_segmentation
from helpers import make_card, make_e2miseg_checkpoint


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def under_drawn_case(tmp_path):
    """An oblique, anisotropic image with two bright blocks and labels drawn one voxel too small."""
    image = oblique_image(size=(24, 22, 12))
    array = sitk.GetArrayFromImage(image)
    array[3:9, 4:14, 16:22] += 80  # a second block for label 2
    bright = sitk.GetImageFromArray(array)
    bright.CopyInformation(image)
    labels = np.zeros(array.shape, dtype=np.uint8)
    labels[4:8, 5:13, 6:14] = 1
    labels[4:8, 5:13, 17:21] = 2
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    return write(bright, tmp_path / "image.nii.gz"), write(label_image, tmp_path / "labels.nrrd"), labels


def same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    # 1e-6: NRRD/NIfTI headers store directions as text/float32, so a re-read differs in the 8th digit
    # (in memory the refined image carries the input's geometry exactly: test_edges checks that)
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_refine_label_map_keeps_geometry_and_type_on_an_oblique_grid(tmp_path):
    image_path, labels_path, labels = under_drawn_case(tmp_path)
    out = tmp_path / "refined.nrrd"
    assert main(["refine", image_path, labels_path, "-o", str(out), "--strength", "0.8",
                 "--uncertainty", str(tmp_path / "u.nii.gz")]) == 0
    refined, original = sitk.ReadImage(str(out)), sitk.ReadImage(labels_path)
    same_geometry(refined, original)
    assert refined.GetPixelID() == original.GetPixelID()
    array = sitk.GetArrayFromImage(refined)
    assert (array == 1).sum() > (labels == 1).sum()  # grew towards the block's true edge
    uncertainty = sitk.ReadImage(str(tmp_path / "u.nii.gz"))
    same_geometry(uncertainty, original)
    regions = json.loads((tmp_path / "u.regions.json").read_text())["regions"]
    assert regions and regions[0]["rank"] == 1
    assert len(regions[0]["centroid_lps_mm"]) == 3 and len(regions[0]["box_ijk"]) == 6


def test_refine_labels_and_roi_leave_the_rest_bit_identical(tmp_path):
    image_path, labels_path, labels = under_drawn_case(tmp_path)
    out = tmp_path / "only1.nii.gz"
    assert main(["refine", image_path, labels_path, "-o", str(out), "--labels", "1", "--strength", "0.8"]) == 0
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert np.array_equal(array == 2, labels == 2)
    assert not np.array_equal(array == 1, labels == 1)
    boxed = tmp_path / "boxed.nii.gz"
    assert main(["refine", image_path, labels_path, "-o", str(boxed), "--roi", "0,0,0,23,8,11", "--strength", "0.8"]) == 0
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(boxed)))
    assert np.array_equal(array[:, 9:, :], labels[:, 9:, :])  # j > 8 is outside the box
    assert not np.array_equal(array[:, :9, :], labels[:, :9, :])


def test_refine_seg_nrrd_keeps_segments_names_colours_terminology_and_geometry(tmp_path):
    slicerio = require_module("slicerio")
    image_path, labels_path, labels = under_drawn_case(tmp_path)
    seg_path = tmp_path / "edited.seg.nrrd"
    write_segmentation(sitk.ReadImage(labels_path), make_card(), seg_path)
    out = tmp_path / "refined.seg.nrrd"
    assert main(["refine", image_path, str(seg_path), "-o", str(out), "--labels", "Posterior hippocampus", "--strength", "0.8"]) == 0
    before, after = slicerio.read_segmentation(str(seg_path)), slicerio.read_segmentation(str(out))
    np.testing.assert_allclose(after["ijkToLPS"], before["ijkToLPS"], atol=1e-6)
    assert after["voxels"].shape == before["voxels"].shape and after["voxels"].dtype == before["voxels"].dtype
    for a, b in zip(after["segments"], before["segments"]):
        assert (a["id"], a["name"], a["labelValue"], a["layer"]) == (b["id"], b["name"], b["labelValue"], b["layer"])
        assert a["color"] == pytest.approx(b["color"])
        assert a["terminology"] == b["terminology"]
        assert a.get("tags") == b.get("tags")
    assert np.array_equal(after["voxels"] == 1, before["voxels"] == 1)  # anterior: not selected
    changed = after["voxels"] != before["voxels"]
    assert changed.any() and set(np.unique(after["voxels"][changed])) <= {0, 2}
    extent = after["segments"][1]["extent"]
    hits = np.argwhere(after["voxels"] == 2)
    assert extent[0] <= hits[:, 0].min() and extent[1] >= hits[:, 0].max()


def test_refine_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    image_path, labels_path, _ = under_drawn_case(tmp_path)
    assert main(["refine", image_path, labels_path, "-o", str(tmp_path / "x.seg.nrrd")]) == 5
    assert "same kind" in capsys.readouterr().err
    assert main(["refine", image_path, labels_path, "-o", str(tmp_path / "x.nii.gz"), "--labels", "7"]) == 1
    assert "label 7 is not in labels.nrrd" in capsys.readouterr().err
    assert main(["refine", image_path, labels_path, "-o", str(tmp_path / "x.nii.gz"), "--roi", "1,2,3"]) == 1
    assert "six comma-separated numbers" in capsys.readouterr().err
    assert main(["refine", image_path, labels_path, "-o", labels_path]) == 5
    assert main(["refine", image_path, labels_path, "-o", str(tmp_path / "x.nii.gz"), "--strength", "2"]) == 1
    assert "outside 0..1" in capsys.readouterr().err
    assert main(["refine", str(tmp_path / "missing.nii.gz"), labels_path, "-o", str(tmp_path / "x.nii.gz")]) == 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_e2miseg_checkpoint(tmp_path_factory.mktemp("models") / "tiny.safetensors", spacing=(3.0, 3.0, 3.0))


def test_predict_with_refine_edges_and_uncertainty(tmp_path, checkpoint, hippocampus_image):
    plain, refined = tmp_path / "plain.nii.gz", tmp_path / "refined.nii.gz"
    uncertainty = tmp_path / "case_uncertainty.nii.gz"
    common = ["--model", str(checkpoint), "--device", "cpu"]
    assert main(["predict", str(hippocampus_image), "-o", str(plain), *common]) == 0
    assert main(["predict", str(hippocampus_image), "-o", str(refined), *common, "--refine-edges", "--edge-strength", "0.9",
                 "--uncertainty", str(uncertainty)]) == 0
    image = sitk.ReadImage(str(hippocampus_image))
    for path in (plain, refined, uncertainty):
        same_geometry(sitk.ReadImage(str(path)), image)
    a, b = sitk.GetArrayFromImage(sitk.ReadImage(str(plain))), sitk.GetArrayFromImage(sitk.ReadImage(str(refined)))
    u = sitk.GetArrayFromImage(sitk.ReadImage(str(uncertainty)))
    assert 0.0 <= u.min() and u.max() <= 1.0
    # refinement changes voxels, and only near the prediction's edges
    from e2miseg.edges import band_mask

    changed = a != b
    assert changed.any(), "--refine-edges at strength 0.9 changed nothing"
    assert np.all(band_mask(a, tuple(image.GetSpacing()[::-1]), 3.0)[changed])
    payload = json.loads((tmp_path / "case_uncertainty.regions.json").read_text())
    assert "regions" in payload
    sums = [r["summed_uncertainty"] for r in payload["regions"]]
    assert sums == sorted(sums, reverse=True)


def test_predict_api_refine_edges_zero_strength_is_identity(checkpoint, hippocampus_image):
    import e2miseg

    model, card = e2miseg.load_model(str(checkpoint), device="cpu")
    plain = e2miseg.predict(str(hippocampus_image), model)
    off = e2miseg.predict(str(hippocampus_image), model, refine_edges=True, edge_strength=0.0)
    assert np.array_equal(sitk.GetArrayFromImage(plain), sitk.GetArrayFromImage(off))


def test_predict_rejects_bad_edge_flags_before_loading(tmp_path, hippocampus_image, capsys):
    code = main(["predict", str(hippocampus_image), "-o", str(tmp_path / "o.nii.gz"), "--model", "no-such-model",
                 "--edge-strength", "3"])
    assert code == 2 and "edge_strength (--edge-strength) 3.0 is outside 0..1" in capsys.readouterr().err
    code = main(["predict", str(hippocampus_image), "-o", str(tmp_path / "o.nii.gz"), "--model", "no-such-model",
                 "--uncertainty", str(tmp_path / "u.png")])
    assert code == 5 and "uncertainty output" in capsys.readouterr().err


def test_refine_cropped_multilayer_seg_nrrd_like_slicer_writes(tmp_path):
    """Slicer crops .seg.nrrd files to the segments' extent and puts overlapping segments in layers."""
    slicerio = require_module("slicerio")
    from e2miseg.io import ijk_to_lps

    image_path, _, labels = under_drawn_case(tmp_path)
    image = sitk.ReadImage(image_path)
    start = np.array([2, 1, 1])  # (i, j, k) of the crop on the image grid
    crop = labels[1:11, 1:20, 2:23]  # (k, j, i)
    matrix = ijk_to_lps(image)
    matrix[:3, 3] = matrix[:3, :3] @ start + matrix[:3, 3]
    segmentation = slicerio.create_segmentation(crop.shape[::-1], matrix)
    first = crop.transpose(2, 1, 0) == 1
    overlap = first.copy()
    overlap[8:] = False  # a segment overlapping half of the first one: goes to a second layer
    slicerio.add_segment(segmentation, first, {"id": "block", "name": "block", "color": [1.0, 0.0, 0.0]})
    slicerio.add_segment(segmentation, overlap, {"id": "note", "name": "note", "color": [0.0, 1.0, 0.0]})
    assert segmentation["voxels"].ndim == 4
    seg_path, out = tmp_path / "cropped.seg.nrrd", tmp_path / "cropped_refined.seg.nrrd"
    slicerio.write_segmentation(str(seg_path), segmentation)
    assert main(["refine", image_path, str(seg_path), "-o", str(out), "--labels", "block", "--strength", "0.8"]) == 0
    before, after = slicerio.read_segmentation(str(seg_path)), slicerio.read_segmentation(str(out))
    np.testing.assert_allclose(after["ijkToLPS"], before["ijkToLPS"], atol=1e-6)
    assert after["voxels"].shape == before["voxels"].shape
    assert np.array_equal(slicerio.segment_mask(after, after["segments"][1]), slicerio.segment_mask(before, before["segments"][1]))
    grown, drawn = slicerio.segment_mask(after, after["segments"][0]), slicerio.segment_mask(before, before["segments"][0])
    assert grown.sum() > drawn.sum()
    # the image was sampled on the crop's grid: growth follows the bright block, which ends at k 3..8, j 4..13, i 5..14
    truth = np.zeros(labels.shape, dtype=bool)
    truth[3:9, 4:14, 5:15] = True
    truth_crop = truth[1:11, 1:20, 2:23].transpose(2, 1, 0)
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    assert dice(grown, truth_crop) > dice(drawn, truth_crop)


def test_cohort_predict_refines_edges_like_a_single_case(tmp_path, checkpoint, hippocampus_image):
    slicerio = require_module("slicerio")
    from conftest import shared_file

    common = ["--model", str(checkpoint), "--device", "cpu", "--refine-edges", "--edge-strength", "0.9"]
    out = tmp_path / "cohort"
    assert main(["predict", str(shared_file("fixtures/Hippocampus_mini/imagesTr")), "-o", str(out), *common]) == 0
    single = tmp_path / "single.nii.gz"
    assert main(["predict", str(hippocampus_image), "-o", str(single), *common]) == 0
    cohort_voxels = slicerio.read_segmentation(str(out / "hippocampus_001.seg.nrrd"))["voxels"].transpose(2, 1, 0)
    assert np.array_equal(cohort_voxels, sitk.GetArrayFromImage(sitk.ReadImage(str(single))))
    plain = tmp_path / "plain.nii.gz"
    assert main(["predict", str(hippocampus_image), "-o", str(plain), "--model", str(checkpoint), "--device", "cpu"]) == 0
    # strength 0.9 on a random network's soft probabilities does move some edges
    assert not np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(plain))), cohort_voxels)
