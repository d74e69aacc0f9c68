"""Reading images and writing results, with geometry carried through untouched.

Images are SimpleITK images; a multi-channel input is a list of scalar 3D images on one grid
(several files, one 4D file, or one vector-pixel file). Outputs are written to a temporary file in
the destination folder and renamed into place, so a reader never sees a half-written file and an
existing output survives any failure.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from .card import terminology_tag
from .errors import InputImageError, OutputError

LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION_SUFFIX = ".seg.nrrd"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages start with a file/line location; the description is the useful part
    for line in lines:
        if line.startswith("Description:"):
            return line[len("Description:"):].strip()
    return lines[-1] if lines else type(exc).__name__


def suffix_of(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    for suffix in (SEGMENTATION_SUFFIX,) + LABELMAP_SUFFIXES + IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputImageError(f"{folder} is a folder with no DICOM series or images; point to an image file or a DICOM series folder")
    if len(series) > 1:
        raise InputImageError(f"{folder} holds {len(series)} DICOM series; put one series per folder")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read one file (NIfTI, NRRD, MHA, ...) or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"{path} does not exist; check the path")
    try:
        if path.is_dir():
            return _read_dicom_folder(path)
        return sitk.ReadImage(str(path))
    except InputImageError:
        raise
    except RuntimeError as exc:
        raise InputImageError(f"{path.name} cannot be read as an image ({_first_line(exc)}); the file may be truncated or not an image") from None


def split_channels(image: sitk.Image) -> list[sitk.Image]:
    """One scalar image per channel: a 4D image is split along its 4th axis, a vector image by component."""
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        channels = []
        for c in range(size[3]):
            channels.append(sitk.Extract(image, size[:3] + [0], [0, 0, 0, c], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX))
        return channels
    if image.GetNumberOfComponentsPerPixel() > 1:
        return [sitk.VectorIndexSelectionCast(image, c) for c in range(image.GetNumberOfComponentsPerPixel())]
    return [image]


def as_volume(image: sitk.Image, name: str) -> sitk.Image:
    """A 3D image; a single 2D slice becomes a one-slice volume (for 2D/2.5D models)."""
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputImageError(f"{name} has {image.GetDimension()} dimensions; give a 3D volume (or a 4D image whose 4th axis is channels)")
    return image


def read_channels(images: Sequence[str | os.PathLike | sitk.Image] | str | os.PathLike | sitk.Image) -> list[sitk.Image]:
    """Read the model's input channels from paths or images; all must share one grid."""
    if isinstance(images, (str, os.PathLike, sitk.Image)):
        images = [images]
    channels: list[tuple[str, sitk.Image]] = []
    for item in images:
        name = Path(item).name if not isinstance(item, sitk.Image) else "input image"
        image = read_image(item) if not isinstance(item, sitk.Image) else item
        channels.extend((name, ch) for ch in split_channels(image))
    volumes = [as_volume(image, name) for name, image in channels]
    reference = volumes[0]
    for (name, _), volume in zip(channels[1:], volumes[1:]):
        if not same_grid(reference, volume):
            raise InputImageError(f"{name} is not on the same grid as the first channel; resample the channels onto one grid first")
    return volumes


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance))


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) to LPS millimetres (SimpleITK's physical space is LPS)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist; create it or choose another output path")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder {folder} is not writable; choose a folder you can write to")
    suffix = suffix_of(path)
    tmp = folder / f".{path.name[: -len(suffix)] if suffix else path.name}.{os.getpid()}.{id(path)}.tmp{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); check free space and permissions") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_labelmap(label: sitk.Image, path: str | os.PathLike) -> None:
    if suffix_of(path) not in LABELMAP_SUFFIXES:
        raise OutputError(f"unknown output type for {Path(path).name}; use .seg.nrrd, .nii.gz, .nii, .nrrd or .mha")
    with atomic_output(path) as tmp:
        sitk.WriteImage(label, str(tmp), useCompression=True)


def segmentation_dict(label: sitk.Image, card: dict[str, Any]) -> dict[str, Any]:
    """A slicerio segmentation (one layer, one segment per model label) on the label image's grid."""
    from scipy.ndimage import find_objects

    voxels_kji = sitk.GetArrayViewFromImage(label)
    extents = find_objects(voxels_kji)  # one pass for all labels instead of one np.nonzero per label
    segments = []
    for entry in card["labels"]:
        value = entry["value"]
        box = extents[value - 1] if value - 1 < len(extents) else None
        # slicerio's extent is in (i, j, k) order; the array is (k, j, i)
        extent = [0, -1, 0, -1, 0, -1] if box is None else [
            box[2].start, box[2].stop - 1, box[1].start, box[1].stop - 1, box[0].start, box[0].stop - 1]
        segment = {"id": entry["name"], "name": entry["name"], "color": list(entry["color"]),
                   "labelValue": value, "layer": 0, "extent": extent,
                   "tags": {"e2miseg.model": f"{card['name']}-{card['version']}"}}
        tag = terminology_tag(entry)
        if tag:
            segment["tags"]["TerminologyEntry"] = tag
        segments.append(segment)
    return {"voxels": np.ascontiguousarray(voxels_kji.transpose(2, 1, 0)), "ijkToLPS": ijk_to_lps(label),
            "segments": segments, "containedRepresentationNames": ["Binary labelmap"],
            "masterRepresentation": "Binary labelmap"}


def write_segmentation(label: sitk.Image, card: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a Slicer ``.seg.nrrd``: segment names, colours, terminology, input geometry."""
    import slicerio

    segmentation = segmentation_dict(label, card)
    with atomic_output(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=1)


def write_result(label: sitk.Image, card: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a ``.seg.nrrd`` or a label map, chosen by the output's extension."""
    if suffix_of(path) == SEGMENTATION_SUFFIX:
        write_segmentation(label, card, path)
    else:
        write_labelmap(label, path)
