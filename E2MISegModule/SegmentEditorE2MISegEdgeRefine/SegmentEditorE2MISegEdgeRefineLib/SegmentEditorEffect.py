"""Segment Editor effect "E2MISeg edge refine": paint over an edge, the selected segment snaps to the image there.

The stroke defines where the boundary may move (a tube of the brush radius around the painted
line); inside it the engine's edge refinement decides which voxels join or leave the segment.
The change is written with the editor's own modifySelectedSegmentByLabelmap, so the masking
settings (editable area, intensity range, overwriting other segments) and undo apply as for Paint.
"""
import os

import numpy as np
import qt
import slicer
import vtk
from slicer.i18n import tr as _
from vtk.util import numpy_support

from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

# Slicer loads this file as a plain module named after its folder, "SegmentEditorE2MISegEdgeRefineLib"
# (qSlicerSegmentEditorScriptedEffect::setPythonSource -> qSlicerScriptedUtils::loadSourceAsModule, v5.10.0):
# that name is no package, so nothing may be imported from this folder. The arithmetic is the engine's
# (e2miseg.edges.refine_under_stroke), imported on the first stroke: it needs scipy, which a fresh Slicer
# lacks until the user accepts E2MISeg's packages, and the effect must register before that.

DEFAULT_STRENGTH = 0.6  # a stroke is a deliberate "this edge is wrong": stronger than the automatic default
DEFAULT_RADIUS_MM = 5.0


def refineUnderStroke():
    """The engine's stroke refinement; asks to install E2MISeg's Python packages when they are missing."""
    try:
        from e2miseg.edges import refine_under_stroke
    except ImportError:
        from E2MISegModuleLib.Install import ensurePackages

        moduleDir = os.path.dirname(slicer.modules.e2misegmodule.path)
        ensurePackages(os.path.join(moduleDir, "Resources", "requirements.txt"))
        from e2miseg.edges import refine_under_stroke
    return refine_under_stroke


def orientedToArray(image) -> np.ndarray:
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])


def fillOriented(image, mask: np.ndarray) -> None:
    """Write a (k, j, i) 0/1 mask into an oriented image of the same dimensions."""
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(mask, dtype=np.uint8).ravel(),
                                                               deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    image.Modified()


