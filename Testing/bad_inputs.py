"""Bad inputs, made on the fly: one builder per case, shared by the CLI and the Slicer-logic tables.

Each builder writes what the case needs into ``folder`` and returns a ``BadInput``: the input
paths, the output path, the exit code and the message fragment the engine must produce. Headers
SimpleITK refuses to write (negative or zero spacing, skewed directions, zero sizes, huge sizes)
are written as MetaImage/NRRD text by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk


@dataclass
class BadInput:
    inputs: list[Path]
    code: int
    fragment: str
    output_name: str = "out.seg.nrrd"
    model: str | None = None  # None: the tiny test checkpoint
    notes: str = ""
    extra: dict = field(default_factory=dict)


def volume(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-3.5, 12.0, 40.25))
    return image


def good_array(shape=(12, 14, 16), seed: int = 0) -> np.ndarray:
    array = np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)
    if array.ndim == 3:
        array[3:8, 4:10, 5:11] += 80
    return array


def write_mha(path: Path, dim_size: str, spacing: str = "1 1 1", matrix: str = "1 0 0 0 1 0 0 0 1",
              data: bytes | None = None) -> Path:
    """A MetaImage written as text, so its header can say what no writer would allow."""
    count = int(np.prod([max(int(v), 0) for v in dim_size.split()]))
    header = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"TransformMatrix = {matrix}\nOffset = 0 0 0\nElementSpacing = {spacing}\nDimSize = {dim_size}\n"
              f"ElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    body = data if data is not None else np.random.default_rng(0).normal(100, 20, count).astype(np.float32).tobytes()
    path.write_bytes(header.encode() + body)
    return path


def write_huge_nrrd(path: Path, size: int = 4000) -> Path:
    """An NRRD header claiming size**3 float voxels followed by a few bytes: refusing it must not read them."""
    header = (f"NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: {size} {size} {size}\n"
              f"space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nendian: little\nencoding: raw\n\n")
    path.write_bytes(header.encode() + b"\0" * 64)
    return path


def write_dicom_series(folder: Path, modality: str = "CT", slices: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(0).normal(100, 20, (slices, 16, 16)).astype(np.int16)
    image = volume(array, (0.8, 0.8, 2.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(slices):
        plane = image[:, :, k]
        for tag, value in [("0008|0060", modality), ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.42"),
                           ("0020|000d", "1.2.826.0.1.3680043.2.1125.1.43"), ("0020|0013", str(k + 1)),
                           ("0020|0032", f"0\\0\\{2.0 * k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|0030", "0.8\\0.8")]:
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(plane)
    return folder


def _case_missing(d: Path) -> BadInput:
    return BadInput([d / "no_such_case.nii.gz"], 3, "does not exist; check the path")


def _case_empty_folder(d: Path) -> BadInput:
    (d / "empty").mkdir()
    return BadInput([d / "empty"], 3, "is a folder with no DICOM series or images")


def _case_not_an_image(d: Path) -> BadInput:
    (d / "report.txt").write_text("Patient report\n" * 20)
    return BadInput([d / "report.txt"], 3, "is not an image file E2MISeg can read")


def _case_text_named_nifti(d: Path) -> BadInput:
    (d / "fake.nii.gz").write_bytes(b"<html>login expired</html>\n" * 10)
    return BadInput([d / "fake.nii.gz"], 3, "is not an image file E2MISeg can read")


def _case_truncated_nifti(d: Path) -> BadInput:
    sitk.WriteImage(volume(np.random.default_rng(3).random((24, 24, 24)).astype(np.float32)), str(d / "full.nii.gz"))
    blob = (d / "full.nii.gz").read_bytes()
    (d / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    (d / "full.nii.gz").unlink()
    return BadInput([d / "cut.nii.gz"], 3, "is truncated")


def _case_truncated_mha(d: Path) -> BadInput:
    write_mha(d / "cut.mha", "16 16 16", data=good_array((8, 16, 16)).tobytes())  # half the voxels
    return BadInput([d / "cut.mha"], 3, "is truncated")


def _case_2d_for_3d(d: Path) -> BadInput:
    sitk.WriteImage(sitk.GetImageFromArray(good_array((40, 40))), str(d / "slice.nrrd"))
    return BadInput([d / "slice.nrrd"], 3, "is a single 2D slice")


def _case_4d_wrong_channels(d: Path) -> BadInput:
    sitk.WriteImage(sitk.JoinSeries([volume(good_array(seed=1)), volume(good_array(seed=2))]), str(d / "two.nii.gz"))
    return BadInput([d / "two.nii.gz"], 3, "needs 1 input channel(s) [T1_0 (MR)] but got 2")


def _case_two_files_for_one_channel(d: Path) -> BadInput:
    for n in (0, 1):
        sitk.WriteImage(volume(good_array(seed=n)), str(d / f"case_000{n}.nrrd"))
    return BadInput([d / "case_0000.nrrd", d / "case_0001.nrrd"], 3, "but got 2")


def _case_zero_size(d: Path) -> BadInput:
    return BadInput([write_mha(d / "zero.mha", "16 0 16", data=b"")], 3, "has a zero-size dimension")


def _case_sub_voxel(d: Path) -> BadInput:
    sitk.WriteImage(volume(good_array((2, 2, 2)), (0.1, 0.1, 0.1)), str(d / "speck.nrrd"))
    return BadInput([d / "speck.nrrd"], 3, "is smaller than one voxel at the model's spacing")


def _intensity_case(name: str, array: np.ndarray, fragment: str) -> Callable[[Path], BadInput]:
    def build(d: Path) -> BadInput:
        sitk.WriteImage(volume(array), str(d / f"{name}.nrrd"))
        return BadInput([d / f"{name}.nrrd"], 3, fragment)
    return build


def _with(array: np.ndarray, index, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


def _case_negative_spacing(d: Path) -> BadInput:
    return BadInput([write_mha(d / "neg.mha", "12 12 12", spacing="-1 1 1")], 3, "has invalid voxel spacing (-1.0, 1.0, 1.0)")


def _case_zero_spacing(d: Path) -> BadInput:
    return BadInput([write_mha(d / "flat.mha", "12 12 12", spacing="1 0 1")], 3, "has invalid voxel spacing (1.0, 0.0, 1.0)")


def _case_skewed_direction(d: Path) -> BadInput:
    return BadInput([write_mha(d / "skew.mha", "12 12 12", matrix="1 0 0 0.5 1 0 0 0 1")], 3, "non-orthonormal direction")


def _case_huge(d: Path) -> BadInput:
    return BadInput([write_huge_nrrd(d / "huge.nrrd")], 6, "GB of memory but")


def _case_modality(d: Path) -> BadInput:
    return BadInput([write_dicom_series(d / "ct_series", "CT")], 3, "is a CT image but model 'test-model' expects MR")


def _good_input(d: Path) -> Path:
    sitk.WriteImage(volume(good_array()), str(d / "good.nrrd"))
    return d / "good.nrrd"


def _case_unknown_extension(d: Path) -> BadInput:
    return BadInput([_good_input(d)], 5, "unknown output type for out.xyz", output_name="out.xyz")


def _case_output_is_input(d: Path) -> BadInput:
    return BadInput([_good_input(d)], 5, "is the input file", output_name="good.nrrd")


def _case_output_under_a_file(d: Path) -> BadInput:
    (d / "notafolder").write_text("x")
    return BadInput([_good_input(d)], 5, "is a file, not a folder", output_name="notafolder/out.seg.nrrd")


def _case_output_is_a_folder(d: Path) -> BadInput:
    (d / "out.seg.nrrd").mkdir()
    return BadInput([_good_input(d)], 5, "is a folder; give a file name inside it")


def _case_wrong_model_name(d: Path) -> BadInput:
    return BadInput([_good_input(d)], 4, "no model named 'no-such-model'", model="no-such-model")


CASES: dict[str, Callable[[Path], BadInput]] = {
    "missing file": _case_missing,
    "folder with no images": _case_empty_folder,
    "non-image file": _case_not_an_image,
    "text file named .nii.gz": _case_text_named_nifti,
    "truncated .nii.gz": _case_truncated_nifti,
    "truncated .mha": _case_truncated_mha,
    "2D image for a 3D model": _case_2d_for_3d,
    "4D image, wrong channel count": _case_4d_wrong_channels,
    "two files for a 1-channel model": _case_two_files_for_one_channel,
    "zero-size dimension": _case_zero_size,
    "smaller than one target voxel": _case_sub_voxel,
    "all-zero volume": _intensity_case("zeros", np.zeros((12, 14, 16), np.float32), "is all zero: there is nothing to segment"),
    "constant volume": _intensity_case("constant", np.full((12, 14, 16), 7.0, np.float32), "is constant (7.0)"),
    "NaN voxels": _intensity_case("nan", _with(good_array(), (1, 2, 3), np.nan), "has 1 NaN or infinite voxels"),
    "Inf voxels": _intensity_case("inf", _with(good_array(), (slice(0, 2), 2, 3), np.inf), "has 2 NaN or infinite voxels"),
    "negative spacing": _case_negative_spacing,
    "zero spacing": _case_zero_spacing,
    "non-orthonormal direction": _case_skewed_direction,
    "huge volume (header only)": _case_huge,
    "CT series for an MR model": _case_modality,
    "unknown output extension": _case_unknown_extension,
    "output path equals input": _case_output_is_input,
    "output folder is a file": _case_output_under_a_file,
    "output path is a folder": _case_output_is_a_folder,
    "wrong model name": _case_wrong_model_name,
}
