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
    args: list[str] = field(default_factory=list)  # further command-line arguments
    command: str = "predict"  # or "refine" (inputs: image, segmentation) or "models"
    env: dict[str, str] = field(default_factory=dict)
    # the same mistake through the Python API: called with the checkpoint path, must raise an
    # E2MISegError with this case's exit code and fragment (None: the case has no API form)
    api: Callable[[Path], object] | None = None
    watch: list[Path] = field(default_factory=list)  # files outside the case folder that must survive


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
    return BadInput([d / "two.nii.gz"], 3, "takes 1 input channel [T1_0 (MR)] but was given 2")


def _case_two_files_for_one_channel(d: Path) -> BadInput:
    for n in (0, 1):
        sitk.WriteImage(volume(good_array(seed=n)), str(d / f"case_000{n}.nrrd"))
    return BadInput([d / "case_0000.nrrd", d / "case_0001.nrrd"], 3, "but was given 2 (case_0000.nrrd, case_0001.nrrd)")


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


# ---- issue 21: every path is an input or an output, never both ------------------------------------

def _label_map(d: Path, image: Path) -> Path:
    labels = (sitk.GetArrayFromImage(sitk.ReadImage(str(image))) > 150).astype(np.uint8)
    sitk.WriteImage(volume(labels), str(d / "seg.nii.gz"))
    return d / "seg.nii.gz"


def _api_predict_paths(inputs, output, preview=None, uncertainty=None):
    def call(_checkpoint: Path):
        from e2miseg.paths import check_predict_paths
        return check_predict_paths([Path(p) for p in inputs], Path(output), preview, uncertainty)
    return call


def _case_uncertainty_is_input(d: Path) -> BadInput:
    image = _good_input(d)
    return BadInput([image], 5, "--uncertainty", args=["--uncertainty", str(image)],
                    api=_api_predict_paths([image], d / "out.seg.nrrd", uncertainty=str(image)),
                    notes="was: exit 0 and the input overwritten by the uncertainty map")


def _case_uncertainty_is_output(d: Path) -> BadInput:
    image = _good_input(d)
    return BadInput([image], 5, "is the same file as output", output_name="x.nii.gz", args=["--uncertainty", str(d / "x.nii.gz")],
                    api=_api_predict_paths([image], d / "x.nii.gz", uncertainty=str(d / "x.nii.gz")),
                    notes="was: 'wrote x.nii.gz', exit 0, and x held the uncertainty map")


def _case_regions_is_input(d: Path) -> BadInput:
    image = _good_input(d)
    (d / "u.regions.json").write_text('{"mine": true}')
    return BadInput([image, d / "u.regions.json"], 5, "--uncertainty regions", args=["--uncertainty", str(d / "u.nii.gz")],
                    notes="the .regions.json beside --uncertainty is an output too")


def _case_preview_is_input_hardlink(d: Path) -> BadInput:
    image = _good_input(d)
    (d / "view.png").hardlink_to(image)
    return BadInput([image], 5, "is the input file", args=["--preview", str(d / "view.png")],
                    api=_api_predict_paths([image], d / "out.seg.nrrd", preview=str(d / "view.png")),
                    notes="a hardlink has another name but the same inode")


def _case_output_symlink_to_input(d: Path) -> BadInput:
    image = _good_input(d)
    (d / "out.nrrd").symlink_to(image)
    return BadInput([image], 5, "is the input file", output_name="out.nrrd")


def _case_output_hardlink_of_input(d: Path) -> BadInput:
    image = _good_input(d)
    (d / "out.nrrd").hardlink_to(image)
    return BadInput([image], 5, "is the input file", output_name="out.nrrd")


def _case_detached_data_is_input(d: Path) -> BadInput:
    """-o out.nhdr writes out.raw.gz beside it: that data file must not be an input either."""
    sitk.WriteImage(volume(good_array()), str(d / "scan.nhdr"), useCompression=True)  # scan.nhdr + scan.raw.gz
    (d / "scan.raw.gz").rename(d / "out.raw.gz")
    header = (d / "scan.nhdr").read_text().replace("data file: scan.raw.gz", "data file: out.raw.gz")
    (d / "scan.nhdr").write_text(header)
    return BadInput([d / "scan.nhdr"], 5, "data file out.raw.gz", output_name="out.nhdr",
                    notes="ITK names the data file of out.nhdr out.raw.gz, which here is the input's voxels")


def _case_uncertainty_wrong_type(d: Path) -> BadInput:
    return BadInput([_good_input(d)], 5, "unknown uncertainty output type for u.png", args=["--uncertainty", str(d / "u.png")])


