"""E2MISeg Slicer module library. The logic imports without the Slicer application (slicer-core MRML only).

Qt-dependent parts (``Parameters``, ``Install``, ``Widget``) are imported by E2MISegModule.py directly, never here.
"""
from .InferenceRunner import EngineError, InProcessRunner, SubprocessRunner, killProcessTree, overallFraction
from .Logic import DEVICES, QUALITY_OPTIONS, E2MISegLogic, SegmentationTask
from .SegmentationImport import LABEL_TAG, MODEL_TAG, importLabelImage, volumeNodeToImage

__all__ = ["E2MISegLogic", "SegmentationTask", "EngineError", "InProcessRunner", "SubprocessRunner",
           "killProcessTree", "overallFraction", "DEVICES", "QUALITY_OPTIONS", "LABEL_TAG", "MODEL_TAG",
           "importLabelImage", "volumeNodeToImage"]
