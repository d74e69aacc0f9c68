"""Volume nodes to engine images and engine label maps to segments, geometry carried exactly.

Slicer works in RAS, files and SimpleITK in LPS: the two differ by a sign flip of the first two
axes, applied here once in each direction (``LPS_TO_RAS``). Only MRML classes from slicer-core and
VTK are used, so this runs in plain Python as well as inside Slicer.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from e2miseg.errors import InputImageError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MODEL_TAG = "e2miseg.model"  # "<model name>-<version>", as the engine writes it into .seg.nrrd files
LABEL_TAG = "e2miseg.labelValue"
TERMINOLOGY_TAG = "TerminologyEntry"
GEOMETRY_TOLERANCE = 1e-4


def _matrixToArray(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _arrayToMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijkToRas(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _matrixToArray(matrix)


def imageIjkToRas(image: sitk.Image) -> np.ndarray:
    """4x4 voxel index to RAS matrix of a SimpleITK image (whose physical space is LPS)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def volumeNodeToImage(volumeNode) -> sitk.Image:
    """A SimpleITK image with the node's voxels and exact geometry (RAS -> LPS)."""
    name = volumeNode.GetName() if volumeNode is not None else "input"
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        raise InputImageError(f"volume '{name}' has no image data; load an image into it or pick another volume")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise InputImageError(f"volume '{name}' has {imageData.GetNumberOfScalarComponents()} components per voxel; "
                              f"pick a scalar volume (split colour or vector volumes into channels first)")
    dims = imageData.GetDimensions()
    voxels = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(dims[::-1])
    image = sitk.GetImageFromArray(np.array(voxels, copy=True))
    lps = LPS_TO_RAS @ ijkToRas(volumeNode)  # the flip is its own inverse
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if not np.all(np.isfinite(lps)) or np.any(spacing <= 0):  # SimpleITK would raise a multi-line ITK error
        raise InputImageError(f"volume '{name}' has invalid voxel spacing {tuple(float(s) for s in spacing)}; "
                              f"set a positive spacing in the Volumes module")
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in (lps[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(float(o) for o in lps[:3, 3]))
    return image


def maskToOrientedImage(mask_kji: np.ndarray, ijkToRasMatrix: np.ndarray):
    """A binary ``vtkOrientedImageData`` (uint8) from a (k, j, i) array placed by an IJK-to-RAS matrix."""
    oriented = slicer.vtkOrientedImageData()
    oriented.SetDimensions(mask_kji.shape[2], mask_kji.shape[1], mask_kji.shape[0])
    oriented.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(mask_kji, dtype=np.uint8).ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    oriented.GetPointData().SetScalars(scalars)
    oriented.SetImageToWorldMatrix(_arrayToMatrix(ijkToRasMatrix))
    return oriented


def modelTag(card: dict[str, Any]) -> str:
    return f"{card['name']}-{card['version']}"


def segmentTag(segment, name: str) -> Optional[str]:
    """A segment tag's value, or None when the segment does not have it."""
    value = vtk.mutable("")
    return str(value) if segment.GetTag(name, value) else None


def isOwnedBy(segment, card: dict[str, Any]) -> bool:
    """Whether a segment was made by this model (any version), so a re-run may replace its voxels."""
    value = segmentTag(segment, MODEL_TAG)
    return value is not None and re.fullmatch(re.escape(card["name"]) + r"-\d+\.\d+\.\d+", value) is not None


def _labelValueOf(segment) -> Optional[int]:
    value = segmentTag(segment, LABEL_TAG)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def ownedSegmentIds(segmentation, card: dict[str, Any]) -> dict[int, str]:
    """Label value -> segment ID for the segments this model owns (tagged, or named like a label)."""
    names = {label["name"]: label["value"] for label in card["labels"]}
    owned: dict[int, str] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        if not isOwnedBy(segment, card):
            continue
        # .seg.nrrd files written by the CLI carry the model tag but no label value: match by name
        value = _labelValueOf(segment) or names.get(segment.GetName())
        if value is not None and value not in owned:
            owned[value] = segmentId
    return owned


def _newSegment(label: dict[str, Any], card: dict[str, Any]):
    # imported here: e2miseg.card needs jsonschema, which Slicer may only get on the first Segment click
    from e2miseg.card import terminology_tag

    segment = slicer.vtkSegment()
    segment.SetName(label["name"])
    segment.SetColor(*[float(c) for c in label["color"]])
    tag = terminology_tag(label)
    if tag:
        segment.SetTerminology(tag)
    segment.SetTag(MODEL_TAG, modelTag(card))
    segment.SetTag(LABEL_TAG, str(label["value"]))
    return segment


def checkSameGrid(labelImage: sitk.Image, referenceVolume) -> np.ndarray:
    """The label map's IJK-to-RAS matrix, after checking it is the reference volume's grid."""
    labelMatrix = imageIjkToRas(labelImage)
    dims = referenceVolume.GetImageData().GetDimensions()
    if tuple(labelImage.GetSize()) != tuple(dims) or not np.allclose(labelMatrix, ijkToRas(referenceVolume),
                                                                       atol=GEOMETRY_TOLERANCE):
        raise InputImageError(f"the engine's label map is not on the grid of '{referenceVolume.GetName()}' "
                              f"(size {labelImage.GetSize()} vs {dims}); this is a bug, please report it")
    return labelMatrix


def importLabelImage(labelImage: sitk.Image, card: dict[str, Any], segmentationNode, referenceVolume) -> list[str]:
    """Write one segment per model label into ``segmentationNode``; return the segment IDs touched.

    Segments the model owns are replaced; every other segment (the user's) keeps its voxels: a model
    segment that would overlap one of them moves to its own labelmap layer instead of erasing it.
    """
    labelMatrix = checkSameGrid(labelImage, referenceVolume)
    labels_kji = sitk.GetArrayViewFromImage(labelImage)
    segmentation = segmentationNode.GetSegmentation()
    owned = ownedSegmentIds(segmentation, card)
    segmentIds: list[str] = []
    for label in card["labels"]:
        segmentId = owned.get(label["value"])
        if segmentId is None:
            # the label name is the segment ID, as in the engine's .seg.nrrd, unless the user took it
            segmentId = label["name"] if segmentation.GetSegment(label["name"]) is None else \
                segmentation.GenerateUniqueSegmentID(label["name"])
            if not segmentation.AddSegment(_newSegment(label, card), segmentId):
                raise RuntimeError(f"could not add segment '{label['name']}' to '{segmentationNode.GetName()}'")
        else:
            segment = segmentation.GetSegment(segmentId)
            segment.SetTag(MODEL_TAG, modelTag(card))
            segment.SetTag(LABEL_TAG, str(label["value"]))
        segmentIds.append(segmentId)
    for label, segmentId in zip(card["labels"], segmentIds):
        mask = maskToOrientedImage(labels_kji == label["value"], labelMatrix)
        overwritable = [s for s in segmentIds if s != segmentId]  # stale voxels of the model's own segments
        ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            mask, segmentationNode, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None, False,
            overwritable)
        if not ok:
            raise RuntimeError(f"could not write the voxels of segment '{label['name']}'")
    return segmentIds


