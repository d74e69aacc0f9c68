"""Shared fixtures and the suite's policies: paths to the real data beside the project, small synthetic
volumes, which runtime tests use, and what may skip.

Skip policy: locally a test whose data (``../shared/data``) or optional module (slicer-core) is missing
skips. With ``CI`` set (``CI=true``) the run stops at once with a one-line reason when either is
missing, and any skip of a test not marked ``machine`` (hardware or OS features this machine may lack:
CUDA, MPS, native bfloat16, a non-root user) fails. The number of skipped tests is printed at the end.

Runtime policy: tests run what users get - the default runtime (OpenVINO on the CPU where installed)
and automatic precision. A test about the PyTorch path says so with ``@pytest.mark.torch_runtime``.
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "E2MISegModule"))  # the engine and the Slicer logic, without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARED_DATA = ROOT.parent / "shared" / "data"
# OpenVINO conversions of test networks go to a throw-away folder, never the user's home.
os.environ.setdefault("E2MISEG_CACHE", tempfile.mkdtemp(prefix="e2miseg-test-cache-"))
FIXTURES = SHARED_DATA / "fixtures"
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> None:
    """A test cannot run here: skip locally; fail in CI, where every test must run."""
    if IN_CI:
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        missing(f"{path} is absent: the real data in ../shared/data is not beside this checkout")
    return path


def require_module(name: str, why: str = "") -> ModuleType:
    """``pytest.importorskip`` under the suite's skip policy (usable at module level)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reason = f"cannot import {name} ({exc})" + (f": {why}" if why else "")
        if IN_CI:
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "machine(reason): needs hardware or an OS feature this machine may lack "
                                       "(CUDA, MPS, native bfloat16, a non-root user); the only tests CI may skip")
    config.addinivalue_line("markers", "torch_runtime: about the PyTorch path, so runs with E2MISEG_RUNTIME=torch "
                                       "instead of the default runtime")


def pytest_sessionstart(session) -> None:
    """In CI, missing data or slicer-core stops the run before any test, with one line saying why."""
    if not IN_CI:
        return
    if not SHARED_DATA.is_dir():
        raise pytest.UsageError(f"CI: {SHARED_DATA} is absent; the shipped-model, real-data and Slicer re-run tests "
                                f"need it beside the checkout (unset CI to run the rest and skip those)")
    try:
        import slicer  # noqa: F401
    except ImportError as exc:
        raise pytest.UsageError(f"CI: import slicer failed ({exc}); install slicer-core (scripts/setup_env.sh) "
                                f"so the Slicer module tests run") from None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("machine") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI: skipped, and not marked machine: {reason}"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    terminalreporter.write_line(f"{len(skipped)} test(s) skipped" + (" (in CI only tests marked machine may skip)" if IN_CI else ""))


@pytest.fixture(autouse=True)
def _runtime_for(request, monkeypatch):
    """The default runtime for every test, PyTorch for those marked ``torch_runtime``."""
    if request.node.get_closest_marker("torch_runtime") is not None:
        monkeypatch.setenv("E2MISEG_RUNTIME", "torch")
    yield


@pytest.fixture
def hippocampus_image() -> Path:
    return shared_file("fixtures/Hippocampus_mini/imagesTr/hippocampus_001.nii.gz")


@pytest.fixture
def hippocampus_label() -> Path:
    return shared_file("fixtures/Hippocampus_mini/labelsTr/hippocampus_001.nii.gz")


def oblique_image(size=(20, 18, 12), spacing=(0.7, 1.3, 2.9), origin=(-12.5, 40.25, 7.0), seed=0) -> sitk.Image:
    """A synthetic volume with an oblique direction and anisotropic spacing."""
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 20, size[::-1]).astype(np.float32)
    array[3:9, 4:14, 5:15] += 80  # a bright block to segment
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    angle = np.deg2rad(23.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    image.SetDirection(tuple((rotation @ tilt).ravel()))
    return image


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: the machine is shared, and more threads than free cores
    makes small nets tens of times slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
