"""Two writers of one output path: always one complete file (never a mix), no temporary files left."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from bad_inputs import good_array, volume
from conftest import ROOT
from helpers import make_card, make_e2miseg_checkpoint


def labels_variant(seed: int) -> sitk.Image:
    # random labels compress badly, so each write takes long enough for readers and writers to overlap
    array = np.random.default_rng(seed).integers(0, 3, (48, 64, 64)).astype(np.uint8)
    return volume(array)


READS = 12  # files the reader checks while the writers replace it
MAX_WRITES = 500  # a writer's guard: it normally stops when the reader has read enough


def _writer(path: str, seed: int, start, done) -> None:
    from e2miseg.card import validate_card
    from e2miseg.io import write_result

    card = validate_card(make_card())
    image = labels_variant(seed)
    start.wait()  # both writers begin together
    for _ in range(MAX_WRITES):
        write_result(image, card, path)
        if done.is_set():  # the reader has seen enough files while both wrote
            break


def read_voxels(path: Path) -> np.ndarray:
    if path.name.endswith(".seg.nrrd"):
        import slicerio

        return slicerio.read_segmentation(str(path))["voxels"].transpose(2, 1, 0)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.parametrize("name", ["labels.nii.gz", "labels.seg.nrrd"])
def test_concurrent_writers_and_a_reader_never_see_a_mix(tmp_path, name):
    target = tmp_path / name
    variants = [sitk.GetArrayFromImage(labels_variant(seed)) for seed in (1, 2)]
    context = multiprocessing.get_context("fork")
    start, done = context.Event(), context.Event()
    writers = [context.Process(target=_writer, args=(str(target), seed, start, done)) for seed in (1, 2)]
    for process in writers:
        process.start()
    start.set()
    reads = 0
    # the writers keep replacing the file until this reader has read it READS times: every read
    # overlaps the writing, however fast or slow this machine is
    try:
        while reads < READS and any(process.is_alive() for process in writers):
            if target.exists():
                try:
                    seen = read_voxels(target)
                except FileNotFoundError:
                    continue  # replaced between exists() and open(): fine, the next read sees the new file
                assert any(np.array_equal(seen, variant) for variant in variants), "a reader saw a mixed or partial file"
                reads += 1
    finally:
        done.set()
    for process in writers:
        process.join(timeout=60)
        assert process.exitcode == 0
    final = read_voxels(target)
    assert any(np.array_equal(final, variant) for variant in variants)
    assert reads == READS
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary files left behind


def test_two_cli_predictions_to_one_output(tmp_path, monkeypatch):
    """Two `e2miseg predict` processes with different inputs and one -o: the result is one of the two runs."""
    import e2miseg

    monkeypatch.setenv("E2MISEG_RUNTIME", "torch")  # the same runtime as the subprocesses below
    checkpoint = make_e2miseg_checkpoint(tmp_path / "tiny.safetensors", spacing=(1.5, 1.5, 1.5))
    inputs = []
    for seed in (1, 2):
        path = tmp_path / f"case{seed}.nrrd"
        sitk.WriteImage(volume(good_array((24, 28, 32), seed=seed)), str(path))
        inputs.append(path)
    model, _ = e2miseg.load_model(checkpoint, device="cpu")
    expected = [sitk.GetArrayFromImage(e2miseg.predict(str(p), model)) for p in inputs]
    assert not np.array_equal(*expected)  # the two runs are distinguishable
    output = tmp_path / "out" / "result.seg.nrrd"
    output.parent.mkdir()
    env = {"PYTHONPATH": str(ROOT / "E2MISegModule"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "E2MISEG_RUNTIME": "torch"}
    runs = [subprocess.Popen([sys.executable, "-m", "e2miseg.cli", "predict", str(p), "-o", str(output), "--model", str(checkpoint),
                              "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env, cwd=ROOT)
            for p in inputs]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
    final = read_voxels(output)
    assert any(np.array_equal(final, e) for e in expected)
    assert [p.name for p in output.parent.iterdir()] == ["result.seg.nrrd"]
