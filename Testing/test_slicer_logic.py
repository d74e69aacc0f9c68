"""The Slicer module's logic on real MRML (slicer-core): segments, geometry, edits kept, cancel, errors.

No MRML mocks: a real vtkMRMLScene, volume nodes read by Slicer's own storage node, the engine run
in a subprocess (as in Slicer) or in-process, and results exported back with Slicer's own logic.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from conftest import require_module  # noqa: E402

slicer = require_module("slicer", "the slicer-core wheel runs the Slicer module's logic on real MRML")
psutil = require_module("psutil")

from conftest import oblique_image  # noqa: E402
from e2miseg.cli import main as cli_main  # noqa: E402
from e2miseg.errors import Cancelled, CheckpointError, InputImageError  # noqa: E402
from e2miseg.settings import SettingsError  # noqa: E402
from helpers import HIPPOCAMPUS_LABELS, make_e2miseg_checkpoint  # noqa: E402

from E2MISegModuleLib import E2MISegLogic, EngineError, killProcessTree  # noqa: E402
from E2MISegModuleLib.InferenceRunner import InProcessRunner  # noqa: E402
from E2MISegModuleLib.SegmentationImport import (LABEL_TAG, MODEL_TAG, exportSegmentsToArray, ijkToRas,  # noqa: E402
                                                 maskToOrientedImage, segmentIdsOf, segmentTag)

MODEL_SEGMENTS = [label["name"] for label in HIPPOCAMPUS_LABELS]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # a 3 mm network grid keeps every run to one or two tiles while still resampling to and from the input grid
    return make_e2miseg_checkpoint(tmp_path_factory.mktemp("models") / "tiny.safetensors", spacing=(3.0, 3.0, 3.0))


@pytest.fixture
def logic():
    scene = slicer.vtkMRMLScene()
    logic = E2MISegLogic(scene)
    logic.logCallback = None
    return logic


def cli_labels(image_path, checkpoint, out_path, *flags) -> np.ndarray:
    assert cli_main(["predict", str(image_path), "-o", str(out_path), "--model", str(checkpoint), "--device", "cpu",
                     *flags]) == 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out_path)))


def model_label_array(logic, segmentation_node, volume) -> np.ndarray:
    """The model's segments exported with Slicer's logic, as label values on the input grid."""
    by_name = {segmentation_node.GetSegmentation().GetSegment(s).GetName(): s for s in segmentIdsOf(segmentation_node)}
    ids = [by_name[name] for name in MODEL_SEGMENTS]
    exported = exportSegmentsToArray(logic.segmentationsLogic, segmentation_node, ids, volume, logic.scene)
    values = np.array([0] + [label["value"] for label in HIPPOCAMPUS_LABELS], dtype=np.uint8)
    return values[exported]


def segment_voxels(logic, segmentation_node, segment_id, volume) -> np.ndarray:
    return exportSegmentsToArray(logic.segmentationsLogic, segmentation_node, [segment_id], volume, logic.scene)


def add_user_segment(segmentation_node, name, volume, box) -> str:
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment(name, name)
    mask = np.zeros(volume.GetImageData().GetDimensions()[::-1], dtype=np.uint8)
    mask[box] = 1
    set_voxels(segmentation_node, segment_id, mask, volume, slicer.vtkSlicerSegmentationsModuleLogic.MODE_MERGE_MAX)
    return segment_id


def set_voxels(segmentation_node, segment_id, mask, volume, mode) -> None:
    # what a Segment Editor effect does: write a modifier labelmap without overwriting other segments
    oriented = maskToOrientedImage(mask, ijkToRas(volume))
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(oriented, segmentation_node, segment_id,
                                                                               mode, None, False, [])


def scene_state(logic) -> dict:
    """Every node (ID, class, name) and every segmentation's segments with their voxels."""
    scene = logic.scene
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    state = {"nodes": [(n.GetID(), n.GetClassName(), n.GetName()) for n in nodes]}
    volume = next(n for n in nodes if n.IsA("vtkMRMLScalarVolumeNode") and not n.IsA("vtkMRMLLabelMapVolumeNode"))
    for node in nodes:
        if node.IsA("vtkMRMLSegmentationNode"):
            for segment_id in segmentIdsOf(node):
                segment = node.GetSegmentation().GetSegment(segment_id)
                voxels = segment_voxels(logic, node, segment_id, volume)
                state[(node.GetID(), segment_id)] = (segment.GetName(), segment.GetColor(), int(voxels.sum()),
                                                     voxels.tobytes())
    return state


