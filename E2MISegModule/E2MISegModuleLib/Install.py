"""Python dependencies inside Slicer (application only: shows dialogs, so the widget calls it, never the logic).

torch comes from the PyTorch extension (PyTorchUtils picks the build for the GPU driver); everything
else from Resources/requirements.txt through ``slicer.packaging.pip_ensure``, which asks the user first
and offers a restart when an already imported package was updated. Slicer's own SimpleITK and numpy
are never listed, so pip never replaces them.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

import slicer
from slicer.i18n import tr as _

TORCH_REQUIREMENT = ">=2.3"
REQUESTER = "E2MISeg"


class InstallError(RuntimeError):
    def __init__(self, message: str, restartRequired: bool = False):
        super().__init__(message)
        self.restartRequired = restartRequired


def ensureTorch() -> None:
    try:
        import PyTorchUtils
    except ImportError:
        raise InstallError(_("E2MISeg needs the PyTorch extension. Install 'PyTorch' from the Extensions Manager, "
                             "restart Slicer, then click Segment again.")) from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.torchInstalled():
        tooOld = torchTooOld(importlib.metadata.version("torch"))
        if tooOld:
            # an imported torch cannot be replaced in a running Slicer: the user updates it, then restarts
            raise InstallError(tooOld, restartRequired=True)
        return
    torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise InstallError(_("PyTorch was not installed. Install it from the PyTorch Utils module "
                             "(Utilities > PyTorch Utils), then click Segment again."))


def torchTooOld(installedVersion: str):
    """A message saying how to update PyTorch when ``installedVersion`` misses TORCH_REQUIREMENT, else None."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    if Version(installedVersion) in SpecifierSet(TORCH_REQUIREMENT):
        return None
    return _("E2MISeg needs PyTorch {requirement}; PyTorch {installed} is installed. Open Utilities > PyTorch Utils, "
             "click Uninstall, restart Slicer, then click Segment again: it installs a current PyTorch.").format(
        requirement=TORCH_REQUIREMENT, installed=installedVersion)


def _missing(requirementsPath: Path) -> list[str]:
    from packaging.requirements import Requirement

    missing = []
    for line in requirementsPath.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        requirement = Requirement(line)
        try:
            if importlib.metadata.version(requirement.name) not in requirement.specifier:
                missing.append(line)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
    return missing


def ensurePackages(requirementsPath) -> None:
    """Install the missing requirements of ``requirementsPath`` (a str or Path) after asking the user."""
    requirementsPath = Path(requirementsPath)
    try:
        packaging = importlib.import_module("slicer.packaging")  # Slicer 5.12 and later
    except ImportError:
        packaging = None
    if packaging is not None:
        try:
            packaging.pip_ensure(packaging.load_requirements(requirementsPath), requester=REQUESTER)
        except RuntimeError as exc:  # raised when the user declines
            raise InstallError(_("E2MISeg cannot run without its Python packages ({error}). Click Segment again "
                                 "and accept the installation.").format(error=exc)) from None
        return
    _ensurePackagesBefore512(requirementsPath)


def _ensurePackagesBefore512(requirementsPath: Path) -> None:
    """Slicer 5.10 and 5.11 have no slicer.packaging.pip_ensure: ask, install, and say when a restart is needed."""
    missing = _missing(requirementsPath)
    if not missing:
        return
    if not slicer.app.commandOptions().testingEnabled and not slicer.util.confirmOkCancelDisplay(
            _("E2MISeg needs these Python packages, which will be downloaded and installed now:\n\n{packages}")
            .format(packages="\n".join(missing)), windowTitle=_("Install Python packages")):
        raise InstallError(_("E2MISeg cannot run without its Python packages. Click Segment again and accept "
                             "the installation."))
    alreadyImported = [line for line in missing if line.split(">")[0].split("=")[0].strip() in sys.modules]
    slicer.util.pip_install(missing)
    importlib.invalidate_caches()
    if alreadyImported:
        raise InstallError(_("Python packages were updated while an old version was in use ({packages}). Restart "
                             "Slicer, then click Segment again.").format(packages=", ".join(alreadyImported)),
                           restartRequired=True)


def ensureDependencies(requirementsPath: Path) -> None:
    """Everything the engine needs; raises ``InstallError`` with a message that says what to do."""
    ensureTorch()
    ensurePackages(Path(requirementsPath))
