"""Hostile and broken checkpoints: refused with one clear line, and nothing is ever unpickled."""
from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from e2miseg.api import load_model
from e2miseg.checkpoint import CARD_METADATA_KEY, read_card, read_checkpoint, save_checkpoint
from e2miseg.errors import CheckpointError
from helpers import make_card, make_e2miseg_checkpoint, small_e2miseg_config


class WritesMarker:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "store"
    monkeypatch.setenv("E2MISEG_MODELS", str(folder))
    return folder


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_e2miseg_checkpoint(tmp_path_factory.mktemp("good") / "good.safetensors")


def raw_safetensors(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def card_metadata(card: dict | str) -> dict:
    return {"__metadata__": {"format": "pt", CARD_METADATA_KEY: card if isinstance(card, str) else json.dumps(card)}}


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT / "E2MISegModule"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "E2MISEG_MODELS": os.environ.get("E2MISEG_MODELS", "/nonexistent"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "e2miseg.cli", *args], capture_output=True, text=True, encoding="utf-8", cwd=ROOT, env=env, timeout=300)


def assert_one_line(result: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr, result.stderr


# ---- never unpickle ----

def test_malicious_pickle_is_refused_everywhere_without_running(tmp_path, store):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": WritesMarker(str(marker))}, hostile)
    # control: an ordinary unpickle of these very files runs the payload, so "no marker" below means
    # the loaders refused, not that the payload was inert
    torch.load(hostile, weights_only=False)
    assert marker.exists()
    marker.unlink()
    raw = tmp_path / "raw.safetensors"  # a bare pickle stream (no zip container)
    raw.write_bytes(pickle.dumps({"w": WritesMarker(str(marker))}, protocol=4))
    pickle.loads(raw.read_bytes())
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="pickle-based PyTorch file.*--trust-pickle"):
        load_model(hostile, device="cpu")
    renamed = tmp_path / "innocent.safetensors"  # the same bytes under a safe-looking name
    renamed.write_bytes(hostile.read_bytes())
    with pytest.raises(CheckpointError, match="pickle-based PyTorch file"):
        load_model(renamed, device="cpu")
    with pytest.raises(CheckpointError, match="pickle-based PyTorch file"):
        read_checkpoint(raw)

    assert_one_line(run_cli("models", "import", str(hostile)), 4, "pickle-based PyTorch file")
    assert_one_line(run_cli("models", "import", str(renamed)), 4, "pickle-based PyTorch file")
    card = tmp_path / "card.json"
    card.write_text(json.dumps(make_card("3d", "e2miseg", small_e2miseg_config())))
    out = tmp_path / "converted.safetensors"
    assert_one_line(run_cli("models", "convert", str(hostile), "--card", str(card), "-o", str(out)), 4, "add --trust-pickle only if")
    # even when trusted, conversion uses the restricted loader, which refuses the payload's global
    assert_one_line(run_cli("models", "convert", str(hostile), "--card", str(card), "-o", str(out), "--trust-pickle"), 4,
                    "could not be read by the restricted loader")
    assert_one_line(run_cli("models", "convert", str(hostile), "--trust-pickle"), 4, "needs the model card")
    assert not marker.exists()
    assert not out.exists() and not store.exists()


def test_trusted_plain_state_dict_converts(tmp_path):
    config = small_e2miseg_config()
    from e2miseg.models import build_model

    state = build_model("e2miseg", **config).state_dict()
    torch.save({"state_dict": state}, tmp_path / "trusted.pth")
    (tmp_path / "card.json").write_text(json.dumps(make_card("3d", "e2miseg", config)))
    from e2miseg.convert import convert_pickle_checkpoint

    out = convert_pickle_checkpoint(tmp_path / "trusted.pth", tmp_path / "card.json", tmp_path / "m.safetensors", trust_pickle=True)
    tensors, _ = read_checkpoint(out)
    assert all(torch.equal(tensors[k], v) for k, v in state.items())


# ---- broken safetensors files ----

def _card_json(**changes) -> dict:
    card = make_card("3d", "e2miseg", small_e2miseg_config())
    card.update(changes)
    return card


