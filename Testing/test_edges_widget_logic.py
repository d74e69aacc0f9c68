"""What the module's Edges section decides without Qt, on real MRML (slicer-core, no mocks): which
segments "Refine edges" acts on, which image it refines against, the overlay as the slice views'
foreground layer (and back), undo availability, region names, and the network's uncertainty map
requested through the logic (in-process and subprocess) equal to the CLI's ``--uncertainty`` file."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import require_module  # noqa: E402

slicer = require_module("slicer", "the slicer-core wheel runs the Slicer module's logic on real MRML")

from conftest import oblique_image  # noqa: E402
from e2miseg.cli import main as cli_main  # noqa: E402
from e2miseg.errors import E2MISegError  # noqa: E402
from helpers import HIPPOCAMPUS_LABELS, make_e2miseg_checkpoint  # noqa: E402
from test_edges_slicer import obliqueCase, segmentArray  # noqa: E402

from E2MISegModuleLib import E2MISegLogic  # noqa: E402
from E2MISegModuleLib.EdgeRefineLogic import (EdgeRefineLogic, readRegions, regionSegmentNames,  # noqa: E402
                                              segmentsToRefine, sourceVolumeFor)
from E2MISegModuleLib.SegmentationImport import ijkToRas, imageIjkToRas, segmentIdsOf  # noqa: E402


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def sliceViews(scene, names=("Red", "Yellow", "Green")):
    composites = []
    for name in names:
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        scene.AddNode(composite)
        composites.append(composite)
    return composites


def test_selected_segments_are_refined_in_segmentation_order_and_none_selected_means_all(scene):
    _, _, _, segmentationNode, ids, _ = obliqueCase(scene)
    third = segmentationNode.GetSegmentation().AddEmptySegment("", "C")
    allIds = ids + [third]
    assert segmentsToRefine(segmentationNode, []) == allIds
    assert segmentsToRefine(segmentationNode, (third, ids[0])) == [ids[0], third]  # table order, not click order
    assert segmentsToRefine(segmentationNode, [ids[1], "gone"]) == [ids[1]]
    with pytest.raises(E2MISegError, match="no longer in 'seg'"):
        segmentsToRefine(segmentationNode, ["gone"])  # a stale selection never widens to every segment
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(E2MISegError, match="has no segments"):
        segmentsToRefine(empty, [])


def test_source_volume_is_the_segmentations_own_image_else_the_input(scene):
    _, _, volume, segmentationNode, _, _ = obliqueCase(scene)
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other")
    other.SetAndObserveImageData(volume.GetImageData())
    with pytest.raises(E2MISegError, match="no image volume to refine 'seg'"):
        sourceVolumeFor(segmentationNode, None)
    assert sourceVolumeFor(segmentationNode, other) is other  # no reference geometry yet: the module's input
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert sourceVolumeFor(segmentationNode, other) is volume  # the image it was made on wins
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    labelmap.SetAndObserveImageData(volume.GetImageData())
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    assert sourceVolumeFor(segmentationNode, other) is other  # a label map is no image to refine against
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    scene.RemoveNode(volume)
    assert sourceVolumeFor(segmentationNode, other) is other


def test_refine_selected_inside_roi_then_undo_availability(scene):
    image, labels, volume, segmentationNode, ids, logic = obliqueCase(scene)
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    far = ijkToRas(volume) @ np.array([500.0, 500.0, 500.0, 1.0])
    roi.SetCenter(*far[:3])
    roi.SetSize(10.0, 10.0, 10.0)
    edgeLogic = EdgeRefineLogic()
    assert not edgeLogic.canUndoRefinement()
    chosen = segmentsToRefine(segmentationNode, [ids[0]])
    with pytest.raises(E2MISegError, match="ROI does not overlap"):
        edgeLogic.refineSegments(segmentationNode, sourceVolumeFor(segmentationNode), chosen, roiNode=roi, strength=0.8)
    assert not edgeLogic.canUndoRefinement()
    centre = ijkToRas(volume) @ np.array([10.0, 8.5, 5.5, 1.0])  # over the first block's edge
    roi.SetCenter(*centre[:3])
    roi.SetSize(14.0, 14.0, 14.0)
    changed = edgeLogic.refineSegments(segmentationNode, sourceVolumeFor(segmentationNode), chosen, roiNode=roi,
                                       strength=0.8)
    assert list(changed) == [ids[0]] and changed[ids[0]] > 0
    assert np.array_equal(segmentArray(logic, segmentationNode, ids[1], volume, scene), labels == 2)
    assert edgeLogic.canUndoRefinement()
    assert edgeLogic.undoLastRefinement() and not edgeLogic.canUndoRefinement()
    assert np.array_equal(segmentArray(logic, segmentationNode, ids[0], volume, scene), labels == 1)

    edgeLogic.refineSegments(segmentationNode, volume, chosen, strength=0.8)
    scene.RemoveNode(segmentationNode)  # deleted by the user: nothing left to undo, and no error
    assert not edgeLogic.canUndoRefinement()
    assert not edgeLogic.undoLastRefinement()


def test_overlay_is_the_foreground_of_every_slice_view_and_hiding_puts_back_what_was_there(scene):
    _, _, volume, segmentationNode, _, _ = obliqueCase(scene)
    red, yellow, green = sliceViews(scene)
    earlier = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "earlier foreground")
    red.SetForegroundVolumeID(earlier.GetID())
    red.SetForegroundOpacity(0.3)
    edgeLogic = EdgeRefineLogic()
    overlay, _ = edgeLogic.showUncertainty(segmentationNode, volume)
    assert edgeLogic.showOverlay(overlay) == 3
    for composite in (red, yellow, green):
        assert composite.GetForegroundVolumeID() == overlay.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.6)
        assert composite.GetBackgroundVolumeID() is None  # the image layer is not touched
    assert overlay.GetDisplayNode().GetColorNode().GetName() == "E2MISeg uncertainty"
    edgeLogic.showOverlay(overlay)  # showing twice must not forget what was there first
    green.SetForegroundVolumeID(earlier.GetID())  # the user picked another foreground meanwhile
    edgeLogic.hideOverlay(overlay)
    assert red.GetForegroundVolumeID() == earlier.GetID() and red.GetForegroundOpacity() == pytest.approx(0.3)
    assert yellow.GetForegroundVolumeID() is None
    assert green.GetForegroundVolumeID() == earlier.GetID()


def test_region_names_from_segment_ids_and_from_label_values(scene):
    _, _, volume, segmentationNode, ids, _ = obliqueCase(scene)
    _, regions = EdgeRefineLogic().showUncertainty(segmentationNode, volume)
    assert regions
    names = regionSegmentNames(segmentationNode, regions[0])
    assert names and set(names) <= {"A", "B", ""}
    segmentation = segmentationNode.GetSegmentation()
    segmentation.GetSegment(ids[1]).SetTag("e2miseg.labelValue", "2")  # as imported from a model's label map
    assert regionSegmentNames(segmentationNode, {"labels": [0, 2]}) == ["", "B"]
    assert regionSegmentNames(segmentationNode, {"labels": [1, 2]}) == ["", "B"]  # A has no label tag


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_e2miseg_checkpoint(tmp_path_factory.mktemp("models") / "tiny.safetensors", spacing=(3.0, 3.0, 3.0))


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "subprocess"])
def test_run_with_uncertainty_gives_the_engines_map_and_regions(tmp_path, checkpoint, in_process):
    scene = slicer.vtkMRMLScene()
    logic = E2MISegLogic(scene)
    logic.logCallback = None
    image_path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(oblique_image(), str(image_path))
    volume = logic.loadVolume(image_path)
    task = logic.process(volume, model=str(checkpoint), device="cpu", inProcess=in_process, refineEdges=False,
                         uncertainty=True, waitForCompletion=False)
    node = task.wait()
    overlay = task.uncertaintyVolume
    assert overlay is not None and overlay.GetName() == f"{node.GetName()} uncertainty"
    assert overlay.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_allclose(ijkToRas(overlay), ijkToRas(volume), atol=1e-6)
    assert overlay.GetDisplayNode().GetColorNode().GetName() == "E2MISeg uncertainty"

    # the same map and regions as the command line writes for this model and image
    cli_map = tmp_path / "cli_uncertainty.nrrd"
    assert cli_main(["predict", str(image_path), "-o", str(tmp_path / "cli.nrrd"), "--model", str(checkpoint),
                     "--device", "cpu", "--uncertainty", str(cli_map)]) == 0
    expected = sitk.ReadImage(str(cli_map))
    np.testing.assert_allclose(imageIjkToRas(expected), ijkToRas(overlay), atol=1e-6)
    got = slicer.util.arrayFromVolume(overlay)
    np.testing.assert_allclose(got, sitk.GetArrayFromImage(expected), atol=1e-5)
    assert got.max() > 0.1
    expected_regions = readRegions(str(tmp_path / "cli_uncertainty.regions.json"))
    assert expected_regions and len(logic.edgeLogic.regions) == len(expected_regions)
    assert logic.edgeLogic.regions[0]["centroid_lps_mm"] == pytest.approx(expected_regions[0]["centroid_lps_mm"], abs=1e-3)
    names = {label["name"] for label in HIPPOCAMPUS_LABELS} | {""}
    assert set(regionSegmentNames(node, logic.edgeLogic.regions[0])) <= names

    # a second run reuses the overlay node instead of piling up volumes
    again = logic.process(volume, model=str(checkpoint), device="cpu", inProcess=in_process, refineEdges=False,
                          outputSegmentation=node, uncertainty=True, uncertaintyVolume=overlay, waitForCompletion=False)
    again.wait()
    assert again.uncertaintyVolume is overlay
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 2  # input + one overlay
    assert segmentIdsOf(node) == segmentIdsOf(again.segmentationNode)