HOLD_HOOK = Path(__file__).resolve().parent / "engine_hold"  # sitecustomize.py for engine subprocesses


@pytest.fixture
def hold_engine_at(monkeypatch):
    """``hold_engine_at(stages)``: the next run stops right after reporting one of ``stages`` and stays
    there - a subprocess until it is killed, an in-process run until the returned event is set - so a
    test cancels or kills a run that is certainly still running, however fast this machine is."""
    current = {"gate": threading.Event(), "stages": set()}
    original = InProcessRunner._onProgress

    def held(runner, event) -> None:
        original(runner, event)
        if event.stage in current["stages"]:
            current["gate"].wait()

    monkeypatch.setattr(InProcessRunner, "_onProgress", held)

    def hold(stages) -> threading.Event:
        current["gate"].set()  # a new hold for each run
        current["gate"], current["stages"] = threading.Event(), set(stages)
        monkeypatch.setenv("E2MISEG_TEST_HOLD_AT", ",".join(stages))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(HOLD_HOOK), os.environ.get("PYTHONPATH")) if p))
        return current["gate"]

    yield hold
    current["gate"].set()  # never leave a worker thread waiting


def wait_for_stage(task, stages) -> None:
    """Poll until the engine reports one of ``stages`` (the run is held there by ``hold_engine_at``)."""
    seen = []
    original = task.progressCallback
    task.progressCallback = lambda event: seen.append(event["stage"])
    while True:
        finished = task.poll()
        if any(stage in stages for stage in seen):
            break
        assert not finished, f"the run finished before reaching {stages}: {task.error}"
        time.sleep(0.02)
    task.progressCallback = original


def test_subprocess_run_matches_the_cli_and_carries_the_model_card(tmp_path, logic, checkpoint, hippocampus_image):
    volume = logic.loadVolume(hippocampus_image)
    events = []
    node = logic.process(volume, model=str(checkpoint), device="cpu", quality="fast", progressCallback=events.append)

    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == MODEL_SEGMENTS
    for label in HIPPOCAMPUS_LABELS:
        segment = segmentation.GetSegment(label["name"])
        assert segment.GetColor() == pytest.approx(label["color"])
        entry = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
        assert entry.GetTypeObject().GetCodeValue() == label["terminology"]["type"]["code"]
        assert entry.GetTypeModifierObject().GetCodeValue() == label["terminology"]["type_modifier"]["code"]
        assert segmentTag(segment, MODEL_TAG) == "test-model-0.0.1"
        assert segmentTag(segment, LABEL_TAG) == str(label["value"])
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume

    # the logic and the CLI resolve unset options the same way (the card's defaults, then the engine's)
    expected = cli_labels(hippocampus_image, checkpoint, tmp_path / "cli.nii.gz", "--fast")
    assert set(np.unique(expected)) == {0, 1, 2}, "the tiny model should predict every label for a meaningful test"
    np.testing.assert_array_equal(model_label_array(logic, node, volume), expected)

    stages = [e["stage"] for e in events]
    assert {"load", "preprocess", "infer", "postprocess", "import"} <= set(stages)
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)

    # .seg.nrrd round trip through Slicer's own storage node
    path = tmp_path / "result.seg.nrrd"
    logic.saveSegmentation(node, path)
    reloaded = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(reloaded)
    assert segmentIdsOf(reloaded) == segmentIdsOf(node)
    for segment_id in segmentIdsOf(node):
        before, after = segmentation.GetSegment(segment_id), reloaded.GetSegmentation().GetSegment(segment_id)
        assert (after.GetName(), after.GetTerminology(), segmentTag(after, MODEL_TAG)) == \
            (before.GetName(), before.GetTerminology(), segmentTag(before, MODEL_TAG))
        assert after.GetColor() == pytest.approx(before.GetColor())
    np.testing.assert_array_equal(model_label_array(logic, reloaded, volume), expected)


