"""Shared fixtures: paths to the real data beside the project and small synthetic volumes."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "E2MISegModule"))  # the engine and the Slicer logic, without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARED_DATA = ROOT.parent / "shared" / "data"
# Converting each throw-away test network for OpenVINO would cost tens of seconds per network:
# tests run the PyTorch runtime unless they ask for OpenVINO (test_runtime.py), and never write
# conversion caches into the user's home.
os.environ.setdefault("E2MISEG_RUNTIME", "torch")
os.environ.setdefault("E2MISEG_CACHE", tempfile.mkdtemp(prefix="e2miseg-test-cache-"))
FIXTURES = SHARED_DATA / "fixtures"


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: the real data in ../shared/data is not beside this checkout")
    return path


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