def placeBesideInput(scene, segmentationNode, inputVolume) -> None:
    """Put the segmentation in the input volume's study (its parent in the subject hierarchy)."""
    shNode = scene.GetSubjectHierarchyNode() if hasattr(scene, "GetSubjectHierarchyNode") else None
    if shNode is None:
        return
    inputItem = shNode.GetItemByDataNode(inputVolume)
    if not inputItem:
        return  # the input is not in the hierarchy (plain scripts on slicer-core): nothing to be beside
    parent = shNode.GetItemParent(inputItem)
    item = shNode.GetItemByDataNode(segmentationNode)
    if item:
        shNode.SetItemParent(item, parent)
    else:
        shNode.CreateItem(parent, segmentationNode)


def segmentIdsOf(segmentationNode) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def exportSegmentsToArray(segmentationsLogic, segmentationNode, segmentIds: Sequence[str], referenceVolume,
                          scene) -> np.ndarray:
    """Segments as a (k, j, i) label array on the reference grid (label = position in ``segmentIds`` + 1).

    Uses a temporary label map node; it and any node the export adds (e.g. a colour table) are removed
    again before returning, so reading segments leaves the scene as it was.
    """
    existing = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        ids = vtk.vtkStringArray()
        for segmentId in segmentIds:
            ids.InsertNextValue(segmentId)
        if not segmentationsLogic.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelmapNode, referenceVolume):
            raise RuntimeError("exporting the segments to a label map failed")
        imageData = labelmapNode.GetImageData()
        dims = imageData.GetDimensions()
        return numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(dims[::-1]).copy()
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in existing:
                scene.RemoveNode(node)