def _case_preview_not_png(d: Path) -> BadInput:
    return BadInput([_good_input(d)], 5, "must be a .png file", args=["--preview", str(d / "p.jpg")])


def _case_fifo_input(d: Path) -> BadInput:
    import os
    os.mkfifo(d / "pipe.nii.gz")
    return BadInput([d / "pipe.nii.gz"], 3, "is a FIFO (named pipe), not an image file",
                    api=lambda ck: _api_read(d / "pipe.nii.gz"), notes="was: hung in open(); SIGTERM ignored")


def _api_read(path: Path):
    from e2miseg.io import read_image
    return read_image(path)


def _case_fifo_in_dicom_folder(d: Path) -> BadInput:
    import os
    folder = write_dicom_series(d / "series", "MR")
    os.mkfifo(folder / "stuck")
    return BadInput([folder], 3, "series/stuck is a FIFO (named pipe)", api=lambda ck: _api_read(folder))


def _case_cohort_output_is_input_folder(d: Path) -> BadInput:
    cases = d / "cases"
    cases.mkdir()
    for n in (1, 2):
        sitk.WriteImage(volume(good_array(seed=n)), str(cases / f"case{n}.nii.gz"))
    return BadInput([cases], 5, "is the folder of the input cases", output_name="cases", args=["--format", ".nii.gz"],
                    notes="was: every case 'already done' (the inputs themselves), exit 0, nothing produced")


def _case_cohort_bad_format(d: Path) -> BadInput:
    cases = d / "cases"
    cases.mkdir()
    sitk.WriteImage(volume(good_array()), str(cases / "case1.nii.gz"))
    return BadInput([cases], 5, "--format xyz is not an output type", output_name="results", args=["--format", "xyz"])


def _refine_case(args_for, code: int, fragment: str, output_name: str = "refined.nii.gz", notes: str = "",
                 seg_origin=None) -> Callable[[Path], BadInput]:
    def build(d: Path) -> BadInput:
        image = _good_input(d)
        seg = _label_map(d, image)
        if seg_origin is not None:
            moved = sitk.ReadImage(str(seg))
            moved.SetOrigin(seg_origin)
            sitk.WriteImage(moved, str(seg))
        return BadInput([image, seg], code, fragment, output_name=output_name, command="refine",
                        args=args_for(d, image, seg), notes=notes)
    return build


# ---- issue 21: numbers and environment variables are checked when they are parsed ------------------

def _flag_case(args: list[str], fragment: str, code: int = 2, env: dict | None = None, notes: str = "",
               api: Callable[[Path], object] | None = None) -> Callable[[Path], BadInput]:
    def build(d: Path) -> BadInput:
        return BadInput([_good_input(d)], code, fragment, args=args, env=env or {}, notes=notes, api=api)
    return build


def _api_predict(**options):
    def call(checkpoint: Path):
        import e2miseg
        model, _ = e2miseg.load_model(checkpoint, device="cpu")
        return e2miseg.predict(volume(good_array()), model, **options)
    return call


def _api_env(name: str, value: str):
    def call(_checkpoint: Path):
        import os
        from e2miseg.environment import check_environment
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            check_environment()
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old
    return call


def _case_models_import_unwritable_store(d: Path) -> BadInput:
    from helpers import make_e2miseg_checkpoint
    (d / "a_file").write_text("x")
    checkpoint = make_e2miseg_checkpoint(d / "tiny.safetensors")
    return BadInput([], 5, "cannot write the model store", command="models", args=["import", str(checkpoint)],
                    env={"E2MISEG_MODELS": str(d / "a_file" / "store")}, notes="was: internal error NotADirectoryError, exit 70")


def _refine_flag(args: list[str], code: int, fragment: str, notes: str = "") -> Callable[[Path], BadInput]:
    return _refine_case(lambda d, i, s: args, code, fragment, notes=notes)


# ---- issue 21: poor messages that now name the fix ------------------------------------------------

def _case_seg_nrrd_as_image(d: Path) -> BadInput:
    sitk.WriteImage(volume(np.zeros((12, 14, 16), np.uint8)), str(d / "x.seg.nrrd"))
    return BadInput([d / "x.seg.nrrd"], 3, "x.seg.nrrd is a Slicer segmentation, not an image",
                    api=_api_checked([d / "x.seg.nrrd"]), notes="was: 'is all zero'")


def _api_checked(inputs):
    def call(checkpoint: Path):
        from e2miseg.checkpoint import read_card
        from e2miseg.validate import read_checked_channels
        return read_checked_channels(inputs, read_card(checkpoint))
    return call


