"""A cohort sharded by torchrun: each rank segments its share, no case twice, nothing missed."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT
from e2miseg.cohort import find_cases, shard
from e2miseg.errors import E2MISegError
from helpers import make_e2miseg_checkpoint

CASES = ["alpha", "bravo", "charlie", "delta", "echo"]


def make_cohort(folder) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index, name in enumerate(CASES):
        array = rng.normal(100, 10, (14 + index, 20, 17)).astype(np.float32)
        array[4:9, 6:14, 5:12] += 60  # something to segment
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.1, 1.3 + 0.1 * index))  # voxel volumes differ per case
        # MSD channel naming for some cases, plain names for the others
        sitk.WriteImage(image, str(folder / (f"{name}_0000.nii.gz" if index % 2 else f"{name}.nii.gz")))


def read_summary(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.timeout(600)
def test_torchrun_ranks_split_a_cohort_without_overlap_or_gaps(tmp_path):
    cohort, out = tmp_path / "cohort", tmp_path / "out"
    make_cohort(cohort)
    checkpoint = make_e2miseg_checkpoint(tmp_path / "tiny.safetensors", spacing=(1.5, 1.5, 1.5))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "E2MISegModule"), "OMP_NUM_THREADS": "1", "E2MISEG_RUNTIME": "torch"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
               "-m", "e2miseg.cli", "predict", str(cohort), "-o", str(out), "--model", str(checkpoint),
               "--device", "cpu", "--format", ".nii.gz"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=560)
    assert result.returncode == 0, result.stderr[-3000:]

    summaries = {rank: read_summary(out / f"summary_rank{rank}.csv") for rank in (0, 1)}
    assert not (out / "summary.csv").exists()
    done = {rank: [row["case"] for row in rows] for rank, rows in summaries.items()}
    assert done[0] == CASES[0::2] and done[1] == CASES[1::2]  # every WORLD_SIZE-th case, in order
    assert sorted(done[0] + done[1]) == CASES  # all cases, none twice
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{name}.nii.gz" for name in CASES]
    for rows in summaries.values():
        for row in rows:
            assert row["status"] == "ok" and float(row["seconds"]) > 0
            labels = sitk.ReadImage(str(out / f"{row['case']}.nii.gz"))
            source = cohort / (f"{row['case']}_0000.nii.gz" if CASES.index(row["case"]) % 2 else f"{row['case']}.nii.gz")
            assert labels.GetSize() == sitk.ReadImage(str(source)).GetSize()
            voxel_mm3 = float(np.prod(labels.GetSpacing()))
            counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=3)
            assert float(row["Anterior hippocampus_mm3"]) == pytest.approx(counts[1] * voxel_mm3, abs=0.06)
            assert float(row["Posterior hippocampus_mm3"]) == pytest.approx(counts[2] * voxel_mm3, abs=0.06)


def test_shard_takes_every_world_size_th_case_and_rejects_bad_ranks(monkeypatch, tmp_path):
    names = [f"case{i}" for i in range(7)]
    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        share, got_rank, world = shard(names)
        assert (got_rank, world) == (rank, 3)
        shares.append(share)
    assert sorted(sum(shares, [])) == names and [len(s) for s in shares] == [3, 2, 2]
    for rank, world in (("3", "3"), ("-1", "2"), ("x", "2"), ("0", "0")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", world)
        with pytest.raises(E2MISegError, match="RANK"):
            shard(names)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert shard(names) == (names, 0, 1)
    make_cohort(tmp_path / "c")
    assert sorted(find_cases(tmp_path / "c")) == CASES
