"""Orientation and spacing are sacred: every path round-trips the input geometry."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import oblique_image
from e2miseg.card import validate_card
from e2miseg.io import read_channels, write_labelmap
from e2miseg.postprocess import labels_on_input_grid, probability_image
from e2miseg.preprocess import preprocess
from helpers import make_card


def assert_same_geometry(a: sitk.Image, b: sitk.Image, atol: float = 0.0):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol, rtol=0)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol, rtol=0)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=atol, rtol=0)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_file_round_trip_keeps_oblique_anisotropic_geometry(tmp_path, suffix):
    image = oblique_image()
    path = tmp_path / f"img{suffix}"
    sitk.WriteImage(image, str(path))
    (back,) = read_channels(path)
    # NIfTI stores the affine in float32; NRRD and MHA keep doubles
    assert_same_geometry(image, back, atol=1e-4 if suffix == ".nii.gz" else 1e-12)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))


def test_four_d_file_is_split_into_channels(tmp_path):
    a, b = oblique_image(seed=1), oblique_image(seed=2)
    joined = sitk.JoinSeries([a, b])
    path = tmp_path / "two_channel.nii.gz"
    sitk.WriteImage(joined, str(path))
    channels = read_channels(path)
    assert len(channels) == 2
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(channels[1]), sitk.GetArrayViewFromImage(b))
    assert_same_geometry(channels[0], a, atol=1e-4)


def _one_hot_channels(labels: sitk.Image, classes: int) -> list[sitk.Image]:
    array = sitk.GetArrayViewFromImage(labels)
    out = []
    for k in range(classes):
        channel = sitk.GetImageFromArray((array == k).astype(np.float32))
        channel.CopyInformation(labels)
        out.append(channel)
    return out


@pytest.mark.parametrize("target", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.9), (2.0, 0.5, 1.5)])
def test_probabilities_resampled_back_land_on_the_input_grid(target):
    """Resample one-hot 'probabilities' to a target spacing and back: labels and geometry survive."""
    reference = oblique_image(size=(40, 36, 24))
    labels = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    labels[4:18, 6:30, 8:30] = 1
    labels[8:14, 12:22, 12:20] = 2
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(reference)
    card = make_card(spacing=target, channels=3)
    card["preprocessing"]["normalization"] = {"scheme": "none"}
    array, grid = preprocess(_one_hot_channels(label_image, 3), validate_card(card))
    back = labels_on_input_grid(array, grid, reference)
    assert_same_geometry(back, reference)
    agreement = np.mean(sitk.GetArrayViewFromImage(back) == labels)
    assert agreement > 0.97
    probs = probability_image(array, grid, reference)
    assert_same_geometry(probs, reference)
    assert probs.GetNumberOfComponentsPerPixel() == 3


def test_crop_to_nonzero_restores_full_grid():
    reference = oblique_image(size=(30, 30, 20))
    array = np.zeros(reference.GetSize()[::-1], dtype=np.float32)
    array[5:12, 7:20, 3:25] = 1.0
    array[8, 10, 10] = 0.0  # a hole inside the box stays background
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    card = make_card(spacing=None)
    card["preprocessing"].update(crop_to_nonzero=True, normalization={"scheme": "none"})
    net_array, grid = preprocess([image], validate_card(card))
    assert net_array.shape == (1, 7, 13, 22)
    assert (grid.crop_start_zyx, grid.crop_stop_zyx) == ((5, 7, 3), (12, 20, 25))
    probs = np.concatenate([1.0 - net_array, net_array])
    back = labels_on_input_grid(probs, grid, reference)
    assert_same_geometry(back, reference)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), array.astype(np.uint8))


def test_labelmap_writer_keeps_geometry(tmp_path):
    reference = oblique_image()
    labels = sitk.Cast(reference > 150, sitk.sitkUInt8)
    out = tmp_path / "labels.nrrd"
    write_labelmap(labels, out)
    back = sitk.ReadImage(str(out))
    assert_same_geometry(back, reference, atol=1e-12)  # NRRD stores spacing x direction as text
    assert back.GetPixelID() == sitk.sitkUInt8
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind
