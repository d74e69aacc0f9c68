"""The run settings object: its checks, its flags, the card's defaults section and the one resolver."""
from __future__ import annotations

import argparse

import pytest

from e2miseg.card import validate_card
from e2miseg.errors import CheckpointError
from e2miseg.settings import ENGINE_DEFAULTS, Settings, SettingsError, resolve
from helpers import make_card


@pytest.mark.parametrize("options, message", [
    ({"edge_strength": 1.5}, r"^edge_strength \(--edge-strength\) 1\.5 is outside 0\.\.1;"),
    ({"min_island_mm3": -3.0}, r"^min_island_mm3 \(--min-island-mm3\) -3\.0 is outside 0\.\.1e\+09;"),
    ({"step": 0.0}, r"^step \(--step\) 0\.0 is outside 0\.\.1 \(0 itself excluded\);"),
    ({"batch_size": 0}, r"^batch_size \(--batch-size\) 0 is outside 1\.\.4096;"),
    ({"batch_size": 2.5}, r"^batch_size \(--batch-size\) must be a whole number in 1\.\.4096, not 2\.5;"),
    ({"quality": "best"}, r"^quality \(--quality\) 'best' is not one of fast, normal, normal\+tta;"),
    ({"edge_method": "crf"}, r"^edge_method \(--edge-method\) 'crf' is not one of meanfield, guided, geodesic, learned;"),
    ({"device": "gpu"}, r"^device \(--device\) 'gpu' is not one of auto, cpu, cuda, mps or cuda:N;"),
    ({"keep_largest": "yes"}, r"^keep_largest \(--keep-largest\) must be true or false, not 'yes';"),
    ({"edge_strength": float("nan")}, r"^edge_strength \(--edge-strength\) nan is outside 0\.\.1;"),
])
def test_out_of_range_is_one_line_naming_the_option_and_its_range(options, message):
    with pytest.raises(SettingsError, match=message) as error:
        Settings(**options)
    assert isinstance(error.value, ValueError) and error.value.exit_code == 2


def test_keywords_in_either_spelling_and_the_old_quality_shorthands():
    assert Settings.from_options(keepLargest=True, minIslandMm3=5, edgeStrength=0.4) == \
        Settings(keep_largest=True, min_island_mm3=5.0, edge_strength=0.4)
    assert Settings.from_options(fast=True).quality == "fast" and Settings.from_options(tta=True).quality == "normal+tta"
    with pytest.raises(SettingsError, match="fast and tta together"):
        Settings.from_options(fast=True, tta=True)
    with pytest.raises(TypeError, match="unknown setting 'keep_larges'"):
        Settings.from_options(keep_larges=True)


def test_flags_round_trip_through_the_parser():
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    assert Settings.from_args(parser.parse_args([])) == Settings()  # no flag decides nothing
    chosen = Settings(keep_largest=False, min_island_mm3=12.5, refine_edges=True, edge_method="guided",
                      edge_strength=0.25, quality="normal+tta", step=0.4, batch_size=3, device="cuda:1",
                      runtime="torch", precision="f32")
    assert Settings.from_args(parser.parse_args(chosen.to_cli())) == chosen
    assert Settings.from_args(parser.parse_args(["--fast"])).quality == "fast"
    assert "--no-keep-largest" in chosen.to_cli()


def test_explicit_beats_card_beats_engine():
    card = validate_card({**make_card(), "defaults": {"keep_largest": True, "edge_strength": 0.6, "quality": "fast"}})
    assert resolve(None, None) == ENGINE_DEFAULTS
    from_card = resolve(None, card)
    assert (from_card.keep_largest, from_card.edge_strength, from_card.quality) == (True, 0.6, "fast")
    assert from_card.refine_edges is False and from_card.min_island_mm3 == 0.0  # the engine's, the card is silent
    explicit = resolve(Settings(keep_largest=False, quality="normal"), card)
    assert (explicit.keep_largest, explicit.quality, explicit.edge_strength) == (False, "normal", 0.6)


@pytest.mark.parametrize("defaults, field", [
    ({"edge_strength": 2}, "defaults/edge_strength"),
    ({"quality": "best"}, "defaults/quality"),
    ({"keep_biggest": True}, "defaults"),
    ({"min_island_mm3": "10"}, "defaults/min_island_mm3"),
])
def test_card_defaults_are_validated(defaults, field):
    with pytest.raises(CheckpointError, match=f"model card field '{field}'"):
        validate_card({**make_card(), "defaults": defaults})


def test_card_defaults_keep_their_comparison():
    comparison = {"split": "validation", "cases": ["a", "b"], "candidates": []}
    card = validate_card({**make_card(), "defaults": {"refine_edges": False, "comparison": comparison}})
    assert card["defaults"]["comparison"] == comparison
    assert Settings.from_card(card) == Settings(refine_edges=False)
