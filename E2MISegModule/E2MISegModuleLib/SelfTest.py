"""The module's self-test body (Slicer application only): the bundled model on the bundled sample.

Kept out of E2MISegModule.py so the shell stays small; E2MISegModuleTest calls it.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import slicer

BUNDLED_MODEL = "e2miseg-hippocampus.safetensors"
MINIMUM_DICE = 0.5  # foreground Dice of the trained bundled model against the sample's reference


def runBundledModelOnSample(testCase, resourcesDir: str, logic) -> None:
    model = os.path.join(resourcesDir, "Models", BUNDLED_MODEL)
    samples = sorted(p for p in glob.glob(os.path.join(resourcesDir, "SampleData", "*.nii.gz")) if "_reference" not in p)
    testCase.assertTrue(os.path.isfile(model), f"bundled model missing: {model}")
    testCase.assertTrue(samples, f"no bundled sample image in {resourcesDir}/SampleData")
    volume = slicer.util.loadVolume(samples[0])
    testCase.delayDisplay("Segmenting the bundled sample")
    segmentationNode = logic.process(volume, model=model, device="cpu", quality="fast")
    card = logic.modelCard(model)[1]
    segmentation = segmentationNode.GetSegmentation()
    testCase.assertEqual([segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())],
                         [label["name"] for label in card["labels"]])
    predicted = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=bool)
    for label in card["labels"]:
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, label["name"], volume) > 0
        testCase.assertTrue(mask.any(), f"segment {label['name']} is empty")
        predicted |= mask
    reference = samples[0].replace(".nii.gz", "_reference.nii.gz")
    if os.path.isfile(reference):
        truth = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(reference)) > 0
        dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
        testCase.assertGreater(dice, MINIMUM_DICE, f"foreground Dice {dice:.2f} against {os.path.basename(reference)}")

    # the non-blocking path the widget uses, then Cancel: the scene must be left as it was
    nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
    task = logic.process(volume, model=model, device="cpu", quality="fast", waitForCompletion=False)
    slicer.app.processEvents()
    task.cancel()
    while not task.poll():
        slicer.app.processEvents()
    testCase.assertIsNotNone(task.error)
    testCase.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
    testCase.delayDisplay("Test passed")
