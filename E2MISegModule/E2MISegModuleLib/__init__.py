"""E2MISeg Slicer module library. The logic imports without the Slicer application (slicer-core MRML only).

Qt-dependent parts (``Parameters``, ``Install``, ``Widget``) are imported by E2MISegModule.py directly, never here.
Names are imported on first use, so E2MISegModule.py can read ``SlicerVersion`` before anything that
needs a supported Slicer.
"""
_LAZY = {
    "EngineError": "InferenceRunner", "InProcessRunner": "InferenceRunner", "SubprocessRunner": "InferenceRunner",
    "killProcessTree": "InferenceRunner", "overallFraction": "InferenceRunner",
    "DEVICES": "Logic", "QUALITY_OPTIONS": "Logic", "E2MISegLogic": "Logic", "SegmentationTask": "Logic",
    "LABEL_TAG": "SegmentationImport", "MODEL_TAG": "SegmentationImport", "importLabelImage": "SegmentationImport",
    "volumeNodeToImage": "SegmentationImport",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
