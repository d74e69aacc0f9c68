"""Cohort runs: a folder of cases in, a folder of segmentations and a summary CSV out.

Finished cases are skipped on restart, failed or unrecorded ones run again, and the summary keeps
one row per case (rewritten whole after each case). Under ``torchrun`` each rank takes every WORLD_SIZE-th case,
so a batch job shards a cohort with PyTorch's own launcher and no scheduler of ours.
"""
from __future__ import annotations

import csv
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import E2MISegError, InputImageError, OutputError
from .io import IMAGE_SUFFIXES, suffix_of, write_result

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and suffix_of(p) in IMAGE_SUFFIXES and suffix_of(p) != ".dcm")


def is_cohort_folder(path: Path) -> bool:
    """A folder of image files (not a DICOM series folder) is a cohort."""
    if not path.is_dir():
        return False
    if (path / "imagesTr").is_dir() or (path / "imagesTs").is_dir():
        return True
    return bool(_image_files(path))


def cases_folder(folder: Path) -> Path:
    """The folder holding the case files: ``imagesTs`` or ``imagesTr`` of an MSD layout, else ``folder``."""
    for sub in ("imagesTs", "imagesTr"):
        if (folder / sub).is_dir():
            return folder / sub
    return folder


def find_cases(folder: Path) -> dict[str, list[Path]]:
    """Case name -> channel files. MSD names (``case_0000.nii.gz``) group channels; others are single-channel."""
    folder = cases_folder(folder)
    cases: dict[str, list[Path]] = {}
    for path in _image_files(folder):
        stem = path.name[: -len(suffix_of(path))]
        match = _CHANNEL_SUFFIX.match(stem)
        cases.setdefault(match["case"] if match else stem, []).append(path)
    if not cases:
        raise InputImageError(f"{folder} has no image files; give a folder of .nii.gz/.nrrd/.mha cases")
    return cases


def shard(names: list[str]) -> tuple[list[str], int, int]:
    """This process's share of ``names`` under ``torchrun`` (RANK, WORLD_SIZE): every WORLD_SIZE-th
    case from the RANK-th, so the ranks' shares are disjoint and together hold every case."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        rank = world = -1
    if world < 1 or not 0 <= rank < world:
        raise E2MISegError(f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} do not describe a "
                           f"rank of a job; start shards with torchrun or set 0 <= RANK < WORLD_SIZE")
    return names[rank::world], rank, world


def run_cohort(folder: Path, output: Path, args) -> int:
    from tqdm import tqdm

    from . import api
    from .io import LABELMAP_SUFFIXES, SEGMENTATION_SUFFIX
    from .paths import check_cohort_folders
    from .settings import Settings

    settings = Settings.from_args(args)  # a bad option fails before any folder is made
    if args.format not in (SEGMENTATION_SUFFIX,) + LABELMAP_SUFFIXES:
        raise OutputError(f"--format {args.format} is not an output type; use .seg.nrrd, .nii.gz, .nii, .nrrd, .nhdr, .mha or .mhd")
    cases = find_cases(folder)
    if output.exists() and not output.is_dir():
        raise OutputError(f"output {output} is a file but a folder of cases needs an output folder; give a folder path")
    case_folder = cases_folder(folder)
    check_cohort_folders(case_folder, [p for files in cases.values() for p in files], output,
                         [output / f"{name}{args.format}" for name in cases])
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {output} ({exc.strerror or exc}); choose a folder you can write to") from None
    if not os.access(output, os.W_OK):
        raise OutputError(f"output folder {output} is not writable; choose a folder you can write to")
    names, rank, world = shard(sorted(cases))
    model, card = api.load_model(args.model, settings.device or "auto")
    summary = output / ("summary.csv" if world == 1 else f"summary_rank{rank}.csv")
    label_names = [entry["name"] for entry in card["labels"]]
    header = ["case", "seconds", "status"] + [f"{n}_mm3" for n in label_names]
    rows = _summary_rows(summary, header)
    overwrite = getattr(args, "overwrite", False)
    # finished in an earlier run: the output exists and the summary says ok (failed or unrecorded cases run again)
    done = [name for name in names if (output / f"{name}{args.format}").exists() and rows.get(name, [None] * 3)[2] == "ok"]
    todo = names if overwrite else [name for name in names if name not in done]
    share = f"rank {rank + 1} of {world}: " if world > 1 else ""  # ranks are named only when there are several
    quiet = getattr(args, "quiet", False)
    if done and not quiet:
        print(f"e2miseg: {share}{len(done)} of {len(names)} cases already done, "
              f"{'segmenting them again (--overwrite)' if overwrite else 'skipped (--overwrite redoes them)'}",
              file=sys.stderr)
    failures = 0
    for name in tqdm(todo, desc=f"{share}cohort", unit="case", disable=True if quiet else None, file=sys.stderr):
        target = output / f"{name}{args.format}"
        start = time.perf_counter()
        try:
            labels = api.predict([str(p) for p in cases[name]], model, card, settings)
            write_result(labels, card, target)
        except E2MISegError as exc:
            failures += 1
            rows[name] = [name, f"{time.perf_counter() - start:.2f}", f"error: {exc}"] + [""] * len(label_names)
            _write_summary(summary, header, rows)
            continue
        voxel_mm3 = float(np.prod(labels.GetSpacing()))
        counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=256)
        volumes = [f"{counts[e['value']] * voxel_mm3:.1f}" for e in card["labels"]]
        rows[name] = [name, f"{time.perf_counter() - start:.2f}", "ok"] + volumes
        _write_summary(summary, header, rows)
    if not quiet:
        print(f"e2miseg: {share}segmented {len(todo) - failures} of {len(todo)} case(s)"
              f"{f', {failures} failed (see {summary})' if failures else ''}; summary in {summary}", file=sys.stderr)
    return 1 if failures else 0


def _summary_rows(summary: Path, header: list[str]) -> dict[str, list[str]]:
    """An earlier run's rows by case (the last row of a case wins); none if the columns differ."""
    if not summary.exists():
        return {}
    with open(summary, newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    if not table or table[0] != header:
        return {}
    return {row[0]: row for row in table[1:] if row}


def _write_summary(summary: Path, header: list[str], rows: dict[str, list[str]]) -> None:
    """One row per case, rewritten whole and renamed into place, so an interrupted run never leaves
    a half-written or duplicated summary."""
    tmp = summary.with_name(f".{summary.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows.values())
    os.replace(tmp, summary)