def _case_all_nan_nifti(d: Path) -> BadInput:
    sitk.WriteImage(volume(np.full((12, 14, 16), np.nan, np.float32)), str(d / "nan.nii.gz"))
    return BadInput([d / "nan.nii.gz"], 3, "nan.nii.gz has 2688 NaN voxels (read as zeros by ITK)",
                    api=_api_checked([d / "nan.nii.gz"]), notes="was: 'is all zero'")


def _case_bool_nifti(d: Path) -> BadInput:
    import struct
    sitk.WriteImage(volume((good_array() > 100).astype(np.uint8)), str(d / "b.nii"))
    raw = bytearray((d / "b.nii").read_bytes())
    raw[70:74] = struct.pack("<hh", 1, 1)  # datatype DT_BINARY, bitpix 1
    (d / "b.nii").write_bytes(bytes(raw))
    return BadInput([d / "b.nii"], 3, "b.nii stores 1-bit (binary) voxels", notes="was: raw ITK text")


def _case_dicom_missing_slice(d: Path) -> BadInput:
    folder = write_dicom_series(d / "series", "MR", slices=8)
    (folder / "004.dcm").unlink()
    return BadInput([folder], 3, "series has a gap of 4.00 mm between 003.dcm and 005.dcm", api=lambda ck: _api_read(folder),
                    notes="was: raw ITK warning, exit 0, slices up to 2 mm misplaced")


