"""Reading images and writing results, with geometry carried through untouched.

Images are SimpleITK images; a multi-channel input is a list of scalar 3D images on one grid
(several files, one 4D file, or one vector-pixel file). Outputs are written to a temporary file in
the destination folder and renamed into place, so a reader never sees a half-written file and an
existing output survives any failure.
"""
from __future__ import annotations

import errno
import gzip
import os
import re
import shutil
import struct
import tempfile
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

try:  # Intel's ISA-L inflate: twice zlib's speed (LA_1MHB 300 kB: 0.75 against 1.6 ms); same bytes
    from isal import isal_zlib as _inflate
except ImportError:  # not installed: the standard library's zlib
    _inflate = zlib

from .card import terminology_tag
from .errors import InputImageError, OutputError
from .paths import check_folder_entries, check_readable

LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION_SUFFIX = ".seg.nrrd"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages start with a file/line location; the description is the useful part
    for line in lines:
        if line.startswith("Description:"):
            return line[len("Description:"):].strip()
    line = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^(sitk|itk)::ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", line)


def _nifti_datatype(path: Path) -> int | None:
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as handle:
            head = handle.read(348)
    except (OSError, EOFError, zlib.error):
        return None
    for endian in "<>":
        if len(head) == 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            return struct.unpack(endian + "h", head[70:72])[0]
    return None


def _refuse_binary_nifti(path: Path) -> None:
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")) and _nifti_datatype(path) == 1:
        raise InputImageError(f"{path.name} stores 1-bit (binary) voxels, which ITK cannot read; save it as uint8 "
                              f"(e.g. nibabel: img.set_data_dtype('uint8'))")


def _unreadable(path: Path, exc: RuntimeError) -> InputImageError:
    detail = _first_line(exc)
    if "Unable to determine ImageIO reader" in detail:
        return InputImageError(f"{path.name} is not an image file E2MISeg can read; export it as .nii.gz, .nrrd, .mha or a DICOM series")
    return InputImageError(f"{path.name} cannot be read as an image ({detail}); the file may be truncated or not an image")


@dataclass(frozen=True)
class ImageHeader:
    """What a file says about its image, read without loading a voxel (so bad or huge inputs fail cheaply)."""

    name: str
    dimension: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major, dimension x dimension
    components: int = 1
    bytes_per_component: int = 4
    modality: str | None = None  # DICOM (0008,0060) when the file carries it

    @property
    def channels(self) -> int:
        return self.size[3] if self.dimension == 4 else self.components

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Spatial size; a 2D image is a one-slice volume (as ``as_volume`` makes it)."""
        return tuple(self.size[:3]) if self.dimension >= 3 else tuple(self.size[:2]) + (1,) * (3 - self.dimension)

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        return tuple(self.spacing[:3]) if self.dimension >= 3 else tuple(self.spacing[:2]) + (1.0,) * (3 - self.dimension)

    @property
    def direction_3x3(self) -> np.ndarray:
        full = np.array(self.direction, dtype=float).reshape(self.dimension, self.dimension)
        matrix = np.eye(3)
        n = min(3, self.dimension)
        matrix[:n, :n] = full[:n, :n]
        return matrix


def _component_bytes(pixel_id: int) -> int:
    text = sitk.GetPixelIDValueAsString(pixel_id)
    match = re.search(r"(\d+)-bit", text)
    bits = int(match.group(1)) if match else 64
    return bits // 8 * (2 if "complex" in text else 1)


def header_of(image: sitk.Image, name: str = "input image") -> ImageHeader:
    return ImageHeader(name, image.GetDimension(), tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                       tuple(image.GetDirection()), image.GetNumberOfComponentsPerPixel(), _component_bytes(image.GetPixelID()))


def _header_from_reader(reader: sitk.ImageFileReader, name: str, slices: int | None = None) -> ImageHeader:
    modality = reader.GetMetaData("0008|0060").strip() or None if reader.HasMetaDataKey("0008|0060") else None
    size = tuple(reader.GetSize())
    if slices is not None:  # a DICOM series: one file's header, as many slices as files
        size = size[:2] + (slices,)
    return ImageHeader(name, len(size), size, tuple(reader.GetSpacing())[:len(size)], tuple(reader.GetOrigin())[:len(size)],
                       tuple(reader.GetDirection()) if len(size) == reader.GetDimension() else tuple(np.eye(len(size)).ravel()),
                       reader.GetNumberOfComponents(), _component_bytes(reader.GetPixelID()), modality)


def read_header(item: str | os.PathLike | sitk.Image) -> ImageHeader:
    """The header of an image file, DICOM series folder or in-memory image; no voxel data is read."""
    if isinstance(item, sitk.Image):
        return header_of(item)
    path = Path(item)
    check_readable(path)
    _refuse_binary_nifti(path)  # before ITK: its NIfTI library prints its own error text for them
    reader = sitk.ImageFileReader()
    try:
        if path.is_dir():
            files = _dicom_series_files(path)
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
            return _header_from_reader(reader, path.name, len(files))
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(path, exc) from None
    return _header_from_reader(reader, path.name)


# ---- truncation: ITK reads a cut-short NIfTI without complaint and fills the rest with garbage ----

_META_BYTES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
               "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _nifti_expected_bytes(head: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file must hold (header, extensions, voxels), or None if the header is not NIfTI."""
    if len(head) < 540:
        head = head + b"\0" * (540 - len(head))
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", head[:4])
        if sizeof_hdr == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            (bitpix,) = struct.unpack(endian + "h", head[72:74])
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if sizeof_hdr == 540:
            dims = struct.unpack(endian + "8q", head[16:80])
            (bitpix,) = struct.unpack(endian + "h", head[14:16])
            (offset,) = struct.unpack(endian + "q", head[168:176])
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or any(d <= 0 for d in dims[1:dims[0] + 1]):
        return None  # leave odd headers to ITK, which names their problem
    return max(offset, sizeof_hdr) + int(np.prod(dims[1:dims[0] + 1], dtype=np.int64)) * bitpix // 8


