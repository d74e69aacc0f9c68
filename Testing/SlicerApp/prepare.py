"""Installs what E2MISeg's first Segment click would offer to install, so the smoke test never waits on a dialog.

  Slicer --no-main-window --python-script Testing/SlicerApp/prepare.py

The PyTorch extension (the extension's declared dependency, for PyTorchUtils), a CPU build of torch, and
E2MISegModule/Resources/requirements.txt. Exits non-zero when any of it fails.
"""
import os
import traceback

import slicer

MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "E2MISegModule")

try:
    extensions = slicer.app.extensionsManagerModel()
    extensions.interactive = False  # no confirmation dialogs
    if not extensions.isExtensionInstalled("PyTorch") and not extensions.installExtensionFromServer("PyTorch", False):
        raise RuntimeError("could not install the PyTorch extension from the extensions server")
    slicer.util.pip_install(["torch", "--index-url", "https://download.pytorch.org/whl/cpu"])
    slicer.util.pip_install(["-r", os.path.join(MODULE_DIR, "Resources", "requirements.txt")])
    print("[e2miseg prepare] PyTorch extension, CPU torch and the engine's packages installed", flush=True)
except BaseException:
    traceback.print_exc()
    slicer.util.exit(1)
else:
    slicer.util.exit(0)
