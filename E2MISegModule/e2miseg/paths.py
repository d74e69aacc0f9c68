"""The user's paths: each one is an input or an output, never both, and every check happens before any work.

A run names several outputs (``-o``, ``--preview``, ``--uncertainty`` and the ``.regions.json`` beside it,
the data file beside a ``.nhdr``/``.mhd`` header). Any of them landing on an input (by name, through a
symlink or as a hardlink: same device and inode) would overwrite the user's data, and two of them on one
file would leave one result under the other's name; both are refused before a model loads. Inputs must be
regular files or folders: a FIFO or a device would block ``open`` forever.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable, Sequence

from .errors import InputImageError, OutputError

# Detached-header outputs and the data file ITK writes beside them (we always write compressed).
DETACHED_DATA_SUFFIX = {".nhdr": ".raw.gz", ".mhd": ".zraw"}


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_readable(path: str | os.PathLike, what: str = "") -> None:
    """Refuse anything but a regular file or a folder, from its ``stat`` alone (no ``open``, which
    blocks forever on a FIFO nobody writes to)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputImageError(f"{path} does not exist; check the path") from None
    except OSError as exc:
        raise InputImageError(f"{path} cannot be opened ({exc.strerror or exc}); check the path and its permissions") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputImageError(f"{what or path.name} is {_kind(mode)}, not an image file; copy the data into a regular file first")


def check_folder_entries(folder: Path) -> None:
    """A DICOM folder is scanned file by file: a FIFO or device inside it would block the scan."""
    with os.scandir(folder) as entries:
        for entry in entries:
            mode = entry.stat().st_mode if not entry.is_symlink() or os.path.exists(entry.path) else stat.S_IFREG
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise InputImageError(f"{folder.name}/{entry.name} is {_kind(mode)}; a DICOM folder may hold only files, "
                                      f"move it out of the folder")


def regions_path(uncertainty: str | os.PathLike) -> Path:
    """Where the ranked regions of an uncertainty map go: beside it, ``<name>.regions.json``."""
    from .io import suffix_of

    text = os.fspath(uncertainty)
    suffix = suffix_of(text)
    return Path((text[: -len(suffix)] if suffix else text) + ".regions.json")


def companion_files(path: Path) -> list[Path]:
    """``path`` and the files written beside it under derived names (a detached header's data file)."""
    from .io import suffix_of

    suffix = suffix_of(path)
    if suffix in DETACHED_DATA_SUFFIX:
        return [path, path.with_name(path.name[: -len(suffix)] + DETACHED_DATA_SUFFIX[suffix])]
    return [path]


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """The resolved name and, if the file exists, (device, inode): a hardlink has another name but the same inode."""
    try:
        info = os.stat(path)
        inode = (info.st_dev, info.st_ino)
    except OSError:
        inode = None
    return str(path.resolve()), inode


def detached_data_of(header: Path) -> Path | None:
    """The data file a ``.nhdr`` / ``.mhd`` input names (its voxels live there), or None."""
    from .io import suffix_of

    if suffix_of(header) not in DETACHED_DATA_SUFFIX or not header.is_file():
        return None
    with open(header, "rb") as handle:
        head = handle.read(1 << 16).decode("latin-1")
    for line in head.splitlines():
        key, sep, value = line.partition(":" if suffix_of(header) == ".nhdr" else "=")
        if sep and key.strip().lower() in ("data file", "datafile", "elementdatafile"):
            value = value.strip()
            return None if value.upper() in ("LOCAL", "") or value.upper().startswith("LIST") else header.parent / value
    return None


def _input_identities(inputs: Iterable[Path]) -> list[tuple[Path, str, tuple[int, int] | None]]:
    found = []
    for item in inputs:
        item = Path(item)
        found.append((item, *_identity(item)))
        data = detached_data_of(item)
        if data is not None:
            found.append((data, *_identity(data)))
        if item.is_dir():  # a DICOM series folder: every file in it is an input
            for child in item.iterdir():
                if child.is_file():
                    found.append((child, *_identity(child)))
    return found


