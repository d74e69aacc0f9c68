"""Edge refinement of segments, the boundary-uncertainty overlay and "next uncertain edge", on MRML.

Everything here runs on slicer-core (plain Python, no Qt, no ``slicer.mrmlScene``): nodes come in as
arguments and the scene is taken from them. The maths is the engine's (``e2miseg.edges``); this file
only turns segments and volumes into arrays on the source volume's grid and back.

>>> logic = EdgeRefineLogic()
>>> changed = logic.refineSegments(segmentationNode, volumeNode, ["Segment_1"], roiNode=roi)
>>> logic.undoLastRefinement()                   # puts the segments back as they were
>>> volume, regions = logic.showUncertainty(segmentationNode, volumeNode)
>>> ras = logic.nextUncertainEdge()              # centre of the next region to review (RAS mm)
>>> jumpSlicesToRas(volumeNode.GetScene(), ras)  # widget: move the slice views there
>>> logic.showOverlay(volume)                    # foreground layer of every slice view; hideOverlay(volume)
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from e2miseg.edges import EdgeOptions, box_mask_ijk, refine_label_array, refine_with_uncertainty, uncertain_regions
from e2miseg.edges.defaults import DEFAULT_STRENGTH, LEARNED_METHOD
from e2miseg.errors import E2MISegError

from .SegmentationImport import (LABEL_TAG, LPS_TO_RAS, exportSegmentsToArray, ijkToRas, maskToOrientedImage, segmentIdsOf,
                                 segmentTag, volumeNodeToImage)

UNCERTAINTY_COLOR_NAME = "E2MISeg uncertainty"
UNCERTAINTY_DISPLAY_THRESHOLD = 0.05  # below this the overlay is transparent: certain voxels hide nothing
UNCERTAINTY_OPACITY = 0.6  # foreground opacity: the image stays readable under the overlay


def segmentsToRefine(segmentationNode, selectedIds: Sequence[str]) -> list[str]:
    """The segments "Refine edges" acts on: the selected ones in the segmentation's order; all when none is selected."""
    allIds = segmentIdsOf(segmentationNode)
    if not allIds:
        raise E2MISegError(f"'{segmentationNode.GetName()}' has no segments; segment something first")
    selected = [str(s) for s in selectedIds]
    if not selected:
        return allIds
    chosen = [s for s in allIds if s in selected]
    if not chosen:  # a stale selection must not silently widen to every segment
        raise E2MISegError(f"the selected segments are no longer in '{segmentationNode.GetName()}'; select segments again")
    return chosen


def sourceVolumeFor(segmentationNode, fallbackVolume=None):
    """The image to refine against: the volume the segmentation was made on (its reference geometry),
    else ``fallbackVolume`` (the module's input volume)."""
    reference = segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())
    for volume in (reference, fallbackVolume):
        if (volume is not None and volume.IsA("vtkMRMLScalarVolumeNode") and not volume.IsA("vtkMRMLLabelMapVolumeNode")
                and volume.GetImageData() is not None and volume.GetScene() is segmentationNode.GetScene()):
            return volume
    raise E2MISegError(f"no image volume to refine '{segmentationNode.GetName()}' against; "
                       f"select the input volume it was made on")


def regionSegmentNames(segmentationNode, region: dict[str, Any]) -> list[str]:
    """Names of the two segments a region hesitates between ("" for background or an unknown label)."""
    segmentation = segmentationNode.GetSegmentation()
    if "segments" in region:  # computed from the segments: IDs
        segments = [segmentation.GetSegment(s) if s else None for s in region["segments"]]
    else:  # from the engine's map: label values of the model card, found through the segments' tags
        byValue = {segmentTag(segmentation.GetSegment(s), LABEL_TAG): segmentation.GetSegment(s)
                   for s in segmentIdsOf(segmentationNode)}
        segments = [byValue.get(str(v)) for v in region.get("labels", [])]
    return [segment.GetName() if segment is not None else "" for segment in segments]


UNKNOWN_LABEL = 255  # other segments without a model label: locked, and no class the refiner knows


