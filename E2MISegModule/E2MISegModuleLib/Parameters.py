"""The module's parameter node and UI wording (Slicer application only: needs slicer.parameterNodeWrapper, Qt).

Widgets in Resources/UI/E2MISegModule.ui carry a ``SlicerParameterName`` dynamic property naming
one of these fields; ``connectGui`` keeps both in sync.
"""
from __future__ import annotations

import enum
from typing import Annotated

import slicer
from e2miseg.edges.defaults import DEFAULT_STRENGTH
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper


class Device(enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"

    def label(self) -> str:  # shown in the combo box by the parameter node wrapper
        return {"auto": _("Automatic"), "cpu": _("CPU"), "cuda": _("CUDA (NVIDIA GPU)"),
                "mps": _("Apple MPS")}[self.value]


class Quality(enum.Enum):
    fast = "fast"
    normal = "normal"
    normalTta = "normal+tta"

    def label(self) -> str:
        return {"fast": _("Fast"), "normal": _("Normal"),
                "normal+tta": _("Normal + test-time augmentation (slower)")}[self.value]


@parameterNodeWrapper
class E2MISegParameterNode:
    """
    inputVolume - the volume to segment (the model's first channel).
    extraVolume1..3 - further channels, for models with several inputs (e.g. T1, T2, FLAIR).
    model - model store name.
    device, quality, refineEdges, edgeStrength, keepLargest, minIslandMm3 - run settings (e2miseg.settings.Settings);
        selecting a model puts its card's defaults here.
    outputSegmentation - the segmentation to update; none creates a new one.
    edgeRoi, refineStrength - "Refine edges" of the Edges section: only inside this ROI (none: everywhere), how strongly.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    extraVolume1: vtkMRMLScalarVolumeNode
    extraVolume2: vtkMRMLScalarVolumeNode
    extraVolume3: vtkMRMLScalarVolumeNode
    model: str = ""
    device: Device = Device.auto
    quality: Quality = Quality.normal
    refineEdges: bool = False  # each model's own default replaces these when it is selected (card "defaults")
    edgeStrength: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_STRENGTH
    keepLargest: bool = False
    minIslandMm3: Annotated[float, WithinRange(0.0, 1.0e6)] = 0.0
    outputSegmentation: vtkMRMLSegmentationNode
    edgeRoi: vtkMRMLMarkupsROINode
    refineStrength: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_STRENGTH


def showSettings(parameterNode, settings) -> None:
    """Put resolved run settings (``E2MISegLogic.modelDefaults``: the card's, else the engine's) into the
    controls, so Segment with untouched controls gives what `e2miseg predict` gives for this model."""
    if parameterNode is None:
        return
    with slicer.util.NodeModify(parameterNode.parameterNode):  # one GUI update, not five
        parameterNode.quality = Quality(settings.quality)
        parameterNode.keepLargest = settings.keep_largest
        parameterNode.minIslandMm3 = settings.min_island_mm3
        parameterNode.refineEdges = settings.refine_edges
        parameterNode.edgeStrength = settings.edge_strength


def progressText(event: dict) -> str:
    """'Segmenting 12/40 - about 30 s left' from a progress event of the logic."""
    stages = {"load": _("Loading the model"), "preprocess": _("Preparing the image"), "infer": _("Segmenting"),
              "postprocess": _("Cleaning up labels"), "write": _("Writing the result"),
              "import": _("Creating segments")}
    text = stages.get(event["stage"], event["stage"])
    if event["total"] > 1:
        text += f" {event['done']}/{event['total']}"
    if event.get("eta_s") is not None and event["eta_s"] >= 1:
        text += " - " + _("about {seconds} s left").format(seconds=int(round(event["eta_s"])))
    return text
