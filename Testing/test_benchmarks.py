"""The benchmark harness measures the right thing (nothing here is timed).

The speed comparison against MONAI is only meaningful if the peer pipeline computes the same
segmentation; its agreement measure must compare real voxels; and result files must say which
machine produced them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import missing, oblique_image
from helpers import make_e2miseg_checkpoint

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_common  # noqa: E402
import inference_vs_monai as ivm  # noqa: E402


def _write(array: np.ndarray, path: Path, like: sitk.Image | None = None) -> str:
    image = sitk.GetImageFromArray(array)
    if like is not None:
        image.CopyInformation(like)
    sitk.WriteImage(image, str(path))
    return str(path)


def test_agreement_compares_voxels(tmp_path):
    a = np.zeros((6, 7, 8), np.uint8)
    b = a.copy()
    b[0, 0, :4] = 2  # 4 of 336 voxels differ
    assert ivm.agreement(_write(a, tmp_path / "a.nii.gz"), _write(b, tmp_path / "b.nii.gz")) == pytest.approx(1 - 4 / 336)
    assert ivm.agreement(_write(a, tmp_path / "c.nii.gz"), _write(a, tmp_path / "d.nii.gz")) == 1.0


def test_agreement_refuses_different_grids(tmp_path):
    with pytest.raises(RuntimeError, match="differ in shape"):
        ivm.agreement(_write(np.zeros((4, 4, 4), np.uint8), tmp_path / "a.nii.gz"),
                      _write(np.zeros((4, 4, 5), np.uint8), tmp_path / "b.nii.gz"))


def test_extent_preserving_grid_keeps_the_physical_extent():
    image = oblique_image(size=(20, 18, 12), spacing=(0.7, 1.3, 2.9))
    size, spacing, origin = ivm.extent_preserving_grid(image, [1.0, 1.0, 1.0])
    assert size == [14, 23, 35]
    old_extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    assert np.allclose(np.array(size) * np.array(spacing), old_extent)
    # the first voxel's outer corner stays where it was
    direction = np.array(image.GetDirection()).reshape(3, 3)
    corner = lambda o, s: np.array(o) - direction @ (np.array(s) / 2)  # noqa: E731
    assert np.allclose(corner(origin, spacing), corner(image.GetOrigin(), image.GetSpacing()))
    assert ivm.extent_preserving_grid(image, [0.71, 1.29, 2.9]) is None  # within 2 %: not resampled


def test_peer_pipeline_matches_the_engine_on_a_resampled_oblique_volume(tmp_path, one_thread):
    """Same network and card: the MONAI/SimpleITK peer and e2miseg.predict give the same labels."""
    model = make_e2miseg_checkpoint(tmp_path / "model.safetensors", spacing=(1.0, 1.0, 1.0))
    image = oblique_image(size=(22, 19, 14), spacing=(0.8, 1.2, 1.6))
    path = tmp_path / "image.nii.gz"
    sitk.WriteImage(image, str(path))
    engine = ivm.run_e2miseg(str(model), str(path), str(tmp_path / "engine.nii.gz"), threads=1)
    peer = ivm.run_monai(str(model), str(path), str(tmp_path / "peer.nii.gz"), threads=1)
    assert engine["forward_calls"] > 0 and peer["forward_calls"] > 0
    assert engine["network_time_source"].startswith("timed network calls")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "engine.nii.gz")))
    assert len(np.unique(labels)) > 1, "a constant label map would make agreement meaningless"
    assert ivm.agreement(str(tmp_path / "engine.nii.gz"), str(tmp_path / "peer.nii.gz")) >= 0.995
    # the instrumentation is undone: the engine's own make_forward is back
    import e2miseg.inference
    import e2miseg.runtime

    assert e2miseg.inference.make_forward is e2miseg.runtime.make_forward


def test_results_record_the_machine(tmp_path):
    info = bench_common.finish_machine(bench_common.machine(threads=1))
    for key in ("cpu", "logical_cores", "torch", "date_utc", "load_average_start", "quiet"):
        assert key in info
    json_path, md_path = bench_common.write_results("demo", {"machine": info, "rows": []}, ["| a |", "|---|"],
                                                    ["a note"], folder=tmp_path)
    assert json.loads(json_path.read_text())["machine"]["cpu"] == info["cpu"]
    text = md_path.read_text()
    assert text.startswith("# demo") and info["cpu"] in text and "a note" in text
    assert ("quiet machine" in text) == info["quiet"]


def test_child_peak_memory_is_its_own(tmp_path):
    """A child forked from a big parent reports its own peak, not the parent's (ru_maxrss survives exec)."""
    import subprocess

    ballast = np.ones(200 * 1024 * 1024 // 8)  # 200 MB resident in this process
    code = f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import inference_vs_monai as m; print(m.peak_rss_mb())"
    child_mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child_mb < 150 and ballast.sum() > 0


def test_sessions_charge_the_model_load_to_the_first_call_only(tmp_path, one_thread):
    """The session measure (model loaded) must not include loading; the first call must include it."""
    model = make_e2miseg_checkpoint(tmp_path / "model.safetensors", spacing=(1.0, 1.0, 1.0))
    image = oblique_image(size=(22, 19, 14), spacing=(0.8, 1.2, 1.6))
    path = tmp_path / "image.nii.gz"
    sitk.WriteImage(image, str(path))
    for load, segment in ((ivm.load_e2miseg, ivm.segment_e2miseg), (ivm.load_monai, ivm.segment_monai)):
        session = load(str(model), 1)
        try:
            first = segment(session, str(path), str(tmp_path / "first.nii.gz"))
            again = segment(session, str(path), str(tmp_path / "again.nii.gz"))
        finally:
            session.get("restore", lambda: None)()
        assert first["model_load_seconds"] > 0 and again["model_load_seconds"] == 0
        assert first["seconds"] >= first["model_load_seconds"]
        assert again["forward_calls"] == first["forward_calls"] > 0
        assert ivm.agreement(str(tmp_path / "first.nii.gz"), str(tmp_path / "again.nii.gz")) == 1.0


def test_ct_sized_volume_has_the_requested_grid_and_real_content(tmp_path):
    if not (bench_common.SHARED / "Task04_Hippocampus").is_dir():
        missing("../shared/data/Task04_Hippocampus is absent")
    path = ivm.ct_sized_volume(tmp_path, size_xyz=(40, 30, 20), spacing_xyz=(0.8, 0.8, 2.0), network_mm=3.0)
    image = sitk.ReadImage(path)
    assert image.GetSize() == (40, 30, 20) and image.GetSpacing() == pytest.approx((0.8, 0.8, 2.0))
    array = sitk.GetArrayFromImage(image).astype(float)
    assert 350 < array.mean() < 650 and array.std() > 30  # z-scored MRI mapped to 500 +- 100, not a constant


def test_readme_quotes_the_benchmark_results_on_disk():
    """The speed tables of docs/benchmarks.md (linked from the README) are the result files, verbatim
    (benchmarks/quote_in_readme.py)."""
    import quote_in_readme

    readme = quote_in_readme.PAGE.read_text(encoding="utf-8")
    assert "(docs/benchmarks.md)" in (BENCHMARKS.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split(quote_in_readme.START, 1)[1].split(quote_in_readme.END, 1)[0].strip()
    assert block == quote_in_readme.quoted_block().strip(), "run: .venv/bin/python benchmarks/quote_in_readme.py"
    assert "MONAI / E2MISeg" in block and "Machine:" in block


def test_roofline_holds_a_bf16_network_to_the_bf16_roof():
    import conv_roofline

    best_of = {"f32": {"gflop_per_s": 200.0}, "bf16": {"gflop_per_s": 1000.0}}
    by_dims = {"f32": {2: {"gflop_per_s": 100.0}, 3: {"gflop_per_s": 200.0}},
               "bf16": {2: {"gflop_per_s": 800.0}, 3: {"gflop_per_s": 1000.0}}}
    bf16 = conv_roofline.shares({"kind": "2d", "precision": "bf16", "gflop_per_s": 160.0}, best_of, by_dims)
    assert bf16 == {"roof_precision": "bf16", "share_of_best_conv": 0.16, "share_of_best_conv_same_dims": 0.2,
                    "share_of_best_f32_conv": 0.8}
    f32 = conv_roofline.shares({"kind": "3d", "precision": "f32", "gflop_per_s": 160.0}, best_of, by_dims)
    assert (f32["roof_precision"], f32["share_of_best_conv"]) == ("f32", 0.8)
    # a CPU without native bf16 has no bf16 roof: the fp32 one is all there is
    only_f32 = conv_roofline.shares({"kind": "2d", "precision": "bf16", "gflop_per_s": 50.0},
                                    {"f32": best_of["f32"]}, {"f32": by_dims["f32"]})
    assert (only_f32["roof_precision"], only_f32["share_of_best_conv"]) == ("f32", 0.25)


def test_layer_bound_counts_every_call_of_every_conv_and_linear_layer(one_thread):
    """The layer-wise bound sums the FLOPs of each layer call (a layer used twice counts twice, identical
    layers are timed once) and covers what FlopCounterMode counts for a network of convs and linears."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import conv_roofline

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 2, 3, padding=1)
            self.down = torch.nn.Conv3d(2, 4, 2, stride=2)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            x = self.down(torch.relu(self.conv(self.conv(x))))  # the same layer called twice
            return self.head(x.movedim(1, -1))

    net = Twice().eval()
    shape = (1, 2, 8, 8, 8)
    calls = conv_roofline.network_layers(net, shape)
    assert [type(layer).__name__ for layer, _ in calls] == ["Conv3d", "Conv3d", "Conv3d", "Linear"]
    assert calls[2][1] == shape and calls[3][1] == (1, 4, 4, 4, 4)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(torch.randn(*shape))
    bound = conv_roofline.layer_bound(net, shape, "f32", min_seconds=0.0)
    assert bound["layer_calls"] == 4 and bound["distinct_layers"] == 3
    assert bound["layer_gflop"] * 1e9 == pytest.approx(counter.get_total_flops())
    assert bound["gflop_per_s"] == pytest.approx(bound["layer_gflop"] / bound["layer_seconds"])
    assert sum(r["calls"] for r in bound["layers_by_time"]) == 4


def test_engine_tree_gives_this_checkout_or_the_referenced_commits_engine(tmp_path):
    """Before/after benchmarks import the engine of another commit from here: it must be that commit's files."""
    import shutil
    import subprocess

    root = BENCHMARKS.parent
    assert bench_common.engine_tree(None, tmp_path) == root / "E2MISegModule"
    if not shutil.which("git") or subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True).returncode:
        pytest.skip("not a git checkout: no other commit's engine to extract")
    tree = bench_common.engine_tree("HEAD", tmp_path)
    committed = subprocess.run(["git", "show", "HEAD:E2MISegModule/e2miseg/api.py"], cwd=root, capture_output=True,
                               check=True).stdout
    assert tree.parent.parent == tmp_path and (tree / "e2miseg" / "api.py").read_bytes() == committed
    assert not (tree / "E2MISegModule.py").exists()  # only the engine package, not the Slicer module
