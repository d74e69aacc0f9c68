"""DDP with torchrun: two CPU processes (gloo) train a few steps and end with identical weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, shared_file

sys.path.insert(0, str(ROOT / "training"))


@pytest.mark.timeout(300)
def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    from e2miseg.checkpoint import read_checkpoint
    from e2miseg_train.plan import make_plan, write_plan

    dataset = shared_file("fixtures/Hippocampus_mini")
    plan = make_plan(dataset, "e2miseg", name="ddp-test")
    patch = [16, 32, 16]
    plan["card"]["inference"]["patch_size_zyx"] = patch
    plan["card"]["architecture"]["config"].update(
        {"dims": [8, 8, 16, 16], "proj_sizes": [8, 8, 8, 4], "num_heads": 2, "feature_size": 8, "patch_size": patch})
    plan_path = write_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "training"), str(ROOT / "E2MISegModule")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
               "-m", "e2miseg_train.cli", "fit", str(plan_path), "--out", str(out), "--epochs", "1",
               "--iters-per-epoch", "3", "--val-every", "100", "--device", "cpu", "--threads", "1",
               "--cache-dir", str(tmp_path / "cache"), "--save-rank-weights", "--warmup", "0"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, _ = read_checkpoint(out / "rank0.safetensors")
    rank1, _ = read_checkpoint(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # the ranks trained (on different patches, synchronised by DDP): weights moved from the seed init
    from e2miseg.models import build_model

    torch.manual_seed(0)
    initial = build_model("e2miseg", **plan["card"]["architecture"]["config"]).state_dict()
    assert any(not torch.equal(initial[k], rank0[k]) for k in rank0 if rank0[k].is_floating_point())
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["iteration"] == 3
    assert json.loads((out / "options.json").read_text())["iters_per_epoch"] == 3