class StrokeFeedback:
    """The painted line drawn in one slice view while the mouse is down."""

    def __init__(self, scriptedEffect, sliceWidget):
        self.sliceWidget = sliceWidget
        self.rasPoints = vtk.vtkPoints()
        self.xyPoints = vtk.vtkPoints()
        self.polyData = vtk.vtkPolyData()
        self.polyData.SetPoints(self.xyPoints)
        self.polyData.SetLines(vtk.vtkCellArray())
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputData(self.polyData)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(0.2, 0.9, 1.0)
        self.actor.GetProperty().SetOpacity(0.7)
        self.actor.GetProperty().SetLineWidth(4)
        scriptedEffect.addActor2D(sliceWidget, self.actor)

    def addPoint(self, ras) -> None:
        index = self.rasPoints.InsertNextPoint(ras)
        if index > 0:
            line = vtk.vtkIdList()
            line.InsertNextId(index - 1)
            line.InsertNextId(index)
            self.polyData.InsertNextCell(vtk.VTK_LINE, line)
        self.update()

    def update(self) -> None:
        rasToXy = vtk.vtkTransform()
        rasToXy.SetMatrix(self.sliceWidget.sliceLogic().GetSliceNode().GetXYToRAS())
        rasToXy.Inverse()
        self.xyPoints.Reset()
        rasToXy.TransformPoints(self.rasPoints, self.xyPoints)
        self.polyData.Modified()
        self.sliceWidget.sliceView().scheduleRender()

    def reset(self) -> None:
        self.rasPoints.Reset()
        self.xyPoints.Reset()
        self.polyData.GetLines().Initialize()
        self.polyData.Modified()
        self.sliceWidget.sliceView().scheduleRender()


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Paint-to-refine: the selected segment's edge follows the image inside the painted stroke."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "E2MISeg edge refine"  # the name setActiveEffectByName finds
        scriptedEffect.title = _("E2MISeg edge refine")
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.feedback = {}
        self.painting = None  # the slice widget being painted in

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "../Resources/Icons/SegmentEditorE2MISegEdgeRefine.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return "<html>" + _("Refine the selected segment's edge where you paint.<br>"
                            "<p><b>Left-drag</b> in a slice view along a wrong edge: when you release, the boundary under "
                            "the stroke moves to the image's edge. The region is a tube of the brush radius around "
                            "the stroke, in 3D (neighbouring slices within the radius are included). Elsewhere "
                            "nothing changes. Masking settings and undo apply as for Paint.</p>") + "</html>"

    def setupOptionsFrame(self):
        import ctk

        self.radiusSlider = ctk.ctkSliderWidget()
        self.radiusSlider.setToolTip(_("Half-width of the painted region: how far from the stroke the edge may move."))
        self.radiusSlider.minimum, self.radiusSlider.maximum, self.radiusSlider.singleStep = 1.0, 30.0, 0.5
        self.radiusSlider.suffix = " mm"
        self.scriptedEffect.addLabeledOptionsWidget(_("Brush radius:"), self.radiusSlider)
        self.strengthSlider = ctk.ctkSliderWidget()
        self.strengthSlider.setToolTip(_("How strongly the image pulls the edge (0 = off, 1 = strongest)."))
        self.strengthSlider.minimum, self.strengthSlider.maximum, self.strengthSlider.singleStep = 0.0, 1.0, 0.05
        self.scriptedEffect.addLabeledOptionsWidget(_("Strength:"), self.strengthSlider)
        self.radiusSlider.connect("valueChanged(double)", self.updateMRMLFromGUI)
        self.strengthSlider.connect("valueChanged(double)", self.updateMRMLFromGUI)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("BrushRadiusMm", DEFAULT_RADIUS_MM)
        self.scriptedEffect.setParameterDefault("Strength", DEFAULT_STRENGTH)

    def updateGUIFromMRML(self):
        for slider, name in ((self.radiusSlider, "BrushRadiusMm"), (self.strengthSlider, "Strength")):
            wasBlocked = slider.blockSignals(True)
            slider.value = self.scriptedEffect.doubleParameter(name)
            slider.blockSignals(wasBlocked)

    def updateMRMLFromGUI(self):
        self.scriptedEffect.setParameter("BrushRadiusMm", self.radiusSlider.value)
        self.scriptedEffect.setParameter("Strength", self.strengthSlider.value)

    def deactivate(self):
        for sliceWidget, feedback in self.feedback.items():
            self.scriptedEffect.removeActor2D(sliceWidget, feedback.actor)
        self.feedback = {}
        self.painting = None

    def feedbackFor(self, sliceWidget):
        if sliceWidget not in self.feedback:
            self.feedback[sliceWidget] = StrokeFeedback(self.scriptedEffect, sliceWidget)
        return self.feedback[sliceWidget]

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        anyModifier = callerInteractor.GetShiftKey() or callerInteractor.GetControlKey() or callerInteractor.GetAltKey()
        if eventId == vtk.vtkCommand.LeftButtonPressEvent and not anyModifier:
            confirmed = self.scriptedEffect.confirmCurrentSegmentVisible()
            if confirmed in (self.scriptedEffect.NotConfirmed, self.scriptedEffect.ConfirmedWithDialog):
                return False  # the mouse moved to the dialog: the user clicks again to paint
            self.painting = viewWidget
            self.scriptedEffect.cursorOff(viewWidget)
            self.feedbackFor(viewWidget).addPoint(self.xyToRas(callerInteractor.GetEventPosition(), viewWidget))
            return True
        if eventId == vtk.vtkCommand.MouseMoveEvent and self.painting == viewWidget:
            self.feedbackFor(viewWidget).addPoint(self.xyToRas(callerInteractor.GetEventPosition(), viewWidget))
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent and self.painting == viewWidget:
            feedback = self.feedbackFor(viewWidget)
            points = [feedback.rasPoints.GetPoint(i) for i in range(feedback.rasPoints.GetNumberOfPoints())]
            self.painting = None
            self.scriptedEffect.cursorOn(viewWidget)
            with slicer.util.tryWithErrorDisplay(_("Edge refinement failed."), waitCursor=True):
                self.applyStroke(np.array(points))
            feedback.reset()
            return True
        return False

    def applyStroke(self, strokeRas: np.ndarray) -> int:
        """Refine the selected segment inside the stroke (RAS points, mm); return the voxels changed."""
        if len(strokeRas) == 0:
            return 0
        modifier = self.scriptedEffect.defaultModifierLabelmap()  # the segmentation's grid, zero-filled
        sourceImage = self.scriptedEffect.sourceVolumeImageData()
        segmentImage = self.scriptedEffect.selectedSegmentLabelmap()
        if sourceImage is None or segmentImage is None:
            raise ValueError(_("Select a source volume and a segment first."))
        source = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(sourceImage, modifier, source, True)
        segment = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(segmentImage, modifier, segment, False)
        worldToImage = vtk.vtkMatrix4x4()
        modifier.GetWorldToImageMatrix(worldToImage)
        strokeIjk = [worldToImage.MultiplyPoint(list(p) + [1.0])[:3] for p in strokeRas]
        extent = modifier.GetExtent()
        segmentArray = orientedToArray(segment)
        add, remove = refineUnderStroke()(orientedToArray(source), segmentArray > 0, np.array(strokeIjk),
                                          (extent[0], extent[2], extent[4]), modifier.GetSpacing(),
                                          self.scriptedEffect.doubleParameter("BrushRadiusMm"),
                                          self.scriptedEffect.doubleParameter("Strength"))
        if not add.any() and not remove.any():
            return 0
        self.scriptedEffect.saveStateForUndo()
        mode = slicer.qSlicerSegmentEditorAbstractEffect
        if add.any():
            fillOriented(modifier, add)
            self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, mode.ModificationModeAdd)
        if remove.any():
            modifier = self.scriptedEffect.defaultModifierLabelmap()
            fillOriented(modifier, remove)
            self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, mode.ModificationModeRemove)
        return int(add.sum() + remove.sum())

