"""`e2miseg` end to end on real fixture cases: .seg.nrrd content and geometry, errors, cohorts."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, require_module
from e2miseg.cli import main
from helpers import make_e2miseg_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    # 1.5 mm target spacing makes the run resample to the network grid and back
    return make_e2miseg_checkpoint(path, spacing=(1.5, 1.5, 1.5))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "e2miseg.cli", *args], capture_output=True, text=True, encoding="utf-8",
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT / "E2MISegModule"), "PATH": "/usr/bin:/bin",
                               **{k: v for k, v in os.environ.items() if k.startswith("E2MISEG_")}})


def test_predict_writes_seg_nrrd_on_the_input_geometry(tmp_path, checkpoint, hippocampus_image):
    out = tmp_path / "case.seg.nrrd"
    result = run_cli("predict", str(hippocampus_image), "-o", str(out), "--model", str(checkpoint), "--device", "cpu", "--json-progress")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    stages = [e["stage"] for e in events]
    for stage in ("load", "preprocess", "infer", "postprocess", "write", "done"):
        assert stage in stages
    infer = [e for e in events if e["stage"] == "infer"]
    assert infer[-1]["done"] == infer[-1]["total"] > 1

    import slicerio

    segmentation = slicerio.read_segmentation(str(out))
    image = sitk.ReadImage(str(hippocampus_image))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    expected = np.eye(4)
    expected[:3, :3] = direction @ np.diag(image.GetSpacing())
    expected[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(segmentation["ijkToLPS"], expected, atol=1e-9)
    assert segmentation["voxels"].shape == image.GetSize()
    names = [s["name"] for s in segmentation["segments"]]
    assert names == ["Anterior hippocampus", "Posterior hippocampus"]
    assert segmentation["segments"][0]["color"] == pytest.approx([0.9, 0.6, 0.2])
    assert segmentation["segments"][1]["terminology"]["type"] == ["SCT", "5366008", "Hippocampus"]
    assert segmentation["segments"][1]["terminology"]["typeModifier"] == ["SCT", "255551008", "Posterior"]
    assert set(np.unique(segmentation["voxels"])) <= {0, 1, 2}


def test_seg_nrrd_loads_in_slicer_storage_node(tmp_path, checkpoint, hippocampus_image):
    slicer = require_module("slicer", "the slicer-core wheel runs the Slicer module's logic on real MRML")
    out = tmp_path / "case.seg.nrrd"
    assert main(["predict", str(hippocampus_image), "-o", str(out), "--model", str(checkpoint), "--device", "cpu"]) == 0
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(out))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    segment = segmentation.GetSegment(segmentation.GetNthSegmentID(0))
    assert segment.GetName() == "Anterior hippocampus"
    assert "SCT^5366008^Hippocampus" in segment.GetTerminology()
    image = sitk.ReadImage(str(hippocampus_image))
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert logic.ExportAllSegmentsToLabelmapNode(node, labelmap, 0)  # EXTENT_REFERENCE_GEOMETRY
    assert labelmap.GetImageData().GetDimensions() == image.GetSize()
    spacing = labelmap.GetSpacing()
    np.testing.assert_allclose(spacing, image.GetSpacing(), atol=1e-9)
    # Slicer works in RAS: the LPS origin flips its first two signs
    lps_origin = np.array(labelmap.GetOrigin()) * [-1, -1, 1]
    np.testing.assert_allclose(lps_origin, image.GetOrigin(), atol=1e-9)


def test_labelmap_output_equals_python_api(tmp_path, checkpoint, hippocampus_image):
    import e2miseg

    out = tmp_path / "case.nii.gz"
    assert main(["predict", str(hippocampus_image), "-o", str(out), "--model", str(checkpoint), "--device", "cpu"]) == 0
    model, card = e2miseg.load_model(checkpoint, device="cpu")
    labels = e2miseg.predict(str(hippocampus_image), model)
    written = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(labels))
    image = sitk.ReadImage(str(hippocampus_image))
    assert written.GetSize() == image.GetSize()
    np.testing.assert_allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("args,code,fragment", [
    (["predict", "missing.nii.gz", "-o", "{tmp}/o.seg.nrrd"], 3, "does not exist"),
    (["predict", "{img}", "-o", "{tmp}/o.xyz"], 5, "unknown output type"),
    (["predict", "{img}", "-o", "{tmp}/nofolder/o.seg.nrrd"], 5, "does not exist"),
    (["predict", "{img}", "-o", "{img}"], 5, "is the input file"),
])
def test_errors_are_one_line_with_exit_code(tmp_path, checkpoint, hippocampus_image, args, code, fragment):
    args = [a.format(tmp=tmp_path, img=hippocampus_image) for a in args] + ["--model", str(checkpoint)]
    result = run_cli(*args)
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("o.*"))


def test_wrong_model_name(tmp_path, hippocampus_image):
    result = run_cli("predict", str(hippocampus_image), "-o", str(tmp_path / "o.seg.nrrd"), "--model", "no-such-model")
    assert result.returncode == 4 and "no model named 'no-such-model'" in result.stderr


def test_cohort_folder_with_summary_and_restart(tmp_path, checkpoint):
    from conftest import shared_file

    folder = shared_file("fixtures/Hippocampus_mini/imagesTr")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-o", str(out), "--model", str(checkpoint), "--device", "cpu"]) == 0
    written = sorted(p.name for p in out.glob("*.seg.nrrd"))
    assert written == ["hippocampus_001.seg.nrrd", "hippocampus_003.seg.nrrd", "hippocampus_004.seg.nrrd"]
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("case,seconds,status,Anterior hippocampus_mm3")
    assert len(rows) == 4
    stamp = (out / "hippocampus_001.seg.nrrd").stat().st_mtime_ns
    assert main(["predict", str(folder), "-o", str(out), "--model", str(checkpoint), "--device", "cpu"]) == 0
    assert (out / "hippocampus_001.seg.nrrd").stat().st_mtime_ns == stamp  # finished cases are skipped
    assert len((out / "summary.csv").read_text().splitlines()) == 4


def test_preview_png_shows_segment_colours(tmp_path, checkpoint, hippocampus_image, hippocampus_label):
    from e2miseg.preview import overlay_rgb

    image = sitk.ReadImage(str(hippocampus_image))
    labels = sitk.Cast(sitk.ReadImage(str(hippocampus_label)), sitk.sitkUInt8)
    rgb = overlay_rgb(image, labels, {1: (1.0, 0.0, 0.0), 2: (0.0, 0.0, 1.0)})
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8
    pure_red = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)  # outlines are drawn opaque
    pure_blue = (rgb[..., 0] == 0) & (rgb[..., 1] == 0) & (rgb[..., 2] == 255)
    assert pure_red.sum() > 20 and pure_blue.sum() > 20
    out = tmp_path / "p.png"
    assert main(["predict", str(hippocampus_image), "-o", str(tmp_path / "s.seg.nrrd"), "--model", str(checkpoint),
                 "--device", "cpu", "--preview", str(out)]) == 0
    assert sitk.ReadImage(str(out)).GetNumberOfComponentsPerPixel() == 3