def _truncated(path: Path, have: int, expected: int) -> InputImageError:
    return InputImageError(f"{path.name} is truncated: it holds {have} of the {expected} bytes its header promises; "
                           f"copy or export the file again")


def _check_nifti_complete(path: Path, compressed: bool) -> None:
    if not compressed:
        with open(path, "rb") as f:
            expected = _nifti_expected_bytes(f.read(540))
        if expected is not None and path.stat().st_size < expected:
            raise _truncated(path, path.stat().st_size, expected)
        return
    try:
        with gzip.open(path, "rb") as f:
            expected = _nifti_expected_bytes(f.read(540))
    except (OSError, EOFError, zlib.error):
        return  # not gzip at all: ITK gives the better message
    if expected is None:
        return
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        (stored_size,) = struct.unpack("<I", f.read(4))  # gzip trailer: uncompressed size mod 2**32
    if stored_size == expected % (1 << 32):
        return
    # The trailer disagrees: a truncated stream, or a multi-member / padded one. Decompress to know.
    total, stream = 0, zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                while block:
                    total += len(stream.decompress(block, 1 << 24))
                    block = stream.unconsumed_tail
                    if stream.eof and stream.unused_data:  # the next gzip member
                        block, stream = stream.unused_data + block, zlib.decompressobj(wbits=31)
    except zlib.error as exc:
        raise InputImageError(f"{path.name} is a damaged gzip file ({exc}); copy or export it again") from None
    if not stream.eof or total < expected:
        raise _truncated(path, total, expected)


