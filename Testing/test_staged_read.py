"""Small .nii.gz inputs are decompressed into a temporary .nii before ITK reads them (io.staged_for_reading):
the image that comes out must be exactly the one ITK reads from the original file."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from e2miseg import io
from e2miseg.card import validate_card
from e2miseg.errors import InputImageError
from e2miseg.validate import read_checked_channels
from conftest import SHARED_DATA, shared_file
from helpers import make_card, small_e2miseg_config


def assert_same_image(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetPixelID() == b.GetPixelID()
    assert a.GetSize() == b.GetSize() and a.GetNumberOfComponentsPerPixel() == b.GetNumberOfComponentsPerPixel()
    np.testing.assert_array_equal(a.GetSpacing(), b.GetSpacing())
    np.testing.assert_array_equal(a.GetOrigin(), b.GetOrigin())
    np.testing.assert_array_equal(a.GetDirection(), b.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


def oblique_image(dtype=np.int16, shape=(9, 12, 10)) -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((rng.normal(size=shape) * 100 + 50).astype(dtype))
    image.SetSpacing((0.7, 1.3, 2.9))
    image.SetOrigin((-12.5, 40.25, 3.0))
    angle = 0.3
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, -1))
    return image


def staged_read(path: Path) -> tuple[sitk.Image, list]:
    with io.staged_for_reading([path]) as sources:
        image = io.read_image(sources[0])
        kept = list(sources)
    return image, kept


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_staged_read_is_itks_read_of_the_original(tmp_path, dtype):
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(oblique_image(dtype), str(path), useCompression=True)
    image, sources = staged_read(path)
    assert sources[0] != path and not Path(sources[0]).exists()  # staged, and cleaned up afterwards
    assert_same_image(image, sitk.ReadImage(str(path)))


@pytest.mark.parametrize("inflate", ["isal", "zlib"])
def test_scaled_and_multi_member_files_read_as_itk_reads_them(tmp_path, monkeypatch, inflate):
    """With ISA-L's inflate (installed with the engine) and with the standard library's zlib it falls back to."""
    if inflate == "zlib":
        import zlib

        monkeypatch.setattr(io, "_inflate", zlib)
    else:
        assert io._inflate.__name__.startswith("isal")  # a dependency: the fast path must be the one tested
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(oblique_image(np.int16), str(plain))
    header = bytearray(plain.read_bytes())
    header[112:120] = np.array([0.5, -3.0], dtype="<f4").tobytes()  # scl_slope, scl_inter: ITK rescales
    data = bytes(header)
    path = tmp_path / "scaled.nii.gz"
    path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))  # two gzip members
    image, sources = staged_read(path)
    assert sources[0] != path
    reference = sitk.ReadImage(str(path))
    assert reference.GetPixelID() == sitk.sitkFloat32  # the scaling really is in play
    assert_same_image(image, reference)


def test_truncated_large_and_other_files_are_left_to_itk(tmp_path):
    path = tmp_path / "cut.nii.gz"
    sitk.WriteImage(oblique_image(), str(path), useCompression=True)
    path.write_bytes(path.read_bytes()[:-40])
    nrrd = tmp_path / "case.nrrd"
    sitk.WriteImage(oblique_image(), str(nrrd), useCompression=True)
    big = tmp_path / "big.nii.gz"
    sitk.WriteImage(oblique_image(np.float32, (40, 120, 120)), str(big), useCompression=True)  # 2.3 MB voxels
    memory = oblique_image()
    with io.staged_for_reading([path, nrrd, big, memory]) as sources:
        assert sources == [path, nrrd, big, memory]
    with pytest.raises(InputImageError, match="cut.nii.gz"):
        read_checked_channels(path, validate_card(make_card(config=small_e2miseg_config())))


def test_messages_name_the_users_file_and_the_copy_is_removed_on_errors(tmp_path, monkeypatch):
    copies = []
    original = io._staged_copy
    monkeypatch.setattr(io, "_staged_copy", lambda data: copies.append(original(data)) or copies[-1])
    flat = sitk.GetImageFromArray(np.zeros((6, 7), np.float32))  # a 2D, all-zero image
    path = tmp_path / "my scan.nii.gz"
    sitk.WriteImage(flat, str(path), useCompression=True)
    with pytest.raises(InputImageError, match=r"my scan\.nii\.gz"):
        read_checked_channels(path, validate_card(make_card(config=small_e2miseg_config())))
    assert copies and not copies[0].exists()


def test_unwritable_temporary_space_reads_the_original(tmp_path, monkeypatch):
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(oblique_image(), str(path), useCompression=True)
    monkeypatch.setattr(io, "_staged_copy", lambda data: (_ for _ in ()).throw(PermissionError("read-only")))
    with io.staged_for_reading([path]) as sources:
        assert sources == [path]


def test_real_volumes_stage_to_the_same_image():
    shared_file("")  # the real data must be beside the project
    files = [next((SHARED_DATA / name / "imagesTr").glob("*.nii.gz"), None) for name in
             ("Task04_Hippocampus", "LeftAtrium2018", "ACDC")]
    files = [f for f in files if f is not None]
    assert files
    for path in files:
        image, sources = staged_read(path)
        assert sources[0] != path, f"{path.name} was not staged"
        assert_same_image(image, sitk.ReadImage(str(path)))
