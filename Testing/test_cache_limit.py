"""Issue 21: the OpenVINO cache (one converted network per model and window shape, plus OpenVINO's
compiled blobs) no longer grows without bound: least recently used entries are removed beyond a cap on
entries and on bytes, the newest always kept. On a fake cache folder (no OpenVINO needed), then through
the real runtime when OpenVINO is installed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2miseg import cache_limit


def fake_entry(folder: Path, stem: str, used: float, size: int = 100) -> None:
    """An IR as the runtime writes it: NAME.xml + NAME.bin, last used at ``used`` (seconds since the epoch)."""
    for suffix in (".xml", ".bin"):
        path = folder / f"{stem}{suffix}"
        path.write_bytes(b"x" * (size // 2))
        os.utime(path, (used, used))


def stems(folder: Path) -> set[str]:
    return {p.name.split(".", 1)[0] for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def test_entries_beyond_the_cap_go_oldest_first_and_the_newest_stay(tmp_path):
    for index in range(20):
        fake_entry(tmp_path, f"model_{index:02d}", used=1_000_000 + index)
    (tmp_path / ".model_99.1234.xml").write_bytes(b"another process is writing this")
    (tmp_path / "compiled").mkdir()
    removed = cache_limit.prune(tmp_path, max_entries=16)
    assert removed == ["model_00", "model_01", "model_02", "model_03"]
    assert stems(tmp_path) == {f"model_{i:02d}" for i in range(4, 20)}
    assert not (tmp_path / "model_00.bin").exists() and (tmp_path / "model_04.bin").exists()  # both files of an entry
    assert (tmp_path / ".model_99.1234.xml").exists() and (tmp_path / "compiled").is_dir()
    assert cache_limit.prune(tmp_path, max_entries=16) == []  # within the cap: nothing more


def test_byte_cap_touch_and_keep(tmp_path):
    for index in range(6):
        fake_entry(tmp_path, f"e{index}", used=2_000_000 + index, size=100)
    cache_limit.touch(tmp_path / "e0.xml", tmp_path / "e0.bin")  # reused just now: the most recent
    removed = cache_limit.prune(tmp_path, max_entries=100, max_bytes=350, keep="e1")
    assert stems(tmp_path) == {"e0", "e1", "e5"}  # 300 bytes: e1 kept on request, e0 and e5 the most recent
    assert removed == ["e2", "e3", "e4"]


def test_the_newest_entry_stays_even_when_it_alone_is_over_the_cap(tmp_path):
    fake_entry(tmp_path, "old", used=3_000_000, size=100)
    fake_entry(tmp_path, "big", used=3_000_001, size=10_000)
    assert cache_limit.prune(tmp_path, max_entries=16, max_bytes=1_000) == ["old"]
    assert stems(tmp_path) == {"big"}
    assert cache_limit.prune(tmp_path / "absent") == []  # no cache yet: nothing to do


def test_the_runtime_keeps_its_cache_within_the_cap(tmp_path, monkeypatch):
    """Real conversions and compilations, one per window shape: with a cap of 2, after four shapes
    the IR folder and OpenVINO's blob folder each hold the last two, and the network still runs."""
    from conftest import require_module

    require_module("openvino", "the CPU runtime falls back to PyTorch without it")
    import torch

    from e2miseg.runtime import make_forward

    monkeypatch.setenv("E2MISEG_CACHE", str(tmp_path))
    monkeypatch.setattr(cache_limit, "MAX_ENTRIES", 2)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1)).eval()
    forward = make_forward(net, torch.device("cpu"), "openvino")
    shapes = [(8, 8, 8), (8, 8, 12), (8, 12, 12), (12, 12, 12)]
    for shape in shapes:
        batch = torch.randn(1, 1, *shape)
        with torch.inference_mode():
            torch.testing.assert_close(forward(batch), net(batch), atol=1e-4, rtol=1e-4)
    ir_folder = tmp_path / "openvino"
    kept = {p.name.rsplit("_", 1)[1] for p in ir_folder.glob("*.xml")}  # NAME = weights key _ window shape
    assert kept == {"1x8x12x12.xml", "1x12x12x12.xml"}
    assert len(list(ir_folder.glob("*.bin"))) == 2
    assert len([p for p in (ir_folder / "compiled").iterdir() if p.is_file()]) <= 2
