"""Issue 21 point 4: an empty result, or a label volume far outside the range the model card recorded
on validation, is said in one line by every entry point - the CLI (exit 0, output written), the Slicer
logic's task (``task.warning``, the segmentation still created) and the module's widget (its status
line, no error dialog) - and an ordinary result says nothing.

The models are small E2MISegs whose output head says one label everywhere, so the result's volume is
known: the whole 12 x 14 x 16 mm test volume (2688 mm³) as "Anterior hippocampus", or nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import SimpleITK as sitk

from bad_inputs import good_array, volume
from conftest import ROOT, require_module
from helpers import make_constant_checkpoint

pytestmark = pytest.mark.torch_runtime  # about the result, not the runtime: no OpenVINO conversion per model

WHOLE_MM3 = 12 * 14 * 16  # every voxel of the test volume is label 1
MODELS = {  # store name -> (label everywhere, validation ranges by label value)
    "flat-empty": (0, {1: (100.0, 200.0)}),
    "flat-outside": (1, {1: (100.0, 200.0)}),  # 2688 mm³ is more than twice the largest validation volume
    "flat-ordinary": (1, {1: (2000.0, 3000.0)}),
}
EXPECTED = {
    "flat-empty": "warning: the segmentation is empty: model 'test-model' found none of its labels",
    "flat-outside": f"warning: label volumes far outside the validation range of model 'test-model': "
                    f"Anterior hippocampus {WHOLE_MM3} mm³ (validation 100-200); review the result",
    "flat-ordinary": None,
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    for name, (label, ranges) in MODELS.items():
        make_constant_checkpoint(folder / f"{name}.safetensors", label, ranges)
    return folder


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "good.nrrd"
    sitk.WriteImage(volume(good_array()), str(path))
    return path


# ---- the command line ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_cli_warns_in_one_line_exits_0_and_writes_the_output(tmp_path, store, image_file, name):
    output = tmp_path / "out.seg.nrrd"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "E2MISegModule"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "e2miseg.cli", "predict", str(image_file), "-o", str(output),
                             "--model", str(store / f"{name}.safetensors"), "--device", "cpu"],
                            capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert output.is_file() and f"wrote {output}" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    if EXPECTED[name] is None:
        assert warnings == [], result.stderr
    else:
        assert len(warnings) == 1 and warnings[0].startswith(f"e2miseg: {EXPECTED[name]}"), result.stderr
        assert "Traceback" not in result.stderr


# ---- the Slicer logic on real MRML ----------------------------------------------------------------------

slicer = require_module("slicer", "the slicer-core wheel runs the Slicer module's logic on real MRML")

from E2MISegModuleLib import E2MISegLogic  # noqa: E402
from E2MISegModuleLib.SegmentationImport import segmentIdsOf  # noqa: E402


@pytest.mark.parametrize("name, in_process", [("flat-empty", True), ("flat-empty", False), ("flat-outside", True),
                                              ("flat-outside", False), ("flat-ordinary", True)])
def test_logic_task_carries_the_warning_and_still_creates_the_segmentation(store, image_file, name, in_process):
    logic = E2MISegLogic(slicer.vtkMRMLScene())
    logged = []
    logic.logCallback = logged.append
    node = logic.loadVolume(image_file)
    task = logic.process(node, model=store / f"{name}.safetensors", device="cpu", inProcess=in_process,
                         waitForCompletion=False)
    task.wait()
    assert task.error is None and task.segmentationNode is not None  # a warning is not an error
    assert len(segmentIdsOf(task.segmentationNode)) == 2  # the model's segments, empty or not
    if EXPECTED[name] is None:
        assert task.warning is None and not any("warning" in line for line in logged), logged
    else:
        assert task.warning.startswith(EXPECTED[name])
        assert "\n" not in task.warning
        # said once in the module's log: relayed from the engine's stderr, or by the logic in-process
        assert sum(EXPECTED[name] in line for line in logged) == 1, logged


# ---- the module's widget through the application double ---------------------------------------------------

from slicer_app_double import SlicerApplication  # noqa: E402

MODULE_FILE = ROOT / "E2MISegModule" / "E2MISegModule.py"


@pytest.fixture
def application(monkeypatch, store):
    monkeypatch.setenv("E2MISEG_MODELS", str(store))
    with SlicerApplication(version=(5, 10)) as app:
        yield app


def segment_with(widget, model: str, timeout_s: float = 300):
    ui = widget.ui
    ui.modelSelector.currentIndex = [ui.modelSelector.itemText(i) for i in range(ui.modelSelector.count)].index(model)
    ui.deviceSelector.currentIndex = [d.value for d in type(widget._parameterNode.device)].index("cpu")
    widget._parameterNode.outputSegmentation = None  # a new segmentation per run
    ui.segmentButton.click()
    assert widget.task is not None
    deadline = time.monotonic() + timeout_s
    while widget.task is not None:  # what the QTimer does in Slicer
        assert time.monotonic() < deadline, "the run did not finish"
        widget.timer.fire()
        time.sleep(0.05)


def test_widget_shows_the_warning_in_its_status_line_and_keeps_the_result(application, image_file, monkeypatch):
    dialogs = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: dialogs.append(text))
    logic = E2MISegLogic(slicer.mrmlScene)
    volumeNode = logic.loadVolume(image_file)
    module = application.loadScriptedModule(str(MODULE_FILE))
    representation = module.widgetRepresentation()
    widget = representation.self()
    representation.enter()
    assert widget.ui.inputVolumeSelector.currentNode() is volumeNode
    for name in MODELS:
        segment_with(widget, name)
        status = widget.ui.statusLabel.text
        result = widget._parameterNode.outputSegmentation
        assert result is not None and len(segmentIdsOf(result)) == 2, name  # the segmentation is created either way
        if EXPECTED[name] is None:
            assert status == "Done. Correct the result in Segment Editor if needed.", status
        else:
            assert status.startswith("Done, but check the result: ") and EXPECTED[name][len("warning: "):] in status, status
            assert "\n" not in status
        assert EXPECTED[name] is None or EXPECTED[name] in widget.ui.logTextEdit.plainText
    assert dialogs == []  # said in the panel, never as a modal error
    representation.exit()
    representation.unload()