def _check_meta_complete(path: Path) -> None:
    """MetaImage with LOCAL data: the data after the header must be as long as the header says."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    fields: dict[str, str] = {}
    offset = 0
    for raw in head.split(b"\n"):
        offset += len(raw) + 1
        key, _, value = raw.decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        return
    if fields.get("ElementDataFile") != "LOCAL":
        return
    have = path.stat().st_size - offset
    if fields.get("CompressedData", "False").lower() == "true":
        expected = int(fields["CompressedDataSize"]) if fields.get("CompressedDataSize", "").isdigit() else None
    else:
        try:
            count = int(np.prod([int(v) for v in fields["DimSize"].split()], dtype=np.int64))
            expected = count * int(fields.get("ElementNumberOfChannels", "1")) * _META_BYTES[fields["ElementType"]]
        except (KeyError, ValueError):
            expected = None
    if expected is not None and have < expected:
        raise _truncated(path, max(have, 0), expected)


def _refuse_nifti_nan(path: Path) -> None:
    """Count NaN voxels in a float NIfTI-1 file's own bytes (ITK hands them over as zeros)."""
    opener = gzip.open if suffix_of(path) == ".nii.gz" else open
    with opener(path, "rb") as handle:
        head = handle.read(348)
        for endian in "<>":
            if len(head) == 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
                break
        else:
            return
        (datatype,) = struct.unpack(endian + "h", head[70:72])
        dtype = {16: np.dtype(endian + "f4"), 64: np.dtype(endian + "f8")}.get(datatype)
        if dtype is None:
            return
        handle.read(max(0, int(struct.unpack(endian + "f", head[108:112])[0]) - 348))
        nans = 0
        for block in iter(lambda: handle.read(1 << 22), b""):
            nans += int(np.isnan(np.frombuffer(block[: len(block) // dtype.itemsize * dtype.itemsize], dtype)).sum())
    if nans:
        raise InputImageError(f"{path.name} has {nans} NaN voxels (read as zeros by ITK); fix or mask them before segmenting")


def check_complete(path: str | os.PathLike) -> None:
    """Refuse a file whose voxel data is shorter than its header promises (NIfTI and MetaImage)."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix in (".nii", ".nii.gz"):
        _check_nifti_complete(path, suffix == ".nii.gz")
    elif suffix == ".mha":
        _check_meta_complete(path)


# ---- small .nii.gz inputs: ITK's NIfTI reader spends ~10 ms on any gzip stream, however short ----

# Decompressed sizes up to this are staged; above it ITK's own gzip reading is the faster one
# (1.3 MB: 12.1 ms through ITK, 5.8 ms staged; 13 MB: 62 ms vs 89 ms).
_STAGE_MAX_BYTES = 2 << 20


def _small_nifti_bytes(path: Path) -> bytes | None:
    """The decompressed bytes of a small, complete single-file .nii.gz; None for anything else
    (which then takes ITK's own path and gets its error messages)."""
    if suffix_of(path) != ".nii.gz" or not path.is_file() or path.stat().st_size > _STAGE_MAX_BYTES:
        return None
    try:
        raw = path.read_bytes()
        parts, total, rest = [], 0, raw
        while rest:  # gzip members one after another, never more than the limit in memory
            stream = _inflate.decompressobj(wbits=31)
            parts.append(stream.decompress(rest, _STAGE_MAX_BYTES + 1 - total))
            total += len(parts[-1])
            if total > _STAGE_MAX_BYTES or not stream.eof:
                return None  # too large, or truncated
            rest = stream.unused_data
    except (OSError, zlib.error, _inflate.error):
        return None
    data = b"".join(parts)
    expected = _nifti_expected_bytes(data[:540])
    return data if expected is not None and len(data) >= expected else None


def _staged_copy(data: bytes) -> Path:
    """``data`` in a new temporary .nii file, memory-backed where there is such a place."""
    shm = Path("/dev/shm")
    handle, name = tempfile.mkstemp(prefix="e2miseg-read-", suffix=".nii",
                                    dir=str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
    except OSError:
        os.unlink(name)
        raise
    return Path(name)


@contextmanager
def staged_for_reading(items: Sequence[str | os.PathLike | sitk.Image]) -> Iterator[list]:
    """``items`` with each small .nii.gz replaced by an uncompressed temporary copy (deleted on
    exit), so ITK reads it ~10x faster (LA_1MHB 300 kB: 11.5 -> 0.7 ms plus 1.4 ms of Python's zlib).
    ITK still reads header and voxels: geometry and pixel handling are its own. The copy's name is
    not the user's: messages must name the original. Anything else is passed through unchanged."""
    staged: list = []
    copies: list[Path] = []
    try:
        for item in items:
            data = None if isinstance(item, sitk.Image) else _small_nifti_bytes(Path(item))
            if data is None:
                staged.append(item)
                continue
            try:
                copies.append(_staged_copy(data))
                staged.append(copies[-1])
            except OSError:  # no writable temporary space: read the original
                staged.append(item)
        yield staged
    finally:
        for copy in copies:
            copy.unlink(missing_ok=True)


def suffix_of(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    for suffix in (SEGMENTATION_SUFFIX,) + LABELMAP_SUFFIXES + IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def _dicom_series_files(folder: Path) -> list[str]:
    check_folder_entries(folder)  # GDCM opens every file: a FIFO in the folder would block it
    # GDCM prints an ITK warning for a folder without series; the error below says it in one line
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if not series:
        raise InputImageError(f"{folder} is a folder with no DICOM series or images; point to an image file or a DICOM series folder")
    if len(series) > 1:
        raise InputImageError(f"{folder} holds {len(series)} DICOM series; put one series per folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


def _check_slice_positions(folder: Path, files: list[str]) -> None:
    """Duplicate or missing slices: ITK only warns (and the volume is then up to a slice misplaced)."""
    if len(files) < 3:
        return
    reader = sitk.ImageFileReader()
    positions = []
    for name in files:
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if not reader.HasMetaDataKey("0020|0032") or not reader.HasMetaDataKey("0020|0037"):
            return  # no patient positions to compare: leave it to ITK
        try:
            origin = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
            cosines = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
        except ValueError:
            return
        positions.append(float(np.dot(origin, np.cross(cosines[:3], cosines[3:]))))
    order = np.argsort(positions)
    gaps = np.diff(np.array(positions)[order])
    names = [Path(files[i]).name for i in order]
    if np.any(gaps < 1e-3):
        at = int(np.argmin(gaps))
        raise InputImageError(f"{folder.name} holds two slices at the same position ({names[at]}, {names[at + 1]}); "
                              f"remove the duplicate or export the series again")
    typical = float(np.median(gaps))
    if np.any(gaps > 1.5 * typical):
        at = int(np.argmax(gaps))
        raise InputImageError(f"{folder.name} has a gap of {gaps[at]:.2f} mm between {names[at]} and {names[at + 1]} where slices are "
                              f"{typical:.2f} mm apart (a missing slice?); export the complete series")


def _read_dicom_folder(folder: Path) -> sitk.Image:
    files = _dicom_series_files(folder)
    _check_slice_positions(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read one file (NIfTI, NRRD, MHA, ...) or a DICOM series folder."""
    path = Path(path)
    check_readable(path)
    _refuse_binary_nifti(path)
    try:
        if path.is_dir():
            return _read_dicom_folder(path)
        check_complete(path)
        image = sitk.ReadImage(str(path))
        if suffix_of(path) in (".nii", ".nii.gz") and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) \
                and not sitk.GetArrayViewFromImage(image).any():
            _refuse_nifti_nan(path)  # ITK reads an all-NaN NIfTI as zeros: "all zero" would be the wrong story
        return image
    except InputImageError:
        raise
    except RuntimeError as exc:
        raise _unreadable(path, exc) from None


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


def read_channels(images: Sequence[str | os.PathLike | sitk.Image] | str | os.PathLike | sitk.Image,
                  names: Sequence[str] | None = None) -> list[sitk.Image]:
    """Read the model's input channels from paths or images; all must share one grid.
    ``names``: what messages call each item (default: its file name)."""
    if isinstance(images, (str, os.PathLike, sitk.Image)):
        images = [images]
    channels: list[tuple[str, sitk.Image]] = []
    for index, item in enumerate(images):
        name = names[index] if names else Path(item).name if not isinstance(item, sitk.Image) else "input image"
        try:
            image = read_image(item) if not isinstance(item, sitk.Image) else item
        except InputImageError as exc:  # a staged copy's name must not reach the user
            raise InputImageError(str(exc).replace(Path(item).name, name)) from None
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


def check_output_folder(path: str | os.PathLike) -> None:
    """The output's folder must exist and be writable, and the output must not be a folder."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder} is a file, not a folder; choose another output path")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist; create it or choose another output path")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder {folder} is not writable; choose a folder you can write to")
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; give a file name inside it, such as {path / 'result.seg.nrrd'}")


@contextmanager
def atomic_output(path: str | os.PathLike, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a path with ``path``'s own name inside a private folder beside it; after the block, check
    what was written and only then move it into place. On any failure the previous file stays.

    ITK's writers do not report a full disk (they leave a short or empty file and return), so every
    file is flushed to the disk (``fsync``, where a full disk shows up at the latest), must be non-empty,
    and ``verify`` reads it back. The final name inside the private folder matters for detached-header
    formats: ITK writes ``out.nhdr`` + ``out.raw.gz`` and the header names the data file, so the data
    file keeps the name the header gives it; companions are moved first and the named file last.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    check_output_folder(path)
    # unique per process and call: two writers of one output never share a temporary folder
    staging = folder / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        staging.mkdir()
        tmp = staging / path.name
        yield tmp
        written = sorted(staging.iterdir(), key=lambda p: p == tmp)  # the named file last
        if not tmp.is_file():
            raise OutputError(f"cannot write {path} (the writer produced no file); check free space and permissions")
        for item in written:
            _flush_to_disk(item)
            if item.stat().st_size == 0:
                raise OutputError(f"cannot write {path} (it came out empty: the disk may be full); free some space "
                                  f"and run again; the previous file, if any, was kept")
        if verify is not None:
            verify(tmp)
        for item in written:
            if (folder / item.name).is_dir():
                raise OutputError(f"output {folder / item.name} is a folder; choose another output path")
            os.replace(item, folder / item.name)
        _flush_to_disk(folder)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); check free space and permissions") from None
    except RuntimeError as exc:  # ITK writers report I/O failures as RuntimeError
        raise OutputError(f"cannot write {path} ({_first_line(exc)}); check free space and permissions") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _flush_to_disk(path: Path) -> None:
    """``fsync`` a file or folder: delayed allocation reports a full disk here, not at ``write``."""
    handle = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(handle)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EROFS) or not path.is_dir():  # some file systems cannot sync folders
            raise
    finally:
        os.close(handle)


def _unwritten(path: Path, detail: str) -> OutputError:
    return OutputError(f"cannot write {path.name}: {detail} (the disk may be full); free some space and run again; "
                       f"the previous file, if any, was kept")


def verify_image(expected: sitk.Image) -> Callable[[Path], None]:
    """A check that a written file reads back as ``expected``: header (size, spacing, origin) and every voxel."""

    def verify(written: Path) -> None:
        try:
            back = sitk.ReadImage(str(written))
        except RuntimeError as exc:
            raise _unwritten(written, f"it does not read back ({_first_line(exc)})") from None
        if back.GetDimension() != expected.GetDimension() or not same_grid(back, expected):
            raise _unwritten(written, "its header does not read back as written")
        if not np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(expected)):
            raise _unwritten(written, "its voxels do not read back as written")

    return verify


def verify_bytes(expected: bytes) -> Callable[[Path], None]:
    def verify(written: Path) -> None:
        if written.read_bytes() != expected:
            raise _unwritten(written, f"it holds {written.stat().st_size} of {len(expected)} bytes")

    return verify


def write_text(text: str, path: str | os.PathLike) -> None:
    """A small text file (JSON, CSV) written like the images: checked, then renamed into place."""
    data = text.encode("utf-8")
    with atomic_output(path, verify_bytes(data)) as tmp:
        tmp.write_bytes(data)


def write_labelmap(label: sitk.Image, path: str | os.PathLike) -> None:
    if suffix_of(path) not in LABELMAP_SUFFIXES:
        raise OutputError(f"unknown output type for {Path(path).name}; use .seg.nrrd, .nii.gz, .nii, .nrrd or .mha")
    with atomic_output(path, verify_image(label)) as tmp:
        sitk.WriteImage(label, str(tmp), useCompression=True)


def label_boxes(voxels: np.ndarray, values: list[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box of each label value (None if absent): one comparison per value and reductions
    onto the axes, narrowed to the slices that hold the value. (scipy.ndimage.find_objects does it
    in one pass but takes one to two seconds to import, longer than a small case takes to segment.)"""
    boxes: dict[int, tuple[slice, ...] | None] = {}
    for value in values:
        mask = voxels == value
        first = np.flatnonzero(mask.any(axis=tuple(range(1, mask.ndim))))
        if first.size == 0:
            boxes[value] = None
            continue
        sub = mask[first[0]:first[-1] + 1]
        box = [slice(int(first[0]), int(first[-1]) + 1)]
        for axis in range(1, mask.ndim):
            hits = np.flatnonzero(sub.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
            box.append(slice(int(hits[0]), int(hits[-1]) + 1))
        boxes[value] = tuple(box)
    return boxes


def segmentation_dict(label: sitk.Image, card: dict[str, Any]) -> dict[str, Any]:
    """A slicerio segmentation (one layer, one segment per model label) on the label image's grid."""
    voxels_kji = sitk.GetArrayViewFromImage(label)
    boxes = label_boxes(voxels_kji, [entry["value"] for entry in card["labels"]])
    segments = []
    for entry in card["labels"]:
        value = entry["value"]
        box = boxes[value]
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
    with atomic_output(path, verify_segmentation(segmentation["voxels"])) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=1)


def verify_segmentation(voxels: np.ndarray) -> Callable[[Path], None]:
    """A written ``.seg.nrrd`` must read back whole (ITK's NRRD reader decompresses all of it) with the same
    voxels: compared one for one for a single layer (ITK's array is the (i, j, k) array transposed),
    by count and sum for several layers (whose axis order differs between the readers)."""

    def verify(written: Path) -> None:
        try:
            image = sitk.ReadImage(str(written))
        except RuntimeError as exc:
            raise _unwritten(written, f"it does not read back ({_first_line(exc)})") from None
        back = sitk.GetArrayViewFromImage(image)  # a view: ``image`` must outlive it
        same = back.size == voxels.size and int(back.sum(dtype=np.int64)) == int(voxels.sum(dtype=np.int64))
        if same and voxels.ndim == 3:
            same = back.shape == voxels.shape[::-1] and np.array_equal(back, voxels.T)
        if not same:
            raise _unwritten(written, "its voxels do not read back as written")

    return verify


def write_result(label: sitk.Image, card: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a ``.seg.nrrd`` or a label map, chosen by the output's extension."""
    if suffix_of(path) == SEGMENTATION_SUFFIX:
        write_segmentation(label, card, path)
    else:
        write_labelmap(label, path)
