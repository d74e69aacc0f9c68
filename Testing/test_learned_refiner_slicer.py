"""The Edges section's refinement with a model's learned refiner, on real MRML (slicer-core): only the chosen
segment changes, only inside the ROI, with the model's label values; segments without one get the classical method."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import require_module

slicer = require_module("slicer", "the slicer-core wheel runs the Slicer module's logic on real MRML")

from e2miseg.edges import EdgeOptions, refine_label_array  # noqa: E402
from e2miseg.edges.learned import LearnedRefiner  # noqa: E402
from E2MISegModuleLib.EdgeRefineLogic import EdgeRefineLogic, roiMaskOnVolume  # noqa: E402
from E2MISegModuleLib.SegmentationImport import LABEL_TAG, ijkToRas  # noqa: E402
from test_edges_slicer import obliqueCase, segmentArray  # noqa: E402
from test_learned_refiner import random_refiner  # noqa: E402


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def test_learned_refiner_changes_only_the_chosen_segment_inside_the_roi(scene):
    image, labels, volume, segmentationNode, ids, logic = obliqueCase(scene)
    for segmentId, value in zip(ids, ("1", "2")):  # as the module tags the segments a model made
        segmentationNode.GetSegmentation().GetSegment(segmentId).SetTag(LABEL_TAG, value)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    corner = ijkToRas(volume) @ np.array([12.0, 8.0, 6.0, 1.0])
    roi.SetCenter(*corner[:3])
    roi.SetSize(14.0, 14.0, 14.0)
    inside = roiMaskOnVolume(roi, volume)
    other = segmentArray(logic, segmentationNode, ids[1], volume, scene)
    refiner = LearnedRefiner(random_refiner(num_classes=3), {"scheme": "zscore"}, "test")
    changed = EdgeRefineLogic().refineSegments(segmentationNode, volume, [ids[0]], roiNode=roi, refiner=refiner)
    after = segmentArray(logic, segmentationNode, ids[0], volume, scene)
    assert changed[ids[0]] > 0
    assert np.array_equal(after[~inside], labels[~inside] == 1)
    assert np.array_equal(segmentArray(logic, segmentationNode, ids[1], volume, scene), other)
    expected = refine_label_array(sitk.GetArrayFromImage(image).astype(np.float32), labels, tuple(image.GetSpacing()[::-1]),
                                  values=[1], editable=inside, options=EdgeOptions(method="learned", refiner=refiner)) == 1
    assert np.array_equal(after, expected)


def test_segments_without_a_model_label_get_the_classical_method(scene):
    image, labels, volume, segmentationNode, ids, logic = obliqueCase(scene)  # no label tags: drawn by hand
    refiner = LearnedRefiner(random_refiner(num_classes=3), {"scheme": "zscore"}, "test")
    EdgeRefineLogic().refineSegments(segmentationNode, volume, [ids[0]], strength=0.8, refiner=refiner)
    expected = refine_label_array(sitk.GetArrayFromImage(image).astype(np.float32), (labels == 1).astype(np.uint8) + 2 * (labels == 2),
                                  tuple(image.GetSpacing()[::-1]), values=[1], options=EdgeOptions(strength=0.8)) == 1
    assert np.array_equal(segmentArray(logic, segmentationNode, ids[0], volume, scene), expected)