def test_oblique_anisotropic_volume_in_process_keeps_geometry(tmp_path, logic, checkpoint):
    image_path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(oblique_image(), str(image_path))
    volume = logic.loadVolume(image_path)
    # the input sits in a study; the result must land beside it
    sh = logic.scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, volume)

    node = logic.process(volume, model=str(checkpoint), device="cpu", inProcess=True, refineEdges=False)

    expected = cli_labels(image_path, checkpoint, tmp_path / "cli.nrrd")
    assert expected.any()
    np.testing.assert_array_equal(model_label_array(logic, node, volume), expected)
    for segment_id in segmentIdsOf(node):  # the segments' own voxel grid is the input's, not a resampled one
        oriented = slicer.vtkOrientedImageData()
        node.GetBinaryLabelmapRepresentation(segment_id, oriented)
        matrix = vtk.vtkMatrix4x4()
        oriented.GetImageToWorldMatrix(matrix)
        got = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(got, ijkToRas(volume), atol=1e-6)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


def test_two_channel_model_takes_one_volume_per_channel(tmp_path, logic, hippocampus_image):
    import torch
    from e2miseg.checkpoint import save_checkpoint
    from e2miseg.models import build_model
    from helpers import make_card, small_e2miseg_config

    torch.manual_seed(1)
    config = small_e2miseg_config(in_channels=2)
    checkpoint = tmp_path / "two-channel.safetensors"
    save_checkpoint(checkpoint, build_model("e2miseg", **config).state_dict(),
                    make_card("3d", "e2miseg", config, channels=2, spacing=(3.0, 3.0, 3.0)))
    first = logic.loadVolume(hippocampus_image, "T1_0")
    second_path = tmp_path / "second.nrrd"  # a second channel on the same grid: the image squared
    image = sitk.ReadImage(str(hippocampus_image), sitk.sitkFloat32)
    sitk.WriteImage(image * image, str(second_path))
    second = logic.loadVolume(second_path, "T1_1")

    with pytest.raises(InputImageError, match=r"needs 2 input volume\(s\) \(T1_0, T1_1\)"):
        logic.process(first, model=str(checkpoint), device="cpu", inProcess=True)
    with pytest.raises(InputImageError, match="input channel 2 is not selected"):
        logic.process([first, None], model=str(checkpoint), device="cpu", inProcess=True)
    node = logic.process([first, second], model=str(checkpoint), device="cpu", inProcess=True, refineEdges=False)

    out = tmp_path / "cli.nii.gz"
    assert cli_main(["predict", str(hippocampus_image), str(second_path), "-o", str(out), "--model", str(checkpoint),
                     "--device", "cpu"]) == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    np.testing.assert_array_equal(model_label_array(logic, node, first), expected)