HOSTILE_FILES = {
    "empty file": (lambda p: p.write_bytes(b""), "too short to be a safetensors checkpoint"),
    "oversized header": (lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}"), "-byte header (limit"),
    "header longer than file": (lambda p: p.write_bytes(struct.pack("<Q", 4096) + b"{}"), "is truncated: its header claims 4096 bytes"),
    "header not JSON": (lambda p: raw_safetensors(p, b"\xff\xfe not json"), "is malformed (not valid JSON)"),
    "header a list": (lambda p: raw_safetensors(p, [1, 2]), "malformed safetensors header (not an object)"),
    "header nested 100000 deep": (lambda p: raw_safetensors(p, b"[" * 100000 + b"]" * 100000), "nested too deeply"),
    "duplicate tensor names": (lambda p: raw_safetensors(
        p, b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
        b"\0" * 8), "duplicate key 'w'"),
    "overlapping offsets": (lambda p: raw_safetensors(p, {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "overlaps another tensor"),
    "identical offsets": (lambda p: raw_safetensors(p, {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "overlaps another tensor"),
    "gap between tensors": (lambda p: raw_safetensors(p, {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "leaves a gap"),
    "offsets past the end": (lambda p: raw_safetensors(p, {
        "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1000]}}, b"\0" * 16), "points outside the file"),
    "negative shape": (lambda p: raw_safetensors(p, {
        "w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "malformed header entry"),
    "unknown dtype": (lambda p: raw_safetensors(p, {
        "w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16), "unsupported dtype"),
    "metadata not strings": (lambda p: raw_safetensors(p, {"__metadata__": {CARD_METADATA_KEY: {"name": "x"}}}), "values must be strings"),
    "no card": (lambda p: raw_safetensors(p, {"__metadata__": {"format": "pt"}}), "has no E2MISeg model card"),
    "card not JSON": (lambda p: raw_safetensors(p, card_metadata("{'name': 1}")), "model card is malformed (not valid JSON)"),
    "card 2 MB": (lambda p: raw_safetensors(p, card_metadata(_card_json(description="x" * (2 << 20)))), "limit 1048576"),
    "card nested 40 deep": (lambda p: raw_safetensors(p, card_metadata(_card_json(provenance=json.loads("{\"a\":" * 40 + "1" + "}" * 40)))),
                            "nested more than 32 levels"),
    "card nested 100000 deep": (lambda p: raw_safetensors(p, card_metadata("[" * 100000 + "]" * 100000)), "nested too deeply"),
    "card fails schema": (lambda p: raw_safetensors(p, card_metadata(_card_json(labels=[]))), "model card field 'labels'"),
}


@pytest.mark.parametrize("name", list(HOSTILE_FILES))
def test_broken_file_is_refused_with_one_line(tmp_path, name):
    make, fragment = HOSTILE_FILES[name]
    path = tmp_path / "model.safetensors"
    make(path)
    for read in (read_checkpoint, read_card):
        with pytest.raises(CheckpointError) as info:
            read(path)
        message = str(info.value)
        assert fragment in message and "\n" not in message and len(message) < 400, message


def test_valid_header_with_truncated_data(tmp_path, good):
    blob = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(blob[: len(blob) - 1000])
    with pytest.raises(CheckpointError, match="is truncated: tensor .* download or copy it again"):
        read_checkpoint(cut)


def _resave(tmp_path: Path, mutate_state=None, **card_changes) -> Path:
    from e2miseg.models import build_model

    config = small_e2miseg_config()
    state = dict(build_model("e2miseg", **config).state_dict())
    if mutate_state:
        mutate_state(state)
    card = make_card("3d", "e2miseg", config)
    for key, value in card_changes.items():
        card[key] = value
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, state, card)
    return path


def _first_float(state):
    return next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)


@pytest.mark.parametrize("mutate,card_changes,fragment", [
    (lambda s: s.__setitem__(_first_float(s), torch.zeros(3, 3)), {}, "but the architecture needs"),
    (lambda s: s.__setitem__(_first_float(s), torch.zeros_like(s[_first_float(s)], dtype=torch.int32)), {}, "has dtype torch.int32"),
    (lambda s: s.pop(_first_float(s)), {}, "weights do not match the architecture in its card (missing"),
    (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), {}, "unexpected ['extra.weight']"),
    (None, {"architecture": {"name": "unet9000", "config": {}}}, "unknown model 'unet9000'"),
    (None, {"architecture": {"name": "e2miseg", "config": {"wings": 2}}}, "do not fit 'e2miseg'"),
])
def test_weights_that_do_not_fit_the_architecture(tmp_path, mutate, card_changes, fragment):
    path = _resave(tmp_path, mutate, **card_changes)
    with pytest.raises(CheckpointError) as info:
        load_model(path, device="cpu")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_checksum_mismatch_against_the_store(tmp_path, store, good):
    from e2miseg.store import import_model, resolve

    stored = import_model(good)
    blob = bytearray(stored.path.read_bytes())
    blob[-10] ^= 0xFF  # one weight changed after import: still a well-formed file
    stored.path.write_bytes(bytes(blob))
    read_checkpoint(stored.path)  # the file itself parses; only the index knows it changed
    with pytest.raises(CheckpointError, match="fails its checksum .* re-import it from a trusted copy"):
        resolve(stored.name)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_model(stored.name, device="cpu")
    image = tmp_path / "img.nrrd"
    import SimpleITK as sitk
    from bad_inputs import good_array, volume

    sitk.WriteImage(volume(good_array()), str(image))
    result = run_cli("predict", str(image), "-o", str(tmp_path / "o.seg.nrrd"), "--model", stored.name)
    assert_one_line(result, 4, "fails its checksum")
    assert not (tmp_path / "o.seg.nrrd").exists()


def test_damaged_store_index_vouches_for_nothing(store, good):
    from e2miseg.store import import_model, resolve

    stored = import_model(good)
    (store / "index.json").write_text('["not", "an", "index"]')
    with pytest.raises(CheckpointError, match="is not a valid model index"):
        resolve(stored.name)


def test_cli_predict_with_hostile_model_file(tmp_path, store):
    import SimpleITK as sitk
    from bad_inputs import good_array, volume

    sitk.WriteImage(volume(good_array()), str(tmp_path / "img.nrrd"))
    output = tmp_path / "o.seg.nrrd"
    output.write_bytes(b"keep me")
    bad = raw_safetensors(tmp_path / "bad.safetensors", card_metadata("[" * 100000 + "]" * 100000))
    assert_one_line(run_cli("predict", str(tmp_path / "img.nrrd"), "-o", str(output), "--model", str(bad)), 4, "nested too deeply")
    assert output.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "img.nrrd", "o.seg.nrrd", "store"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "img.nrrd", "o.seg.nrrd"]
