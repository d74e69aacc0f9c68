"""Writes that cannot lie (issue 21): a full disk, for every output format, leaves the previous file
byte for byte and raises (exit 5 through the CLI); a detached header names its data file by its final name.

ITK's writers return normally on a full disk and leave a short or empty file: the writer is made to do
exactly that here (monkeypatched), ``fsync`` is made to report ENOSPC, and, where this process may mount
one (root in a container), a real 96 kB tmpfs is filled up.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bad_inputs import good_array, volume
from conftest import ROOT

PREVIOUS = b"the previous good result\n"
LABEL_FORMATS = [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd"]


def labels_image() -> sitk.Image:
    array = np.zeros((12, 14, 16), np.uint8)
    array[3:8, 4:10, 5:11] = 1
    array[8:10, 4:10, 5:11] = 2
    return volume(array)


def write(fmt: str, path: Path) -> None:
    from e2miseg.card import validate_card
    from e2miseg.io import write_result
    from helpers import make_card

    write_result(labels_image(), validate_card(make_card()), path)


def short_writer(real):
    """What ITK does on a full disk: the file is created, holds fewer bytes than written, no error."""

    def writer(*args, **kwargs):
        real(*args, **kwargs)
        name = next(a for a in args if isinstance(a, str))  # sitk: (image, name); slicerio: (name, segmentation)
        for item in Path(name).parent.iterdir():
            item.write_bytes(item.read_bytes()[: item.stat().st_size // 3])

    return writer


@pytest.mark.parametrize("fmt", LABEL_FORMATS)
def test_short_write_keeps_the_previous_output(tmp_path, monkeypatch, fmt):
    from e2miseg import io as e2io
    from e2miseg.errors import OutputError

    target = tmp_path / f"out{fmt}"
    target.write_bytes(PREVIOUS)
    if fmt == ".seg.nrrd":
        import slicerio
        monkeypatch.setattr(slicerio, "write_segmentation", short_writer(slicerio.write_segmentation))
    else:
        monkeypatch.setattr(e2io.sitk, "WriteImage", short_writer(sitk.WriteImage))
    with pytest.raises(OutputError, match="the previous file, if any, was kept"):
        write(fmt, target)
    assert target.read_bytes() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary left


@pytest.mark.parametrize("fmt", LABEL_FORMATS)
def test_enospc_at_flush_keeps_the_previous_output(tmp_path, monkeypatch, fmt):
    from e2miseg import io as e2io
    from e2miseg.errors import OutputError

    target = tmp_path / f"out{fmt}"
    target.write_bytes(PREVIOUS)

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(e2io.os, "fsync", full)
    with pytest.raises(OutputError, match=r"No space left on device\); check free space"):
        write(fmt, target)
    assert target.read_bytes() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_uncertainty_and_preview_short_writes(tmp_path, monkeypatch):
    """The uncertainty map, its regions JSON and the PNG preview go through the same checked write."""
    from e2miseg import io as e2io
    from e2miseg.edges.uncertainty import write_uncertainty
    from e2miseg.errors import OutputError
    from e2miseg.preview import write_preview

    for name in ("u.nii.gz", "u.regions.json", "p.png"):
        (tmp_path / name).write_bytes(PREVIOUS)
    monkeypatch.setattr(e2io.sitk, "WriteImage", short_writer(sitk.WriteImage))
    uncertainty = sitk.Cast(labels_image(), sitk.sitkFloat32)
    with pytest.raises(OutputError):
        write_uncertainty(uncertainty, [], tmp_path / "u.nii.gz")
    with pytest.raises(OutputError):
        write_preview(volume(good_array()), labels_image(), {"name": "test", "version": "0", "labels": [
            {"value": 1, "name": "one", "color": [1, 0, 0]}, {"value": 2, "name": "two", "color": [0, 1, 0]}]}, tmp_path / "p.png")
    monkeypatch.undo()
    from e2miseg.io import write_text

    monkeypatch.setattr(Path, "write_bytes", lambda self, data: open(self, "wb").write(data[: len(data) // 2]))
    with pytest.raises(OutputError, match="holds"):
        write_text('{"regions": []}', tmp_path / "u.regions.json")
    monkeypatch.undo()
    for name in ("u.nii.gz", "u.regions.json", "p.png"):
        assert (tmp_path / name).read_bytes() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "u.nii.gz", "u.regions.json"]


@pytest.mark.parametrize("fmt,data_name,key", [(".nhdr", "out.raw.gz", "data file: out.raw.gz"),
                                               (".mhd", "out.zraw", "ElementDataFile = out.zraw")])
def test_detached_header_names_its_final_data_file(tmp_path, fmt, data_name, key):
    """The header names the data file by its final name; no temporary file is left; it reads back."""
    target = tmp_path / f"out{fmt}"
    write(fmt, target)
    write(fmt, target)  # a second run replaces both files and leaves nothing behind
    assert key in target.read_text(errors="replace")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, data_name])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(target))), sitk.GetArrayFromImage(labels_image()))


def _mount_tmpfs(folder: Path) -> None:
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'mount failed'}); "
                    f"the injected short-write and ENOSPC tests cover the same code")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root; the injected short-write and ENOSPC tests cover it")
@pytest.mark.parametrize("fmt", LABEL_FORMATS)
def test_real_full_disk_through_the_cli(tmp_path, fmt):
    from helpers import make_e2miseg_checkpoint

    checkpoint = make_e2miseg_checkpoint(tmp_path / "tiny.safetensors", spacing=(1.5, 1.5, 1.5))
    image = tmp_path / "in.nii.gz"
    sitk.WriteImage(volume(good_array()), str(image))
    full = tmp_path / "full"
    _mount_tmpfs(full)
    try:
        target = full / f"out{fmt}"
        target.write_bytes(PREVIOUS)
        try:
            with open(full / "filler", "wb") as handle:
                while True:
                    handle.write(b"\0" * 4096)
                    handle.flush()
        except OSError:
            pass
        env = {"PYTHONPATH": str(ROOT / "E2MISegModule"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
               "E2MISEG_RUNTIME": "torch", "E2MISEG_MODELS": str(tmp_path / "store"), "HOME": str(tmp_path)}
        result = subprocess.run([sys.executable, "-m", "e2miseg.cli", "predict", str(image), "-o", str(target), "--model",
                                 str(checkpoint), "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 5, result.stderr
        assert f"cannot write {target}" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert target.read_bytes() == PREVIOUS
        assert sorted(p.name for p in full.iterdir()) == ["filler", target.name]
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)
