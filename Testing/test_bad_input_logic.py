"""Bad input through the Slicer logic (slicer-core): a clear exception, no half-made node, scene unchanged.

The same cases as the CLI table where they exist for volume nodes, run both in-process and through
the engine subprocess (as the module runs by default). Output-path cases do not apply (the logic
writes into the scene); cancelling and killing the engine are covered in test_slicer_logic.py.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import require_module
import SimpleITK as sitk

slicer = require_module("slicer", "the slicer-core wheel runs the Slicer module's logic on real MRML")
vtk = require_module("vtk")

from bad_inputs import good_array, volume, write_mha  # noqa: E402
from vtk.util import numpy_support  # noqa: E402
from e2miseg.errors import E2MISegError  # noqa: E402
from helpers import make_e2miseg_checkpoint  # noqa: E402

from E2MISegModuleLib import E2MISegLogic, EngineError  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_e2miseg_checkpoint(tmp_path_factory.mktemp("models") / "tiny.safetensors", spacing=(1.5, 1.5, 1.5))


@pytest.fixture
def logic(tmp_path, monkeypatch):
    monkeypatch.setenv("E2MISEG_MODELS", str(tmp_path / "store"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("E2MISEG_RUNTIME", "torch")
    logic = E2MISegLogic(slicer.vtkMRMLScene())
    logic.logCallback = None
    return logic


def load(logic, folder: Path, array: np.ndarray, name: str, spacing=(1.0, 1.0, 1.0)):
    path = folder / f"{name}.nrrd"
    sitk.WriteImage(volume(array, spacing), str(path))
    return logic.loadVolume(path)


def _with(array: np.ndarray, index, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


def _zero_spacing(logic, d):
    node = load(logic, d, good_array(), "good")
    node.SetSpacing(0.0, 1.0, 1.0)
    return node


def _skewed(logic, d):
    node = load(logic, d, good_array(), "good")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 1, 0.5)
    node.SetIJKToRASDirectionMatrix(matrix)
    return node


def _huge(logic, d):
    os.environ["E2MISEG_MEMORY_LIMIT_MB"] = "0.01"  # restored by the test's monkeypatch
    return load(logic, d, good_array(), "good")


# name -> (make the input volume node(s), exception fragment, exit code the engine subprocess reports)
NODE_CASES: dict[str, tuple[Callable, str, int]] = {
    "2D image for a 3D model": (lambda lg, d: load(lg, d, good_array((1, 40, 40)), "slice"), "is a single 2D slice", 3),
    "smaller than one target voxel": (lambda lg, d: load(lg, d, good_array((2, 2, 2)), "speck", (0.1, 0.1, 0.1)),
                                      "is smaller than one voxel at the model's spacing", 3),
    "all-zero volume": (lambda lg, d: load(lg, d, np.zeros((12, 14, 16), np.float32), "zeros"), "is all zero", 3),
    "constant volume": (lambda lg, d: load(lg, d, np.full((12, 14, 16), 7, np.int16), "constant"), "is constant (7)", 3),
    "NaN voxels": (lambda lg, d: load(lg, d, _with(good_array(), (1, 2, 3), np.nan), "nan"), "has 1 NaN or infinite voxels", 3),
    "Inf voxels": (lambda lg, d: load(lg, d, _with(good_array(), (1, 2, 3), -np.inf), "inf"), "has 1 NaN or infinite voxels", 3),
    "zero spacing": (_zero_spacing, "has invalid voxel spacing (0.0, 1.0, 1.0)", 3),
    "non-orthonormal direction": (_skewed, "non-orthonormal direction", 3),
    "over the memory limit": (_huge, "of memory but 0.0 MB is available", 6),
    "two volumes for a 1-channel model": (lambda lg, d: [load(lg, d, good_array(), "a"), load(lg, d, good_array(seed=1), "b")],
                                          "needs 1 input volume(s)", 3),
}


def node_ids(logic) -> list[tuple[str, str]]:
    scene = logic.scene
    return [(scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetClassName()) for i in range(scene.GetNumberOfNodes())]


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "subprocess"])
@pytest.mark.parametrize("name", list(NODE_CASES))
def test_logic_refuses_bad_volume_and_leaves_scene_unchanged(logic, checkpoint, tmp_path, monkeypatch, name, in_process):
    monkeypatch.setenv("E2MISEG_MEMORY_LIMIT_MB", "")  # registered, so _huge's override is undone afterwards
    make, fragment, code = NODE_CASES[name]
    inputs = make(logic, tmp_path)
    before = node_ids(logic)
    with pytest.raises(E2MISegError) as info:
        logic.process(inputs, model=str(checkpoint), device="cpu", inProcess=in_process, refineEdges=False)
    message = str(info.value)
    assert fragment in message and "\n" not in message and ";" in message, message
    if isinstance(info.value, EngineError):  # the engine's own line and documented exit code
        assert info.value.exit_code == code
    assert node_ids(logic) == before  # no half-made segmentation node
    assert logic.activeTask is None


@pytest.mark.parametrize("name,make,fragment", [
    ("missing file", lambda d: d / "nothing.nii.gz", "does not exist; check the path"),
    ("non-image file", lambda d: (d / "report.txt").write_text("x" * 100) and d / "report.txt", "cannot be read as a volume"),
    ("zero-size dimension", lambda d: write_mha(d / "zero.mha", "16 0 16", data=b""), "cannot be read as a volume"),
])
def test_load_volume_refuses_bad_files(logic, tmp_path, name, make, fragment):
    with pytest.raises(E2MISegError, match=fragment):
        logic.loadVolume(make(tmp_path))
    assert logic.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_load_volume_refuses_truncated_nifti(logic, tmp_path):
    """Slicer's own reader fills the missing half with garbage; the logic checks the file first."""
    sitk.WriteImage(volume(np.random.default_rng(3).random((24, 24, 24)).astype(np.float32)), str(tmp_path / "full.nii.gz"))
    blob = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(E2MISegError, match="cut.nii.gz is truncated: it holds .* bytes its header promises"):
        logic.loadVolume(tmp_path / "cut.nii.gz")
    assert logic.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_wrong_model_and_hostile_model_leave_scene_unchanged(logic, tmp_path):
    node = load(logic, tmp_path, good_array(), "good")
    before = node_ids(logic)
    with pytest.raises(E2MISegError, match="no model named 'no-such-model'"):
        logic.process(node, model="no-such-model", device="cpu")
    import torch

    torch.save({"w": torch.zeros(1)}, tmp_path / "colleague.pth")
    with pytest.raises(E2MISegError, match="pickle-based PyTorch file"):
        logic.process(node, model=str(tmp_path / "colleague.pth"), device="cpu")
    with pytest.raises(E2MISegError, match="pickle-based PyTorch file"):
        logic.importModel(tmp_path / "colleague.pth")
    assert node_ids(logic) == before


def test_wide_integer_volume_is_segmented_like_its_float_twin(logic, checkpoint, tmp_path):
    """uint32 voxels near 4e9 are accepted and normalised in float64: same labels as the float32 image."""
    pattern = good_array()
    wide = load(logic, tmp_path, (np.round(pattern).astype(np.int64) + 4_000_000_000).astype(np.uint32), "wide")
    plain = load(logic, tmp_path, np.round(pattern).astype(np.float32), "plain")
    results = []
    for node in (wide, plain):
        segmentation = logic.process(node, model=str(checkpoint), device="cpu", inProcess=True, refineEdges=False)
        labelmap = logic.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert logic.segmentationsLogic.ExportAllSegmentsToLabelmapNode(segmentation, labelmap, 0)
        results.append(numpy_support.vtk_to_numpy(labelmap.GetImageData().GetPointData().GetScalars()).copy())
    np.testing.assert_array_equal(results[0], results[1])