def test_rerun_keeps_user_segments_and_edits_and_saves_undo(logic, checkpoint, hippocampus_image):
    volume = logic.loadVolume(hippocampus_image)
    node = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Work")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    tumour = add_user_segment(node, "Tumour", volume, np.s_[2:10, 5:20, 5:15])

    tumour_voxels = segment_voxels(logic, node, tumour, volume)
    logic.process(volume, model=str(checkpoint), outputSegmentation=node, device="cpu", inProcess=True)
    first = model_label_array(logic, node, volume)
    assert segmentIdsOf(node) == [tumour] + MODEL_SEGMENTS
    np.testing.assert_array_equal(segment_voxels(logic, node, tumour, volume), tumour_voxels)

    # the user edits: grows Tumour into the model's area, adds Lesion, and erases a model segment
    grown = segment_voxels(logic, node, tumour, volume)
    grown[12:20, 20:30, 10:20] = 1
    set_voxels(node, tumour, grown, volume, slicer.vtkSlicerSegmentationsModuleLogic.MODE_MERGE_MAX)
    lesion = add_user_segment(node, "Lesion", volume, np.s_[15:25, 25:40, 15:25])
    lesion_voxels = segment_voxels(logic, node, lesion, volume)
    set_voxels(node, MODEL_SEGMENTS[0], np.zeros_like(grown), volume, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    edited_model = segment_voxels(logic, node, MODEL_SEGMENTS[0], volume)
    logic.scene.SetUndoOn()

    logic.process(volume, model=str(checkpoint), outputSegmentation=node, device="cpu", inProcess=True)

    assert segmentIdsOf(node) == [tumour] + MODEL_SEGMENTS + [lesion]  # no duplicates, nothing lost
    np.testing.assert_array_equal(segment_voxels(logic, node, tumour, volume), grown)
    np.testing.assert_array_equal(segment_voxels(logic, node, lesion, volume), lesion_voxels)
    np.testing.assert_array_equal(model_label_array(logic, node, volume), first)  # model segments refreshed

    assert logic.scene.GetNumberOfUndoLevels() >= 1
    logic.scene.Undo()
    np.testing.assert_array_equal(segment_voxels(logic, node, MODEL_SEGMENTS[0], volume), edited_model)
    np.testing.assert_array_equal(segment_voxels(logic, node, tumour, volume), grown)


def test_rerun_into_a_cli_seg_nrrd_updates_its_model_segments(tmp_path, logic, checkpoint, hippocampus_image):
    # a .seg.nrrd written by `e2miseg predict` carries the model tag but no label-value tag
    path = tmp_path / "cli.seg.nrrd"
    assert cli_main(["predict", str(hippocampus_image), "-o", str(path), "--model", str(checkpoint), "--device", "cpu"]) == 0
    volume = logic.loadVolume(hippocampus_image)
    node = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    ids = segmentIdsOf(node)
    from_file = model_label_array(logic, node, volume)
    assert from_file.any()
    logic.process(volume, model=str(checkpoint), outputSegmentation=node, device="cpu", inProcess=True,
                  refineEdges=False)  # the CLI ran without --refine-edges
    assert segmentIdsOf(node) == ids  # updated in place, not duplicated
    np.testing.assert_array_equal(model_label_array(logic, node, volume), from_file)
    assert [segmentTag(node.GetSegmentation().GetSegment(i), LABEL_TAG) for i in ids] == ["1", "2"]


def test_output_removed_during_the_run_is_a_clear_error(logic, checkpoint, hippocampus_image):
    volume, node = _scene_with_user_work(logic, hippocampus_image)
    task = logic.process(volume, model=str(checkpoint), outputSegmentation=node, device="cpu", inProcess=True,
                         waitForCompletion=False)
    logic.scene.RemoveNode(node)
    before = scene_state(logic)
    with pytest.raises(Exception, match="was removed while segmenting"):
        task.wait()
    assert scene_state(logic) == before


def test_undo_last_run_restores_the_segmentation(logic, checkpoint, hippocampus_image):
    volume = logic.loadVolume(hippocampus_image)
    node = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Work")
    node.CreateDefaultDisplayNodes()
    add_user_segment(node, "Tumour", volume, np.s_[2:10, 5:20, 5:15])
    before = scene_state(logic)
    logic.process(volume, model=str(checkpoint), outputSegmentation=node, device="cpu", inProcess=True)
    assert scene_state(logic) != before
    assert logic.undoLastRun()
    assert segmentIdsOf(node) == ["Tumour"]
    after = scene_state(logic)
    assert after.keys() == before.keys() and all(after[k] == before[k] for k in before if k != "nodes")


def _scene_with_user_work(logic, hippocampus_image):
    volume = logic.loadVolume(hippocampus_image)
    node = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Work")
    node.CreateDefaultDisplayNodes()
    add_user_segment(node, "Tumour", volume, np.s_[2:10, 5:20, 5:15])
    return volume, node


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "subprocess"])
def test_cancel_mid_run_leaves_the_scene_unchanged(logic, checkpoint, hippocampus_image, in_process, hold_engine_at):
    volume, node = _scene_with_user_work(logic, hippocampus_image)
    # in-process also covers a new output node; each subprocess start costs a torch import, so one case there
    for output in ((None, node) if in_process else (node,)):
        release = hold_engine_at({"infer", "preprocess"})
        before = scene_state(logic)
        task = logic.process(volume, model=str(checkpoint), outputSegmentation=output, device="cpu",
                             inProcess=in_process, waitForCompletion=False)
        wait_for_stage(task, {"infer", "preprocess"})
        pid = None if in_process else task.runner.process.pid
        logic.cancel()
        release.set()  # an in-process run goes on and must see the cancel token
        with pytest.raises(Cancelled):
            task.wait()
        assert task.segmentationNode is None
        assert scene_state(logic) == before
        if pid is not None:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert task.tempDir is None or not os.path.exists(task.tempDir)