def modelLabelValue(segmentationNode, segmentId: str, refiner) -> Optional[int]:
    """The model's label value of a segment (its E2MISeg tag; for a one-label model any segment), else None."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    tag = segmentTag(segment, LABEL_TAG)
    classes = refiner.network.num_classes
    if tag and str(tag).isdigit() and 0 < int(tag) < classes:
        return int(tag)
    return 1 if classes == 2 and not tag else None


def modelLabelMap(logic, segmentationNode, segmentIds: Sequence[str], volumeNode, scene, refiner) -> np.ndarray:
    """(k, j, i) uint8 map of ``segmentIds`` in the model's label values on the volume's grid (UNKNOWN_LABEL for
    segments without one)."""
    dims = volumeNode.GetImageData().GetDimensions()
    labels = np.zeros(dims[::-1], dtype=np.uint8)
    for segmentId in segmentIds:
        mask = exportSegmentsToArray(logic, segmentationNode, [segmentId], volumeNode, scene) > 0
        tag = segmentTag(segmentationNode.GetSegmentation().GetSegment(segmentId), LABEL_TAG)
        known = tag is not None and tag.isdigit() and 0 < int(tag) < refiner.network.num_classes
        labels[mask] = int(tag) if known else UNKNOWN_LABEL
    return labels


def jumpSlicesToRas(scene, ras: Sequence[float]) -> None:
    """Centre every slice view of ``scene`` on ``ras`` (mm). Works with or without the application."""
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, float(ras[0]), float(ras[1]), float(ras[2]),
                                          slicer.vtkMRMLSliceNode.CenteredJumpSlice)


def roiMaskOnVolume(roiNode, volumeNode) -> np.ndarray:
    """(k, j, i) mask of the volume's voxels whose centre is inside the (possibly rotated) markups ROI."""
    dims = volumeNode.GetImageData().GetDimensions()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in dims[::-1]), indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1)
    objectToWorld = roiNode.GetObjectToWorldMatrix()  # rotation and centre of the ROI box
    worldToObject = np.linalg.inv(np.array([[objectToWorld.GetElement(r, c) for c in range(4)] for r in range(4)]))
    inObject = ijk1 @ (worldToObject @ ijkToRas(volumeNode)).T
    halfSize = np.array(roiNode.GetSize()) / 2.0
    return np.all(np.abs(inObject[..., :3]) <= halfSize + 1e-6, axis=-1)


