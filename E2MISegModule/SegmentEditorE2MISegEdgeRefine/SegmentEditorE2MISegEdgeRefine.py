"""Hidden module that registers the "E2MISeg edge refine" Segment Editor effect at Slicer startup."""
import os

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class SegmentEditorE2MISegEdgeRefine(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("E2MISeg edge refine effect")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["E2MISeg developers"]
        self.parent.hidden = True
        self.parent.helpText = _("Registers the 'E2MISeg edge refine' effect in the Segment Editor: paint over an edge "
                                 "and the selected segment's boundary there is refined against the image.")
        self.parent.acknowledgementText = ""
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

        instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
        effectFilename = os.path.join(os.path.dirname(__file__), self.__class__.__name__ + "Lib/SegmentEditorEffect.py")
        instance.setPythonSource(effectFilename.replace("\\", "/"))
        instance.self().register()


class SegmentEditorE2MISegEdgeRefineTest(ScriptedLoadableModuleTest):
    """Runs in the Slicer application (CTest): a stroke on a sample volume refines only the selected segment."""

    def runTest(self):
        from SegmentEditorE2MISegEdgeRefineLib.SegmentEditorEffect import selfTestStroke

        slicer.mrmlScene.Clear(0)
        selfTestStroke(self)
