"""Smoke test of the E2MISeg extension in a real 3D Slicer (5.10 or later). Exits non-zero on any error.

It cannot run without a Slicer application (so not on the project's test machines); CI runs it in
.github/workflows/slicer-smoke.yml. From a checkout, with a local Slicer:

  # once per Slicer install: the PyTorch extension, a CPU torch and the engine's packages
  Slicer --no-main-window --python-script Testing/SlicerApp/prepare.py
  # the smoke test itself
  Slicer --no-main-window --additional-module-paths E2MISegModule E2MISegModule/SegmentEditorE2MISegEdgeRefine \\
         --python-script Testing/SlicerApp/smoke.py

What it does, as a user would: load the bundled sample volume, open the E2MISeg module, run Segment on
the CPU through the widget's own button handler, check the segments and their names, then select the
"E2MISeg edge refine" effect in a Segment Editor and apply one stroke across a segment's edge.
"""
import os
import time
import traceback

import slicer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_DIR = os.path.join(ROOT, "E2MISegModule")
SAMPLE = os.path.join(MODULE_DIR, "Resources", "SampleData", "hippocampus_008.nii.gz")
MODEL = "e2miseg-hippocampus"
EFFECT_NAME = "E2MISeg edge refine"
RUN_TIMEOUT_S = 600


def log(message):
    print(f"[e2miseg smoke] {message}", flush=True)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def waitFor(condition, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not condition():
        check(time.monotonic() < deadline, f"timed out waiting for {what}")
        slicer.app.processEvents()  # the widget's QTimer polls the run from the event loop
        time.sleep(0.05)


def segmentWithTheModule(errors):
    volume = slicer.util.loadVolume(SAMPLE)
    log(f"loaded {volume.GetName()} {volume.GetImageData().GetDimensions()}")
    representation = slicer.modules.e2misegmodule.widgetRepresentation()  # the panel, built by setup()
    check(representation is not None, "the E2MISeg module has no panel")
    representation.enter()  # what selecting the module does
    widget = slicer.util.getModuleWidget("E2MISegModule")
    logic = slicer.util.getModuleLogic("E2MISegModule")
    ui = widget.ui
    ui.inputVolumeSelector.setCurrentNode(volume)
    names = [ui.modelSelector.itemText(i) for i in range(ui.modelSelector.count)]
    check(MODEL in names, f"bundled model {MODEL} not offered (offered: {names})")
    ui.modelSelector.currentIndex = names.index(MODEL)
    parameters = widget._parameterNode
    parameters.device = type(parameters.device)("cpu")
    parameters.quality = type(parameters.quality)("fast")
    check(ui.segmentButton.enabled, "Segment is disabled with a volume and a model selected")

    widget.onSegmentButton()  # the Segment button's own handler (exceptions reach this script)
    check(widget.task is not None, f"no run started: {ui.statusLabel.text}")
    log("segmenting on the CPU ...")
    waitFor(lambda: widget.task is None, RUN_TIMEOUT_S, "the Segment run")
    check(not errors, f"the module showed errors: {errors}")
    check(ui.statusLabel.text.startswith("Done"), f"status after the run: {ui.statusLabel.text!r}")
    segmentationNode = logic.getParameterNode().outputSegmentation
    check(segmentationNode is not None, "no output segmentation in the parameter node")
    card = logic.modelCard(MODEL)[1]
    segmentation = segmentationNode.GetSegmentation()
    got = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    wanted = [label["name"] for label in card["labels"]]
    check(got == wanted, f"segments {got}, expected {wanted}")
    for name in wanted:
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentation.GetSegmentIdBySegmentName(name), volume)
        check(voxels.any(), f"segment {name} is empty")
        log(f"segment {name}: {int(voxels.sum())} voxels")
    representation.exit()
    return volume, segmentationNode


def strokeWithTheEffect(volume, segmentationNode):
    import numpy as np
    import vtk

    def registered():
        return [effect.name for effect in slicer.qSlicerSegmentEditorEffectFactory.instance().registeredEffects()]

    waitFor(lambda: EFFECT_NAME in registered(), 30, "the effect's registration at startupCompleted")
    editor = slicer.qMRMLSegmentEditorWidget()
    editor.setMRMLScene(slicer.mrmlScene)
    editor.setMRMLSegmentEditorNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
    editor.setSegmentationNode(segmentationNode)
    editor.setSourceVolumeNode(volume)
    segmentId = segmentationNode.GetSegmentation().GetNthSegmentID(0)
    editor.setCurrentSegmentID(segmentId)
    editor.setActiveEffectByName(EFFECT_NAME)
    check(editor.activeEffect() is not None and editor.activeEffect().name == EFFECT_NAME, "the effect could not be selected")
    effect = editor.activeEffect().self()

    # one stroke along the segment's edge: through its centre line, at its outermost column in i
    before = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume).copy()
    k, j, i = np.nonzero(before)
    edgeI, midK = float(i.max()), float(np.median(k))
    ijkToRas = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijkToRas)
    stroke = np.array([ijkToRas.MultiplyPoint([edgeI, float(jj), midK, 1.0])[:3]
                       for jj in np.linspace(j.min(), j.max(), 5)])
    changed = effect.applyStroke(stroke)
    after = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volume)
    check(isinstance(changed, int) and changed >= 0, f"applyStroke returned {changed!r}")
    far = np.abs(np.arange(before.shape[0]) - midK) > 10  # beyond the 5 mm brush, whatever the spacing here
    check(np.array_equal(after[far], before[far]), "the stroke changed voxels far from it")
    log(f"stroke applied with '{EFFECT_NAME}': {changed} voxels changed")


def main():
    errors = []
    slicer.util.errorDisplay = lambda text, *args, **kwargs: errors.append(text)  # a dialog would block CI
    check(slicer.app.majorVersion * 100 + slicer.app.minorVersion >= 510, "this smoke test needs Slicer 5.10 or later")
    check(hasattr(slicer.modules, "e2misegmodule"), "the E2MISeg module did not load (see the log above)")
    volume, segmentationNode = segmentWithTheModule(errors)
    strokeWithTheEffect(volume, segmentationNode)
    log("PASSED")


# Slicer runs the file in its __main__ namespace (qSlicerCoreApplication -> CTK's ctkAbstractPythonManager::
# executeFile: exec(open(file).read(), globals())); Testing/test_slicer_app_contract.py imports it instead
if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        log("FAILED")
        slicer.util.exit(1)
    else:
        slicer.util.exit(0)