class EdgeRefineLogic:
    """Refine selected segments against the source volume; show and walk through uncertain edges."""

    def __init__(self, segmentationsLogic=None) -> None:
        self.segmentationsLogic = segmentationsLogic
        self.regions: list[dict[str, Any]] = []
        self.regionIndex = -1
        self._undoStack: list[tuple[Any, dict[str, Any]]] = []
        self._replacedForeground: dict[str, tuple[Optional[str], float]] = {}  # slice composite node ID -> before

    def _logicFor(self, scene):
        if self.segmentationsLogic is None:
            # without SetMRMLScene the converter rules are not registered (slicer-core caveat 2 in anchors.md)
            self.segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
            self.segmentationsLogic.SetMRMLScene(scene)
        return self.segmentationsLogic

    # ------------------------------------------------------------------ refinement

    def editableMask(self, volumeNode, roiNode=None, ijkBox: Optional[Sequence[float]] = None) -> Optional[np.ndarray]:
        """Where edits may happen: inside the ROI node and/or the IJK box (both if both are given)."""
        mask = None
        if roiNode is not None:
            mask = roiMaskOnVolume(roiNode, volumeNode)
        if ijkBox is not None:
            dims = volumeNode.GetImageData().GetDimensions()
            box = box_mask_ijk(tuple(dims[::-1]), list(ijkBox))
            mask = box if mask is None else mask & box
        if mask is not None and not mask.any():
            raise E2MISegError("the ROI does not overlap the source volume; move the ROI onto the image")
        return mask

    def refineSegments(self, segmentationNode, sourceVolumeNode, segmentIds: Sequence[str], roiNode=None,
                       ijkBox: Optional[Sequence[float]] = None, strength: Optional[float] = None,
                       method: Optional[str] = None, refiner=None) -> dict[str, int]:
        """Refine each segment's edges against ``sourceVolumeNode``; return changed voxels per segment.

        Only the listed segments change; every other segment keeps its voxels bit for bit, and the
        refined segment neither grows into them nor is cut by them. One undo state covers the call.

        ``refiner`` (the model's learned refiner, ``E2MISegLogic.modelRefiner``) is used, unless a
        classical ``method`` is asked for, on segments that carry one of the model's label values
        (segments the model made, or the only structure of a one-label model); others get the
        classical method.
        """
        scene = segmentationNode.GetScene()
        logic = self._logicFor(scene)
        image = volumeNodeToImage(sourceVolumeNode)
        guide = np.asarray(imageArray(image), dtype=np.float32)
        spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
        editable = self.editableMask(sourceVolumeNode, roiNode, ijkBox)
        options = EdgeOptions(strength=DEFAULT_STRENGTH if strength is None else strength,
                              **({"method": method} if method and method != LEARNED_METHOD else {}))
        allIds = segmentIdsOf(segmentationNode)
        missing = [s for s in segmentIds if s not in allIds]
        if missing:
            raise E2MISegError(f"segment(s) {', '.join(missing)} are not in '{segmentationNode.GetName()}'; pick existing segments")
        if scene is not None and scene.GetUndoFlag():
            segmentationNode.SetUndoEnabled(True)
            scene.SaveStateForUndo()
        matrix = ijkToRas(sourceVolumeNode)
        before: dict[str, Any] = {}
        changed: dict[str, int] = {}
        useLearned = refiner is not None and method in (None, LEARNED_METHOD)
        for segmentId in segmentIds:
            target = exportSegmentsToArray(logic, segmentationNode, [segmentId], sourceVolumeNode, scene) > 0
            others = [s for s in allIds if s != segmentId]
            value = modelLabelValue(segmentationNode, segmentId, refiner) if useLearned else None
            if value is not None:
                labels = modelLabelMap(logic, segmentationNode, others, sourceVolumeNode, scene, refiner)
                labels[target] = value  # the other segments are context for the refiner, and locked
                learned = EdgeOptions(method=LEARNED_METHOD, strength=options.strength, refiner=refiner)
                refined = refine_label_array(guide, labels, spacing, values=[value], editable=editable, options=learned) == value
            else:
                occupied = exportSegmentsToArray(logic, segmentationNode, others, sourceVolumeNode, scene) > 0 if others else None
                labels = target.astype(np.uint8)
                if occupied is not None:
                    labels[occupied & ~target] = 2  # locked: the refinement neither enters nor moves other segments
                classical = options if options.method != LEARNED_METHOD else EdgeOptions(strength=options.strength)
                refined = refine_label_array(guide, labels, spacing, values=[1], editable=editable, options=classical) == 1
            changed[segmentId] = int((refined != target).sum())
            if not changed[segmentId]:
                continue
            before[segmentId] = target
            ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                maskToOrientedImage(refined, matrix), segmentationNode, segmentId,
                slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None, False, [])
            if not ok:
                raise RuntimeError(f"could not write the refined voxels of segment '{segmentId}'")
        if before:
            self._undoStack.append((segmentationNode, {"matrix": matrix, "masks": before}))
        return changed

    def canUndoRefinement(self) -> bool:
        return any(node.GetScene() is not None for node, _ in self._undoStack)

    def undoLastRefinement(self) -> bool:
        """Put the segments of the last ``refineSegments`` call back; False if there is nothing to undo."""
        if not self._undoStack:
            return False
        segmentationNode, state = self._undoStack.pop()
        if segmentationNode.GetScene() is None:  # removed from the scene (or the scene closed) since
            return self.undoLastRefinement()
        for segmentId, mask in state["masks"].items():
            if segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
                continue  # the user deleted it since
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                maskToOrientedImage(mask, state["matrix"]), segmentationNode, segmentId,
                slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None, False, [])
        return True

    # ------------------------------------------------------------------ uncertainty

    def computeUncertainty(self, segmentationNode, sourceVolumeNode, segmentIds: Optional[Sequence[str]] = None,
                           strength: Optional[float] = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Boundary uncertainty (k, j, i) of the segments against the image, and ranked regions.

        Used when no network probabilities exist (a drawn or edited segmentation): the refinement's
        own class probabilities are scored, nothing in the segmentation changes.
        """
        scene = segmentationNode.GetScene()
        logic = self._logicFor(scene)
        ids = list(segmentIds) if segmentIds else segmentIdsOf(segmentationNode)
        if not ids:
            raise E2MISegError(f"'{segmentationNode.GetName()}' has no segments; segment something first")
        labels = exportSegmentsToArray(logic, segmentationNode, ids, sourceVolumeNode, scene).astype(np.int32)
        image = volumeNodeToImage(sourceVolumeNode)
        guide = np.asarray(imageArray(image), dtype=np.float32)
        spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
        options = EdgeOptions(strength=DEFAULT_STRENGTH if strength is None else max(strength, 1e-3))
        _, uncertainty = refine_with_uncertainty(guide, labels, spacing, options=options)
        reference = image
        regions = uncertain_regions(uncertainty, labels, None, reference, band_mm=None)
        for region in regions:  # label values of the export -> segment IDs, for the widget's list
            region["segments"] = [ids[v - 1] if 0 < v <= len(ids) else "" for v in region["labels"]]
        return uncertainty, regions

    def showUncertainty(self, segmentationNode, sourceVolumeNode, segmentIds: Optional[Sequence[str]] = None,
                        volumeNode=None):
        """Compute the uncertainty and put it in a volume node with its own colour node; return (node, regions).

        The node is reused when given. Making it the foreground layer is the widget's job.
        """
        uncertainty, regions = self.computeUncertainty(segmentationNode, sourceVolumeNode, segmentIds)
        node = self.uncertaintyVolume(sourceVolumeNode.GetScene(), uncertainty, ijkToRas(sourceVolumeNode), volumeNode,
                                      f"{segmentationNode.GetName()} uncertainty")
        self.setRegions(regions)
        return node, regions

    def loadUncertainty(self, scene, path: str, volumeNode=None):
        """Load an engine uncertainty map (``--uncertainty OUT``) and its ``.regions.json``; return (node, regions)."""
        import SimpleITK as sitk

        from .SegmentationImport import imageIjkToRas

        image = sitk.ReadImage(str(path))
        node = self.uncertaintyVolume(scene, sitk.GetArrayFromImage(image).astype(np.float32), imageIjkToRas(image), volumeNode,
                                      os.path.basename(str(path)).split(".")[0])
        regions = readRegions(regionsPathFor(str(path)))
        self.setRegions(regions)
        return node, regions

    def uncertaintyVolume(self, scene, uncertainty_kji: np.ndarray, ijkToRasMatrix: np.ndarray, volumeNode=None,
                          name: str = "uncertainty"):
        """A scalar volume of the map with a display node using the uncertainty colour node."""
        if volumeNode is None:
            volumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
        imageData = vtk.vtkImageData()
        imageData.SetDimensions(uncertainty_kji.shape[2], uncertainty_kji.shape[1], uncertainty_kji.shape[0])
        imageData.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
            np.ascontiguousarray(uncertainty_kji, dtype=np.float32).ravel(), deep=True, array_type=vtk.VTK_FLOAT))
        volumeNode.SetAndObserveImageData(imageData)
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(ijkToRasMatrix[r, c]))
        volumeNode.SetIJKToRASMatrix(matrix)
        displayNode = volumeNode.GetDisplayNode()
        if displayNode is None:
            displayNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
            volumeNode.SetAndObserveDisplayNodeID(displayNode.GetID())
        displayNode.SetAndObserveColorNodeID(uncertaintyColorNode(scene).GetID())
        displayNode.SetAutoWindowLevel(False)
        displayNode.SetWindowLevelMinMax(0.0, 1.0)
        displayNode.SetLowerThreshold(UNCERTAINTY_DISPLAY_THRESHOLD)
        displayNode.SetUpperThreshold(1.0)
        displayNode.SetApplyThreshold(True)
        return volumeNode

    def showOverlay(self, volumeNode, opacity: float = UNCERTAINTY_OPACITY) -> int:
        """Make ``volumeNode`` the foreground layer of every slice view; return how many views show it.

        What each view showed before is remembered and put back by ``hideOverlay``.
        """
        views = 0
        for composite in _sliceCompositeNodes(volumeNode.GetScene()):
            if composite.GetForegroundVolumeID() != volumeNode.GetID():
                self._replacedForeground[composite.GetID()] = (composite.GetForegroundVolumeID(),
                                                               composite.GetForegroundOpacity())
            composite.SetForegroundVolumeID(volumeNode.GetID())
            composite.SetForegroundOpacity(opacity)
            views += 1
        return views

    def hideOverlay(self, volumeNode) -> None:
        """Take ``volumeNode`` out of the slice views' foreground and put back what was there before."""
        scene = volumeNode.GetScene()
        for composite in _sliceCompositeNodes(scene):
            replaced = self._replacedForeground.pop(composite.GetID(), (None, 0.0))
            if composite.GetForegroundVolumeID() != volumeNode.GetID():
                continue  # the user chose another foreground meanwhile: keep theirs
            previous = replaced[0] if replaced[0] and scene.GetNodeByID(replaced[0]) is not None else None
            composite.SetForegroundVolumeID(previous)
            composite.SetForegroundOpacity(replaced[1] if previous else 0.0)

    # ------------------------------------------------------------------ review

    def setRegions(self, regions: list[dict[str, Any]]) -> None:
        self.regions = list(regions)
        self.regionIndex = -1

    def nextUncertainEdge(self) -> Optional[tuple[float, float, float]]:
        """RAS centre (mm) of the next uncertain region, most uncertain first, wrapping; None if none."""
        if not self.regions:
            return None
        self.regionIndex = (self.regionIndex + 1) % len(self.regions)
        return regionCentreRas(self.regions[self.regionIndex])

    def jumpToNextUncertainEdge(self, scene) -> Optional[tuple[float, float, float]]:
        """The "next uncertain edge" button: centre the slice views on the next region; return its RAS."""
        ras = self.nextUncertainEdge()
        if ras is not None:
            jumpSlicesToRas(scene, ras)
        return ras

    def currentRegion(self) -> Optional[dict[str, Any]]:
        return self.regions[self.regionIndex] if self.regions and self.regionIndex >= 0 else None


def _sliceCompositeNodes(scene) -> list:
    if scene is None:
        return []
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def regionCentreRas(region: dict[str, Any]) -> tuple[float, float, float]:
    lps = np.array(list(region["centroid_lps_mm"]) + [1.0])
    ras = LPS_TO_RAS @ lps
    return float(ras[0]), float(ras[1]), float(ras[2])


def regionsPathFor(uncertaintyPath: str) -> str:
    from e2miseg.io import suffix_of

    suffix = suffix_of(uncertaintyPath)
    return (uncertaintyPath[: -len(suffix)] if suffix else uncertaintyPath) + ".regions.json"


def readRegions(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return list(json.load(handle).get("regions", []))


def uncertaintyColorNode(scene):
    """The shared colour table of uncertainty overlays: transparent when certain, yellow to red when not."""
    existing = scene.GetFirstNodeByName(UNCERTAINTY_COLOR_NAME)
    if existing is not None:
        return existing
    colorNode = slicer.vtkMRMLColorTableNode()
    colorNode.SetName(UNCERTAINTY_COLOR_NAME)
    colorNode.SetTypeToUser()
    colorNode.SetNumberOfColors(256)
    colorNode.SetHideFromEditors(False)
    for index in range(256):
        t = index / 255.0
        # yellow (unsure between two labels) to red (unsure between many); opacity rises with uncertainty
        colorNode.SetColor(index, 1.0, 1.0 - 0.8 * t, 0.1 * (1.0 - t), min(1.0, 0.25 + t))
    colorNode.SetColor(0, 0.0, 0.0, 0.0, 0.0)
    scene.AddNode(colorNode)
    return colorNode


def imageArray(image) -> np.ndarray:
    """Voxels (k, j, i) of a SimpleITK image as numpy (a copy SimpleITK owns no longer)."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)