def _case_dicom_duplicate_slice(d: Path) -> BadInput:
    import shutil
    folder = write_dicom_series(d / "series", "MR", slices=8)
    shutil.copy(folder / "003.dcm", folder / "003b.dcm")
    return BadInput([folder], 3, "series holds two slices at the same position (003.dcm, 003b.dcm)", api=lambda ck: _api_read(folder))


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
    "--uncertainty is the input image": _case_uncertainty_is_input,
    "--uncertainty is -o": _case_uncertainty_is_output,
    "--uncertainty regions file is an input": _case_regions_is_input,
    "--preview is a hardlink of the input": _case_preview_is_input_hardlink,
    "-o is a symlink to the input": _case_output_symlink_to_input,
    "-o is a hardlink of the input": _case_output_hardlink_of_input,
    "-o .nhdr whose data file is an input": _case_detached_data_is_input,
    "--uncertainty of an unknown type": _case_uncertainty_wrong_type,
    "--preview not .png": _case_preview_not_png,
    "FIFO named .nii.gz": _case_fifo_input,
    "FIFO inside a DICOM folder": _case_fifo_in_dicom_folder,
    "cohort output folder = input folder": _case_cohort_output_is_input_folder,
    "cohort --format unknown": _case_cohort_bad_format,
    "refine: --uncertainty is the image": _refine_case(lambda d, i, s: ["--uncertainty", str(i)], 5, "is the input file good.nrrd"),
    "refine: --uncertainty is the segmentation": _refine_case(lambda d, i, s: ["--uncertainty", str(s)], 5, "is the input file seg.nii.gz"),
    "refine: -o is the segmentation": _refine_case(lambda d, i, s: [], 5, "is the input file seg.nii.gz", output_name="seg.nii.gz"),
    "refine: --uncertainty is -o": _refine_case(lambda d, i, s: ["--uncertainty", str(d / "refined.nii.gz")], 5, "is the same file as output"),
    "refine: -o kind differs": _refine_case(lambda d, i, s: [], 5, "must be the same kind as seg.nii.gz", output_name="r.seg.nrrd"),
    "--step 50 (meant as a percentage)": _flag_case(["--step", "50"], "step (--step) 50", api=_api_predict(step=50),
                                        notes="was: exit 0, windows 50 patches apart left gaps"),
    "--step -1": _flag_case(["--step", "-1"], "step (--step) -1.0 is outside 0..1"),
    "--step nan": _flag_case(["--step", "nan"], "step (--step) nan is outside 0..1", api=_api_predict(step=float("nan"))),
    "--step inf": _flag_case(["--step", "inf"], "step (--step) inf is outside 0..1", notes="was: internal error"),
    "--step 0": _flag_case(["--step", "0"], "step (--step) 0.0 is outside 0..1", notes="was: silently the default"),
    "--step 1e-6 (under one voxel)": _flag_case(["--step", "1e-6"], "is under one voxel of model 'test-model''s 16-voxel window",
                                               api=_api_predict(step=1e-6), notes="was: 6,525 windows instead of 28"),
    "--step not a number": _flag_case(["--step", "half"], "argument --step: invalid float value: 'half'"),
    "--min-island-mm3 inf": _flag_case(["--min-island-mm3", "inf"], "min_island_mm3 (--min-island-mm3) inf is outside 0..1e+09",
                                       api=_api_predict(min_island_mm3=float("inf")), notes="was: internal error OverflowError, exit 70"),
    "--min-island-mm3 negative": _flag_case(["--min-island-mm3", "-5"], "min_island_mm3 (--min-island-mm3) -5.0 is outside"),
    "--edge-strength nan": _flag_case(["--refine-edges", "--edge-strength", "nan"], "edge_strength (--edge-strength) nan is outside 0..1"),
    "--batch-size 0": _flag_case(["--batch-size", "0"], "batch_size (--batch-size) 0 is outside 1..4096"),
    "--device nonsense": _flag_case(["--device", "gpu7"], "device (--device) 'gpu7' is not one of"),
    "E2MISEG_MEMORY_LIMIT_MB=inf": _flag_case([], "E2MISEG_MEMORY_LIMIT_MB='inf' is outside", env={"E2MISEG_MEMORY_LIMIT_MB": "inf"},
                                              api=_api_env("E2MISEG_MEMORY_LIMIT_MB", "inf"), notes="was: internal error OverflowError, exit 70"),
    "E2MISEG_MEMORY_LIMIT_MB=abc": _flag_case([], "E2MISEG_MEMORY_LIMIT_MB='abc' is not a number of megabytes",
                                              env={"E2MISEG_MEMORY_LIMIT_MB": "abc"}, api=_api_env("E2MISEG_MEMORY_LIMIT_MB", "abc")),
    "E2MISEG_MEMORY_LIMIT_MB=-1": _flag_case([], "E2MISEG_MEMORY_LIMIT_MB='-1' is outside", env={"E2MISEG_MEMORY_LIMIT_MB": "-1"},
                                             notes="was: `needs 192 MB but -1.0 MB is available`"),
    "E2MISEG_RUNTIME garbage": _flag_case([], "E2MISEG_RUNTIME='fast' is not one of auto, torch, openvino",
                                          env={"E2MISEG_RUNTIME": "fast"}, api=_api_env("E2MISEG_RUNTIME", "fast"),
                                          notes="was: 'unknown runtime' without the variable's name, after the model loaded"),
    "E2MISEG_PRECISION garbage": _flag_case([], "E2MISEG_PRECISION='f64' is not one of", env={"E2MISEG_PRECISION": "f64"}),
    "E2MISEG_MODELS empty": _flag_case([], "E2MISEG_MODELS is set but empty", env={"E2MISEG_MODELS": ""}),
    "WORLD_SIZE garbage": _flag_case([], "WORLD_SIZE='two' is not a whole number", env={"WORLD_SIZE": "two"}),
    "models import, store cannot be created": _case_models_import_unwritable_store,
    "refine: --band-mm nan": _refine_flag(["--band-mm", "nan"], 1, "edge band (--band-mm) nan mm is outside 0..100 mm",
                                          notes="was: internal error ValueError, exit 70"),
    "refine: --band-mm 0": _refine_flag(["--band-mm", "0"], 1, "edge band (--band-mm) 0.0 mm is outside"),
    "refine: --strength inf": _refine_flag(["--strength", "inf"], 1, "edge strength inf is outside 0..1"),
    "refine: --roi nan": _refine_flag(["--roi", "nan,0,0,5,5,5"], 1, "is not six finite numbers; give six comma-separated numbers",
                                      notes="was: internal error ValueError, exit 70"),
    "refine: --roi five numbers": _refine_flag(["--roi", "1,2,3,4,5"], 1, "is not six finite numbers; give six comma-separated numbers"),
    "refine: --roi outside the image": _refine_flag(["--roi", "500,500,500,600,600,600"], 1, "lies outside the image"),
    "refine: --labels absent value": _refine_flag(["--labels", "7"], 1, "label 7 is not in seg.nii.gz"),
    "refine: segmentation on another scan (shifted 50 mm)": _refine_case(
        lambda d, i, s: [], 3, "seg.nii.gz does not lie on good.nrrd", seg_origin=(46.5, 12.0, 40.25),
        notes="was: refined against zero-filled intensities, exit 0"),
    ".seg.nrrd given as the image": _case_seg_nrrd_as_image,
    "all-NaN .nii.gz": _case_all_nan_nifti,
    "1-bit (bool) NIfTI": _case_bool_nifti,
    "DICOM series with a missing slice": _case_dicom_missing_slice,
    "DICOM series with a duplicate slice": _case_dicom_duplicate_slice,
}