def test_engine_killed_from_outside_is_a_clear_error_and_no_change(logic, checkpoint, hippocampus_image, hold_engine_at):
    volume, node = _scene_with_user_work(logic, hippocampus_image)
    hold_engine_at({"load", "preprocess", "infer"})
    before = scene_state(logic)
    task = logic.process(volume, model=str(checkpoint), outputSegmentation=node, device="cpu", waitForCompletion=False)
    wait_for_stage(task, {"load", "preprocess", "infer"})
    os.kill(task.runner.process.pid, signal.SIGKILL)
    with pytest.raises(EngineError, match="killed by signal SIGKILL.*quality 'fast'"):
        task.wait()
    assert scene_state(logic) == before
    assert logic.activeTask is None


def test_out_of_range_setting_is_refused_before_anything_runs(logic, checkpoint, hippocampus_image):
    # the settings object checks its ranges itself: one line naming the option and its range, no engine started
    volume, node = _scene_with_user_work(logic, hippocampus_image)
    before = scene_state(logic)
    with pytest.raises(SettingsError, match=r"^edge_strength \(--edge-strength\) 2\.0 is outside 0\.\.1;") as error:
        logic.process(volume, model=str(checkpoint), outputSegmentation=node, device="cpu", edgeStrength=2.0)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)
    with pytest.raises(TypeError, match="unknown setting 'edgeStrenght'"):
        logic.process(volume, model=str(checkpoint), edgeStrenght=0.5)
    assert scene_state(logic) == before
    assert logic.activeTask is None


def test_run_options_reach_the_engine_command(logic, checkpoint, hippocampus_image):
    volume = logic.loadVolume(hippocampus_image)
    before = scene_state(logic)
    task = logic.process(volume, model=str(checkpoint), device="cpu", quality="normal+tta", keepLargest=True,
                         minIslandMm3=12.5, refineEdges=True, edgeStrength=0.6, waitForCompletion=False)
    command = task.runner.command
    written = sitk.ReadImage(command[4])  # the volume node as the engine reads it
    logic.cancel()  # killed before the engine even imports torch
    with pytest.raises(Cancelled):
        task.wait()
    assert not os.path.exists(command[4])  # temporary files are gone
    assert command[:4] == [sys.executable, "-m", "e2miseg.cli", "predict"]
    assert command[command.index("--quality") + 1] == "normal+tta" and "--keep-largest" in command
    assert command[command.index("--min-island-mm3") + 1] == "12.5"
    assert command[command.index("--device") + 1] == "cpu" and "--json-progress" in command
    assert "--refine-edges" in command and command[command.index("--edge-strength") + 1] == "0.6"
    # options not given are left to the engine, which resolves them against the same card
    assert "--edge-method" not in command and "--step" not in command
    original = sitk.ReadImage(str(hippocampus_image))  # same voxels and geometry as the file Slicer loaded
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original))
    for get in (sitk.Image.GetSpacing, sitk.Image.GetOrigin, sitk.Image.GetDirection):
        np.testing.assert_allclose(get(written), get(original), atol=1e-9)
    assert scene_state(logic) == before


