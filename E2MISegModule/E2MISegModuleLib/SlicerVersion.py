"""The Slicer versions E2MISeg supports, stated once: README, CMakeLists.txt (find_package) and the
tests are checked against MINIMUM_SLICER_VERSION, and E2MISegModule.py refuses to load below it.

Why 5.10: SegmentationImport calls vtkSegment.SetTerminology, which first appears in Slicer 5.10
(Libs/vtkSegmentationCore/vtkSegment.h, v5.10.0; absent at v5.8.0), and Slicer 5.8 ships Python 3.9
while the engine needs 3.10. This file imports nothing, so any Slicer's Python can read it.
"""

MINIMUM_SLICER_VERSION = (5, 10)


def minimumSlicerText() -> str:
    return "{}.{}".format(*MINIMUM_SLICER_VERSION)


def slicerIsSupported(major: int, minor: int) -> bool:
    return (int(major), int(minor)) >= MINIMUM_SLICER_VERSION


def unsupportedSlicerMessage(major: int, minor: int) -> str:
    """What the user of an older Slicer must do (shown when E2MISegModule.py refuses to load)."""
    try:
        from slicer.i18n import tr as _
    except ImportError:  # plain Python (tests)
        def _(text):
            return text
    return _("E2MISeg needs 3D Slicer {minimum} or later; this is Slicer {version}. Install the current Slicer from "
             "https://download.slicer.org, then install E2MISeg from its Extensions Manager.").format(
        minimum=minimumSlicerText(), version=f"{major}.{minor}")
