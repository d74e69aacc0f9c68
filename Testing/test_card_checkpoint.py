"""Model card schema and the single-file safetensors checkpoint."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from e2miseg.card import terminology_tag, validate_card
from e2miseg.checkpoint import read_checkpoint, save_checkpoint
from e2miseg.errors import CheckpointError
from helpers import make_card


def test_valid_card_gets_defaults():
    card = validate_card(make_card())
    assert card["inference"]["step"] == 0.5
    assert card["inference"]["mirror_axes"] == ["x", "y", "z"]


@pytest.mark.parametrize("mutate,fragment", [
    (lambda c: c.pop("labels"), "'labels' is a required property"),
    (lambda c: c["labels"][0].update(color=[1.5, 0, 0]), "labels/0/color/0"),
    (lambda c: c["inference"].update(kind="4d"), "inference/kind"),
    (lambda c: c.update(format_version=99), "format_version"),
    (lambda c: c["labels"][1].update(value=1), "duplicate label values"),
    (lambda c: c["inference"].update(patch_size_zyx=[16, 16]), "3-element patch size"),
    (lambda c: c["preprocessing"].update(target_spacing_xyz=[1, 0, 1]), "target_spacing_xyz"),
    (lambda c: c.update(surprise=1), "surprise"),
])
def test_schema_errors_name_the_field(mutate, fragment):
    card = make_card()
    mutate(card)
    with pytest.raises(CheckpointError) as info:
        validate_card(card)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_terminology_tag_is_slicer_format():
    tag = terminology_tag(make_card()["labels"][0])
    parts = tag.split("~")
    assert len(parts) == 7
    assert parts[1] == "SCT^123037004^Anatomical Structure"
    assert parts[2] == "SCT^5366008^Hippocampus"
    assert parts[3] == "SCT^255549009^Anterior"


def test_checkpoint_round_trip_and_half_precision(tmp_path):
    state = {"w": torch.randn(4, 3), "b": torch.arange(5)}
    card = make_card()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, state, card)
    tensors, loaded = read_checkpoint(path)
    assert torch.equal(tensors["w"], state["w"]) and torch.equal(tensors["b"], state["b"])
    assert loaded == validate_card(card)
    save_checkpoint(path, state, card, half_precision=True)
    tensors, _ = read_checkpoint(path)
    assert tensors["w"].dtype == torch.float16 and tensors["b"].dtype == torch.int64
    assert torch.allclose(tensors["w"].float(), state["w"], atol=1e-2)


def _write_raw(path, header: bytes, body: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)


def test_hostile_and_broken_files_are_refused(tmp_path):
    pickle_file = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1)}, pickle_file)
    with pytest.raises(CheckpointError, match="pickle-based"):
        read_checkpoint(pickle_file)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header"):
        read_checkpoint(huge)
    garbage = tmp_path / "garbage.safetensors"
    _write_raw(garbage, b"not json at all")
    with pytest.raises(CheckpointError, match="malformed"):
        read_checkpoint(garbage)
    outside = tmp_path / "outside.safetensors"
    _write_raw(outside, json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1000]}}).encode(), b"\0" * 16)
    with pytest.raises(CheckpointError, match="outside the file"):
        read_checkpoint(outside)
    no_card = tmp_path / "nocard.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(no_card))
    with pytest.raises(CheckpointError, match="no E2MISeg model card"):
        read_checkpoint(no_card)
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, {"w": torch.zeros(1000)}, make_card())
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        read_checkpoint(truncated)