def test_kill_process_tree_kills_grandchildren():
    launcher = subprocess.Popen([sys.executable, "-c",
                                 "import subprocess, sys, time\n"
                                 "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                                 "print(child.pid, flush=True)\n"
                                 "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    child_pid = int(launcher.stdout.readline())
    killProcessTree(launcher.pid)
    launcher.wait(timeout=10)
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE


def test_bad_inputs_are_refused_before_anything_runs(logic, checkpoint, hippocampus_image):
    volume = logic.loadVolume(hippocampus_image)
    before = scene_state(logic)
    with pytest.raises(InputImageError, match="needs 1 input volume"):
        logic.process([volume, volume], model=str(checkpoint))
    with pytest.raises(CheckpointError, match="no model named"):
        logic.process(volume, model="no-such-model")
    labelmap = logic.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputImageError, match="not an image volume"):
        logic.process(labelmap, model=str(checkpoint))
    logic.scene.RemoveNode(labelmap)
    with pytest.raises(SettingsError, match="quality .* 'best' is not one of fast, normal, normal\\+tta"):
        logic.process(volume, model=str(checkpoint), quality="best")
    assert scene_state(logic)["nodes"] == before["nodes"]
    assert logic.activeTask is None


@pytest.fixture(scope="module")
def checkpoint_with_defaults(tmp_path_factory):
    """The tiny model with a card that sets its own defaults (edge refinement on, largest component kept)."""
    from e2miseg.checkpoint import read_checkpoint, save_checkpoint

    path = make_e2miseg_checkpoint(tmp_path_factory.mktemp("models") / "plain.safetensors", spacing=(3.0, 3.0, 3.0))
    tensors, card = read_checkpoint(path)
    card["defaults"] = {"keep_largest": True, "refine_edges": True, "edge_method": "meanfield", "edge_strength": 0.8,
                        "quality": "fast"}
    target = path.with_name("with-defaults.safetensors")
    save_checkpoint(target, tensors, card)
    return target


@pytest.mark.parametrize("in_process", [False, True], ids=["subprocess", "in-process"])
def test_no_options_gives_the_cli_labels_voxel_for_voxel(tmp_path, logic, hippocampus_image, in_process):
    # The bundled model, no options anywhere: the module and `e2miseg predict` must not disagree on one voxel.
    volume = logic.loadVolume(hippocampus_image)
    node = logic.process(volume, model="e2miseg-hippocampus", inProcess=in_process)
    out = tmp_path / "cli.nii.gz"
    assert cli_main(["predict", str(hippocampus_image), "-o", str(out), "--model", "e2miseg-hippocampus"]) == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert {1, 2} <= set(np.unique(expected))
    np.testing.assert_array_equal(model_label_array(logic, node, volume), expected)


@pytest.mark.parametrize("in_process", [False, True], ids=["subprocess", "in-process"])
def test_card_defaults_apply_in_the_module_as_in_the_cli(tmp_path, logic, checkpoint_with_defaults, hippocampus_image,
                                                          in_process):
    volume = logic.loadVolume(hippocampus_image)
    assert logic.modelDefaults(str(checkpoint_with_defaults)).edge_strength == 0.8  # what the widget shows
    node = logic.process(volume, model=str(checkpoint_with_defaults), device="cpu", inProcess=in_process)
    by_default = cli_labels(hippocampus_image, checkpoint_with_defaults, tmp_path / "defaults.nii.gz")
    np.testing.assert_array_equal(model_label_array(logic, node, volume), by_default)
    # the card's defaults really ran: the same as asking for them explicitly ...
    spelled_out = cli_labels(hippocampus_image, checkpoint_with_defaults, tmp_path / "spelled.nii.gz", "--keep-largest",
                             "--refine-edges", "--edge-strength", "0.8", "--quality", "fast")
    np.testing.assert_array_equal(by_default, spelled_out)
    # ... and an explicit argument wins over them, in the module as in the CLI
    plain_cli = cli_labels(hippocampus_image, checkpoint_with_defaults, tmp_path / "plain.nii.gz", "--no-keep-largest",
                           "--no-refine-edges")
    assert (plain_cli != by_default).any()
    node = logic.process(volume, model=str(checkpoint_with_defaults), device="cpu", inProcess=in_process,
                         keepLargest=False, refineEdges=False)
    np.testing.assert_array_equal(model_label_array(logic, node, volume), plain_cli)
