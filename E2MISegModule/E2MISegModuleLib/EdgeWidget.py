"""The module widget's Edges section (application only: Qt, dialogs).

"Refine edges" / "Undo refinement" for the selected segments of the output segmentation (optionally
inside an ROI; with the selected model's learned boundary refiner when it has one, else the classical method), the boundary-uncertainty overlay as the slice views' foreground, and "Next uncertain
edge". The work is done on MRML by ``EdgeRefineLogic`` (tested on slicer-core); this class reads the
controls, calls it, and says what happened.
"""
from __future__ import annotations

from pathlib import Path

import slicer
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin


class EdgeWidget(VTKObservationMixin):
    """Connects the Edges controls of E2MISegModule.ui to ``logic.edgeLogic``.

    The overlay comes from the network when the last Segment run was asked for it (the checkbox was
    on), otherwise it is computed from the current segments against the image, so it also works on
    an edited or loaded segmentation.
    """

    def __init__(self, ui, logic, requirementsPath) -> None:
        VTKObservationMixin.__init__(self)
        self.ui = ui
        self.logic = logic  # E2MISegLogic; its edgeLogic keeps the undo states and the regions to review
        self.requirementsPath = Path(requirementsPath)  # Install.ensurePackages reads it as a Path
        self.parameterNode = None
        self.networkOverlay = None  # (volume node, segmentation node, regions) of the last run that made one
        self.computedOverlay = None  # volume node reused for maps computed from the segments
        self.shownOverlay = None
        self.reviewSegmentation = None  # the segmentation whose regions "Next uncertain edge" walks through
        self.canUndo = False
        ui.refineEdgesButton.clicked.connect(self.onRefineEdges)
        ui.undoRefinementButton.clicked.connect(self.onUndoRefinement)
        ui.showUncertaintyCheckBox.toggled.connect(self.onShowUncertainty)
        ui.nextUncertainEdgeButton.clicked.connect(self.onNextUncertainEdge)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        if not logic.engineSupportsEdgeRefinement():  # engines before edge refinement (issue 6)
            for widget in (ui.refineEdgesLabel, ui.refineEdgesCheckBox, ui.edgeStrengthLabel, ui.edgeStrengthSpinBox):
                widget.hide()

    def cleanup(self) -> None:
        self.removeObservers()

    def onSceneEndClose(self, caller=None, event=None) -> None:
        self.networkOverlay = self.computedOverlay = self.shownOverlay = self.reviewSegmentation = None
        self.canUndo = False
        wasBlocked = self.ui.showUncertaintyCheckBox.blockSignals(True)
        self.ui.showUncertaintyCheckBox.checked = False
        self.ui.showUncertaintyCheckBox.blockSignals(wasBlocked)
        self.ui.edgeStatusLabel.text = ""

    def edgeLogic(self):
        try:
            return self.logic.edgeLogic
        except ImportError:  # scipy comes with the engine's packages: installed after asking (no torch needed)
            from .Install import ensurePackages

            ensurePackages(self.requirementsPath)
            return self.logic.edgeLogic

    def updateGUI(self, parameterNode, running: bool = False) -> None:
        self.parameterNode = parameterNode
        segmentation = parameterNode.outputSegmentation if parameterNode else None
        if self.ui.edgeSegmentsTableView.segmentationNode() is not segmentation:
            self.ui.edgeSegmentsTableView.setSegmentationNode(segmentation)
        self.ui.edgesCollapsibleButton.enabled = not running
        self.ui.edgeStrengthSpinBox.enabled = bool(parameterNode and parameterNode.refineEdges)
        for widget in (self.ui.refineEdgesButton, self.ui.showUncertaintyCheckBox, self.ui.nextUncertainEdgeButton):
            widget.enabled = segmentation is not None
        self.ui.undoRefinementButton.enabled = self.canUndo

    def runOptions(self) -> dict:
        """Extra arguments of ``logic.process``: the network's uncertainty map when the overlay is wanted."""
        previous = self.networkOverlay[0] if self.networkOverlay and self.networkOverlay[0].GetScene() else None
        return {"uncertainty": bool(self.ui.showUncertaintyCheckBox.checked), "uncertaintyVolume": previous}

    def onSegmentationDone(self, task) -> None:
        """After a Segment run: keep its uncertainty map (if it made one) and show it when asked for."""
        if task.uncertaintyVolume is None or task.segmentationNode is None:
            return
        self.networkOverlay = (task.uncertaintyVolume, task.segmentationNode, list(self.logic.edgeLogic.regions))
        self.reviewSegmentation = task.segmentationNode
        if self.ui.showUncertaintyCheckBox.checked:
            self._show(task.uncertaintyVolume)
            self._describeRegions()

    # ---- refinement ------------------------------------------------------------------------

    def _segmentation(self):
        segmentation = self.parameterNode.outputSegmentation if self.parameterNode else None
        if segmentation is None:
            raise ValueError(_("Select a segmentation under Outputs (or run Segment) first."))
        return segmentation

    def onRefineEdges(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not refine the edges."), waitCursor=True):
            edgeLogic = self.edgeLogic()
            from .EdgeRefineLogic import segmentsToRefine, sourceVolumeFor

            segmentation = self._segmentation()
            segmentIds = segmentsToRefine(segmentation, self.ui.edgeSegmentsTableView.selectedSegmentIDs())
            roi = self.parameterNode.edgeRoi
            volume = sourceVolumeFor(segmentation, self.parameterNode.inputVolume)
            # the selected model's learned refiner when it has one (classical refinement otherwise)
            refiner = self.logic.modelRefiner(self.parameterNode.model) if self.parameterNode.model else None
            changed = edgeLogic.refineSegments(segmentation, volume, segmentIds, roiNode=roi,
                                               strength=self.parameterNode.refineStrength, refiner=refiner)
            names = ", ".join(segmentation.GetSegmentation().GetSegment(s).GetName() for s in segmentIds)
            where = _(" inside {roi}").format(roi=roi.GetName()) if roi else ""
            self.ui.edgeStatusLabel.text = _("Refined {segments}{where}: {voxels} voxels changed.").format(
                segments=names, where=where, voxels=sum(changed.values()))
            self.canUndo = edgeLogic.canUndoRefinement()
            self._segmentsChanged()
        self.updateGUI(self.parameterNode)

    def onUndoRefinement(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not undo the refinement."), waitCursor=True):
            edgeLogic = self.edgeLogic()
            undone = edgeLogic.undoLastRefinement()
            self.ui.edgeStatusLabel.text = _("Refinement undone.") if undone else _("Nothing to undo.")
            self.canUndo = edgeLogic.canUndoRefinement()
            self._segmentsChanged()
        self.updateGUI(self.parameterNode)

    def _segmentsChanged(self) -> None:
        """A map computed from the segments is out of date once they change; the network's map is not."""
        if self.shownOverlay is not None and self.shownOverlay is self.computedOverlay:
            self._show(self._prepareOverlay(self._segmentation()))
        elif self.reviewSegmentation is not None and not self._isNetworkReview():
            self.reviewSegmentation = None

    # ---- uncertainty ---------------------------------------------------------------------------

    def _isNetworkReview(self) -> bool:
        return bool(self.networkOverlay and self.networkOverlay[1] is self.reviewSegmentation)

    def _prepareOverlay(self, segmentation):
        """The uncertainty volume of ``segmentation``; its regions become the ones to review."""
        edgeLogic = self.edgeLogic()
        if self.networkOverlay and self.networkOverlay[1] is segmentation and self.networkOverlay[0].GetScene():
            volume, _segmentation, regions = self.networkOverlay
            edgeLogic.setRegions(regions)
        else:
            from .EdgeRefineLogic import sourceVolumeFor

            reuse = self.computedOverlay if self.computedOverlay is not None and self.computedOverlay.GetScene() else None
            source = sourceVolumeFor(segmentation, self.parameterNode.inputVolume)
            volume, _regions = edgeLogic.showUncertainty(segmentation, source, volumeNode=reuse)
            self.computedOverlay = volume
        self.reviewSegmentation = segmentation
        return volume

    def _show(self, volume) -> None:
        if self.shownOverlay is not None and self.shownOverlay is not volume and self.shownOverlay.GetScene():
            self.logic.edgeLogic.hideOverlay(self.shownOverlay)
        self.logic.edgeLogic.showOverlay(volume)
        self.shownOverlay = volume

    def onShowUncertainty(self, show: bool) -> None:
        if not show:
            if self.shownOverlay is not None and self.shownOverlay.GetScene():
                self.logic.edgeLogic.hideOverlay(self.shownOverlay)
            self.shownOverlay = None
            return
        shown = False
        with slicer.util.tryWithErrorDisplay(_("Could not show the boundary uncertainty."), waitCursor=True):
            self._show(self._prepareOverlay(self._segmentation()))
            self._describeRegions()
            shown = True
        if not shown:
            wasBlocked = self.ui.showUncertaintyCheckBox.blockSignals(True)
            self.ui.showUncertaintyCheckBox.checked = False
            self.ui.showUncertaintyCheckBox.blockSignals(wasBlocked)

    def _describeRegions(self) -> None:
        count = len(self.logic.edgeLogic.regions)
        self.ui.edgeStatusLabel.text = _("{count} uncertain edge region(s); Next uncertain edge visits them, most "
                                         "uncertain first.").format(count=count) if count else \
            _("No uncertain edges found.")

    def onNextUncertainEdge(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not go to the next uncertain edge."), waitCursor=True):
            segmentation = self._segmentation()
            edgeLogic = self.edgeLogic()
            if self.reviewSegmentation is not segmentation:
                volume = self._prepareOverlay(segmentation)
                if self.ui.showUncertaintyCheckBox.checked:
                    self._show(volume)
            if edgeLogic.jumpToNextUncertainEdge(slicer.mrmlScene) is None:
                self.ui.edgeStatusLabel.text = _("No uncertain edges found.")
                return
            from .EdgeRefineLogic import regionSegmentNames

            region = edgeLogic.currentRegion()
            names = [name or _("background") for name in regionSegmentNames(segmentation, region)]
            self.ui.edgeStatusLabel.text = _("Uncertain edge {index} of {count}: {segments}, {volume:.0f} mm³.").format(
                index=edgeLogic.regionIndex + 1, count=len(edgeLogic.regions), segments=" / ".join(names),
                volume=region.get("volume_mm3", 0.0))
