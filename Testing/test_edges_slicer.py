"""EdgeRefineLogic on real MRML (slicer-core): only the chosen segment changes, geometry round-trips
on oblique anisotropic grids, ROI limits, undo, the uncertainty overlay and "next uncertain edge"."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from conftest import require_module  # noqa: E402

slicer = require_module("slicer", "the slicer-core wheel runs the Slicer module's logic on real MRML")

from conftest import oblique_image, shared_file  # noqa: E402
from e2miseg.edges import EdgeOptions, refine_label_array  # noqa: E402

from E2MISegModuleLib.EdgeRefineLogic import EdgeRefineLogic, jumpSlicesToRas, roiMaskOnVolume  # noqa: E402
from E2MISegModuleLib.SegmentationImport import (exportSegmentsToArray, imageIjkToRas, ijkToRas,  # noqa: E402
                                                 segmentIdsOf)


def volumeFromImage(scene, image: sitk.Image, className="vtkMRMLScalarVolumeNode", name="image"):
    node = scene.AddNewNodeByClass(className, name)
    array = sitk.GetArrayFromImage(image)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(*image.GetSize())
    imageData.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
    node.SetAndObserveImageData(imageData)
    matrix = vtk.vtkMatrix4x4()
    ras = imageIjkToRas(image)
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ras[r, c]))
    node.SetIJKToRASMatrix(matrix)
    return node


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def segmentationFromLabels(scene, labels: np.ndarray, reference: sitk.Image, names=("A", "B")):
    labelImage = sitk.GetImageFromArray(labels.astype(np.uint8))
    labelImage.CopyInformation(reference)
    labelmapNode = volumeFromImage(scene, labelImage, "vtkMRMLLabelMapVolumeNode", "labels")
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    assert logic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode)
    scene.RemoveNode(labelmapNode)
    ids = segmentIdsOf(segmentationNode)
    for segmentId, name in zip(ids, names):
        segmentationNode.GetSegmentation().GetSegment(segmentId).SetName(name)
    return segmentationNode, ids, logic


def obliqueCase(scene):
    """Oblique, anisotropic image with two bright blocks; both segments drawn one voxel too small."""
    image = oblique_image(size=(24, 22, 12))
    array = sitk.GetArrayFromImage(image)
    array[3:9, 4:14, 16:22] += 80
    bright = sitk.GetImageFromArray(array)
    bright.CopyInformation(image)
    labels = np.zeros(array.shape, dtype=np.uint8)
    labels[4:8, 5:13, 6:14] = 1
    labels[4:8, 5:13, 17:21] = 2
    volume = volumeFromImage(scene, bright)
    segmentationNode, ids, logic = segmentationFromLabels(scene, labels, bright)
    return bright, labels, volume, segmentationNode, ids, logic


def segmentArray(logic, segmentationNode, segmentId, volume, scene) -> np.ndarray:
    return exportSegmentsToArray(logic, segmentationNode, [segmentId], volume, scene) > 0


def test_refining_one_segment_changes_only_it_and_round_trips_geometry(scene):
    image, labels, volume, segmentationNode, ids, logic = obliqueCase(scene)
    other = segmentArray(logic, segmentationNode, ids[1], volume, scene)
    edgeLogic = EdgeRefineLogic()
    changed = edgeLogic.refineSegments(segmentationNode, volume, [ids[0]], strength=0.8)
    assert changed[ids[0]] > 0
    refined = segmentArray(logic, segmentationNode, ids[0], volume, scene)
    assert np.array_equal(segmentArray(logic, segmentationNode, ids[1], volume, scene), other)  # bit-identical
    # the engine on the same arrays gives the same voxels: nothing was resampled or shifted on the way
    expected = refine_label_array(sitk.GetArrayFromImage(image).astype(np.float32), (labels == 1).astype(np.uint8) + 2 * (labels == 2),
                                  tuple(image.GetSpacing()[::-1]), values=[1], options=EdgeOptions(strength=0.8)) == 1
    assert np.array_equal(refined, expected)
    assert refined.sum() > (labels == 1).sum()
    np.testing.assert_allclose(ijkToRas(volume), imageIjkToRas(image), atol=1e-9)
    assert segmentationNode.GetSegmentation().GetSegment(ids[0]).GetName() == "A"

    assert edgeLogic.undoLastRefinement()
    assert np.array_equal(segmentArray(logic, segmentationNode, ids[0], volume, scene), labels == 1)
    assert np.array_equal(segmentArray(logic, segmentationNode, ids[1], volume, scene), other)
    assert not edgeLogic.undoLastRefinement()


def test_refinement_inside_a_roi_node_and_an_ijk_box_only(scene):
    image, labels, volume, segmentationNode, ids, logic = obliqueCase(scene)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    # a 12 mm box in RAS on one side of the first block (the image grid is oblique to it)
    corner = ijkToRas(volume) @ np.array([10.0, 4.5, 5.5, 1.0])
    roi.SetCenter(*corner[:3])
    roi.SetSize(12.0, 12.0, 12.0)
    inside = roiMaskOnVolume(roi, volume)
    assert 0 < inside.sum() < inside.size // 4
    centres = np.argwhere(inside)[:, ::-1]  # (i, j, k) of voxels found inside: check them in RAS directly
    ras = np.c_[centres, np.ones(len(centres))] @ ijkToRas(volume).T
    assert np.all(np.abs(ras[:, :3] - corner[:3]) <= 6.0 + 1e-6)
    edgeLogic = EdgeRefineLogic()
    edgeLogic.refineSegments(segmentationNode, volume, ids, roiNode=roi, strength=0.8)
    for value, segmentId in zip((1, 2), ids):
        after = segmentArray(logic, segmentationNode, segmentId, volume, scene)
        assert np.array_equal(after[~inside], labels[~inside] == value)
    edgeLogic.undoLastRefinement()
    edgeLogic.refineSegments(segmentationNode, volume, [ids[1]], ijkBox=[0, 0, 0, 23, 8, 11], strength=0.8)
    after = segmentArray(logic, segmentationNode, ids[1], volume, scene)
    assert np.array_equal(after[:, 9:, :], labels[:, 9:, :] == 2)
    assert not np.array_equal(after[:, :9, :], labels[:, :9, :] == 2)


def test_edited_segment_on_real_hippocampus_refined_without_touching_the_other(scene):
    image = sitk.ReadImage(str(shared_file("fixtures/Hippocampus_mini/imagesTr/hippocampus_003.nii.gz")))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_file("fixtures/Hippocampus_mini/labelsTr/hippocampus_003.nii.gz"))))
    from scipy import ndimage

    edited = labels.copy()
    posterior = labels == 2
    edited[posterior & ~ndimage.binary_erosion(posterior)] = 0  # the user shaved the posterior segment
    volume = volumeFromImage(scene, image)
    segmentationNode, ids, logic = segmentationFromLabels(scene, edited, image, names=("Anterior", "Posterior"))
    anterior = segmentArray(logic, segmentationNode, ids[0], volume, scene)
    changed = EdgeRefineLogic().refineSegments(segmentationNode, volume, [ids[1]], strength=0.6)
    assert changed[ids[1]] > 20
    assert np.array_equal(segmentArray(logic, segmentationNode, ids[0], volume, scene), anterior)
    after = segmentArray(logic, segmentationNode, ids[1], volume, scene)
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    assert dice(after, posterior) > dice(edited == 2, posterior)


def test_uncertainty_overlay_and_next_uncertain_edge(scene):
    image, labels, volume, segmentationNode, ids, _ = obliqueCase(scene)
    edgeLogic = EdgeRefineLogic()
    overlay, regions = edgeLogic.showUncertainty(segmentationNode, volume)
    assert overlay.IsA("vtkMRMLScalarVolumeNode")
    np.testing.assert_allclose(ijkToRas(overlay), ijkToRas(volume), atol=1e-9)
    assert overlay.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    display = overlay.GetDisplayNode()
    assert display.GetColorNode().GetName() == "E2MISeg uncertainty"
    assert display.GetApplyThreshold()
    values = numpy_support.vtk_to_numpy(overlay.GetImageData().GetPointData().GetScalars())
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0.3
    assert regions and all(set(r["segments"]) <= set(ids) | {""} for r in regions)
    # the same node is reused on a second call, no second colour table
    again, _ = edgeLogic.showUncertainty(segmentationNode, volume, volumeNode=overlay)
    assert again.GetID() == overlay.GetID()
    assert scene.GetNodesByClass("vtkMRMLColorTableNode").GetNumberOfItems() == 1

    first = edgeLogic.nextUncertainEdge()
    lps = np.array(regions[0]["centroid_lps_mm"])
    assert first == pytest.approx((-lps[0], -lps[1], lps[2]))
    seen = [first] + [edgeLogic.nextUncertainEdge() for _ in range(len(regions))]
    assert seen[len(regions)] == pytest.approx(first)  # wraps around

    sliceNode = slicer.vtkMRMLSliceNode()
    sliceNode.SetLayoutName("Red")
    sliceNode.SetOrientationToAxial()
    scene.AddNode(sliceNode)
    jumpSlicesToRas(scene, first)
    sliceToRas = sliceNode.GetSliceToRAS()
    assert [sliceToRas.GetElement(r, 3) for r in range(3)] == pytest.approx(list(first), abs=1e-6)
    edgeLogic.setRegions(regions)
    assert edgeLogic.jumpToNextUncertainEdge(scene) == pytest.approx(first)
    assert edgeLogic.currentRegion() is edgeLogic.regions[0]
    edgeLogic.setRegions([])
    assert edgeLogic.jumpToNextUncertainEdge(scene) is None


def test_load_engine_uncertainty_file(scene, tmp_path):
    from e2miseg.edges import uncertain_regions, write_uncertainty

    image = oblique_image()
    uncertainty = np.zeros(image.GetSize()[::-1], dtype=np.float32)
    uncertainty[3:9, 4:6, 5:15] = 0.8
    labels = np.zeros(uncertainty.shape, dtype=np.uint8)
    labels[3:9, 4:14, 5:15] = 1
    mapImage = sitk.GetImageFromArray(uncertainty)
    mapImage.CopyInformation(image)
    write_uncertainty(mapImage, uncertain_regions(uncertainty, labels, None, image, patch_mm=None), tmp_path / "u.nii.gz")
    edgeLogic = EdgeRefineLogic()
    node, regions = edgeLogic.loadUncertainty(scene, str(tmp_path / "u.nii.gz"))
    np.testing.assert_allclose(ijkToRas(node), imageIjkToRas(image), atol=1e-5)  # NIfTI stores float32
    assert len(regions) == 1
    ras = edgeLogic.nextUncertainEdge()
    centre = imageIjkToRas(image) @ np.array(regions[0]["centroid_ijk"] + [1.0])
    assert ras == pytest.approx(tuple(centre[:3]), abs=1e-4)
