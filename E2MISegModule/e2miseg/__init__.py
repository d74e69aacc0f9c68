"""E2MISeg engine: medical image segmentation with E2MISeg, EHANet and S²aNet.

A Slicer-free package (no ``slicer`` or ``qt`` imports): the Slicer module, the command line and the
training package all call it. Public API: ``load_model``, ``predict``; see ``e2miseg.api``.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_model", "predict", "__version__"]


def __getattr__(name: str):
    # Import torch and the pipeline only when the API is used: `e2miseg --help` and the Slicer
    # module's import stay fast.
    if name in ("load_model", "predict"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