def check_outputs(inputs: Sequence[str | os.PathLike], outputs: Sequence[tuple[str, str | os.PathLike]]) -> None:
    """Every output (``(option, path)``) gets a writable folder, is no input and no other output."""
    from .io import check_output_folder

    known = _input_identities(Path(p) for p in inputs)
    taken: list[tuple[str, Path, str, tuple[int, int] | None]] = []
    for option, given in outputs:
        for path in companion_files(Path(given)):
            label = option if path == Path(given) else f"{option} data file {path.name}"
            check_output_folder(path)
            name, inode = _identity(path)
            for source, source_name, source_inode in known:
                if name == source_name or (inode is not None and inode == source_inode):
                    raise OutputError(f"{label} {path} is the input file {source.name}; choose another path so the input is not overwritten")
            for other, other_path, other_name, other_inode in taken:
                if name == other_name or (inode is not None and inode == other_inode):
                    raise OutputError(f"{label} {path} is the same file as {other} {other_path}; give each output its own path")
            taken.append((label, path, name, inode))


def check_cohort_folders(case_folder: Path, case_files: Iterable[Path], output: Path, targets: Iterable[Path]) -> None:
    """A cohort's output folder is not the folder of its cases, and no result lands on a case file."""
    if output.exists() and os.path.samefile(output, case_folder):
        raise OutputError(f"output folder {output} is the folder of the input cases; choose another folder so results "
                          f"and cases are not mixed up")
    known = _input_identities(case_files)
    for target in targets:
        name, inode = _identity(target)
        for source, source_name, source_inode in known:
            if name == source_name or (inode is not None and inode == source_inode):
                raise OutputError(f"result {target.name} would overwrite the input case {source}; choose another output folder")


def check_predict_paths(inputs: list[Path], output: Path, preview: str | None = None, uncertainty: str | None = None) -> None:
    """Every path of a run, before any work: inputs are regular files or folders; ``-o``, ``--preview``,
    ``--uncertainty`` (and its ``.regions.json``) each have a writable folder, are no input and no other output."""
    from .io import LABELMAP_SUFFIXES, SEGMENTATION_SUFFIX, check_output_folder, suffix_of

    if suffix_of(output) not in (SEGMENTATION_SUFFIX,) + LABELMAP_SUFFIXES:
        raise OutputError(f"unknown output type for {output.name}; use .seg.nrrd, .nii.gz, .nii, .nrrd, .nhdr, .mha or .mhd")
    if preview and not preview.lower().endswith(".png"):
        raise OutputError(f"the preview {preview} must be a .png file; give a name ending in .png")
    if uncertainty and suffix_of(uncertainty) not in LABELMAP_SUFFIXES:
        raise OutputError(f"unknown uncertainty output type for {Path(uncertainty).name}; use .nii.gz, .nii, .nrrd or .mha")
    outputs = [("output", output)]
    if uncertainty:
        outputs += [("--uncertainty", Path(uncertainty)), ("--uncertainty regions", regions_path(uncertainty))]
    if preview:
        outputs.append(("--preview", Path(preview)))
    check_output_folder(output)  # first: a typo in -o is the commoner mistake
    for item in inputs:
        check_readable(item)
    check_outputs(inputs, outputs)


def check_refine_paths(image_path: Path, segmentation_path: Path, output: Path, uncertainty: str | None) -> None:
    """Inputs are regular files or folders; ``-o``, ``--uncertainty`` and its regions are no input and no other output."""
    from .io import LABELMAP_SUFFIXES, SEGMENTATION_SUFFIX, suffix_of

    for item in (image_path, segmentation_path):
        check_readable(item)
    is_segmentation = suffix_of(segmentation_path) == SEGMENTATION_SUFFIX
    if is_segmentation != (suffix_of(output) == SEGMENTATION_SUFFIX):
        raise OutputError(f"output {output.name} must be the same kind as {segmentation_path.name} "
                          "; a .seg.nrrd stays a .seg.nrrd and a label map stays a label map")
    if not is_segmentation and suffix_of(output) not in LABELMAP_SUFFIXES:
        raise OutputError(f"unknown output type for {output.name}; use .nii.gz, .nii, .nrrd or .mha")
    outputs = [("output", output)]
    if uncertainty:
        if suffix_of(uncertainty) not in LABELMAP_SUFFIXES:
            raise OutputError(f"unknown uncertainty output type for {Path(uncertainty).name}; use .nii.gz, .nii, .nrrd or .mha")
        outputs += [("--uncertainty", Path(uncertainty)), ("--uncertainty regions", regions_path(uncertainty))]
    check_outputs([image_path, segmentation_path], outputs)
