"""The robot corrector (benchmarks/robot_corrector.py) and the uncertainty-ranking share
(benchmarks/uncertainty_ranking.py) on synthetic cases whose answers are known. Nothing is timed:
the corrector's clock is injected."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import robot_corrector as robot  # noqa: E402
import uncertainty_ranking as ranking  # noqa: E402

SPACING = (1.0, 1.0, 1.0)


def ball(shape, centre, radius):
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def wedge_case():
    """Reference: a ball of radius 10. Prediction: the ball minus its +z+y+x octant (the known missing wedge)
    plus a spurious 3x3x3 blob far from it."""
    reference = ball((40, 40, 48), (20, 20, 20), 10).astype(np.uint8)
    z, y, x = np.indices(reference.shape)
    wedge = (reference == 1) & (z > 20) & (y > 20) & (x > 20)
    labels = reference.copy()
    labels[wedge] = 0
    labels[18:21, 18:21, 40:43] = 1  # spurious blob
    return labels, reference, wedge


def test_first_stroke_goes_into_the_missing_wedge_and_paints_it():
    labels, reference, wedge = wedge_case()
    region = robot.largest_error(labels, reference, [1], SPACING)
    assert (region.label, region.kind, region.voxels) == (1, "FN", int(wedge.sum()))
    assert wedge[region.centre_kji], "the stroke centre must lie inside the error"
    assert region.depth_mm >= 2.0  # the deepest point, not a voxel on the wedge's rim
    before = robot.mean_dice(labels, reference, [1])
    edited = labels.copy()
    changed = robot.paint_stroke(edited, region, SPACING, radius_mm=3.0)
    assert changed > 0 and edited[region.centre_kji] == 1
    assert robot.mean_dice(edited, reference, [1]) > before


def test_the_stroke_centre_is_the_distance_maximum_of_the_region():
    reference = np.zeros((20, 20, 20), np.uint8)
    labels = reference.copy()
    labels[4:9, 6:11, 3:8] = 1  # a spurious 5-voxel cube: its middle voxel is the only one 3 mm from outside
    region = robot.largest_error(labels, reference, [1], SPACING)
    assert (region.kind, region.centre_kji) == ("FP", (6, 8, 5))
    assert region.depth_mm == pytest.approx(3.0)


def test_a_larger_spurious_blob_is_erased_first_and_erase_keeps_other_segments():
    reference = np.zeros((30, 30, 30), np.uint8)
    reference[5:25, 5:15, 5:25] = 2  # another segment, predicted right
    labels = reference.copy()
    labels[10:14, 15:19, 10:14] = 1  # 64 extra voxels of label 1, touching segment 2 (y <= 14)
    labels[20, 20, 20] = 1           # one more, elsewhere
    region = robot.largest_error(labels, reference, [1, 2], SPACING)
    assert (region.label, region.kind, region.voxels) == (1, "FP", 64)
    edited = labels.copy()
    robot.paint_stroke(edited, region, SPACING, radius_mm=4.0)
    assert not (edited[10:14, 15:19, 10:14] == 1).any()
    assert np.array_equal(edited == 2, reference == 2), "Erase clears the selected segment only"


def test_paint_overwrites_other_segments_like_segment_editor_defaults():
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[5:15, 5:15, 5:15] = 1
    labels = reference.copy()
    labels[8:12, 8:12, 8:12] = 2  # label 2 wrongly inside label 1: FN of 1 and FP of 2, 64 voxels each
    region = robot.largest_error(labels, reference, [1, 2], SPACING)
    assert (region.label, region.kind) == (1, "FN")  # ties go to the lower label, FN first
    robot.paint_stroke(labels, region, SPACING, radius_mm=4.0)
    assert np.array_equal(labels, reference)


def test_sphere_brush_counts_voxels_within_the_radius_in_mm():
    _box, brush = robot.sphere_brush((20, 20, 20), (10, 10, 10), SPACING, 2.0)
    assert brush.sum() == 33  # integer points with x^2 + y^2 + z^2 <= 4
    _box, flat = robot.sphere_brush((20, 20, 20), (10, 10, 10), (10.0, 1.0, 1.0), 2.0)
    assert flat.shape[0] == 1 and flat.sum() == 13  # thick slices: one slice, a disc


class FakeClock:
    def __init__(self):
        self.ticks = itertools.count()

    def __call__(self):
        return float(next(self.ticks))


def test_counting_stops_as_soon_as_dice_reaches_the_target():
    reference = ball((30, 30, 30), (15, 15, 15), 8).astype(np.uint8)
    labels = reference.copy()
    labels[2:4, 2:4, 2:4] = 1  # 8 extra voxels: Dice 0.996 < target 0.999
    result = robot.correct(labels, reference, [1], SPACING, "paint", radius_mm=3.0, target=0.999, clock=FakeClock())
    assert result.reached and result.count == 1 and result.dice[-1] == 1.0
    assert result.seconds == [1.0]
    assert result.dice_after(5) == 1.0
    assert np.array_equal(labels[2:4, 2:4, 2:4], np.ones((2, 2, 2))), "correct() must not edit its input"
    done = robot.correct(reference, reference, [1], SPACING, "paint", radius_mm=3.0)
    assert done.count == 0 and done.reached


def test_counting_stops_at_the_stroke_cap_when_the_target_is_not_reached():
    labels, reference, _wedge = wedge_case()
    result = robot.correct(labels, reference, [1], SPACING, "paint", radius_mm=1.0, max_strokes=4, clock=FakeClock())
    assert not result.reached and result.count == 4 and len(result.dice) == 5
    assert all(b >= a for a, b in zip(result.dice, result.dice[1:])), "each 1 mm paint stroke into the wedge helps"


def test_the_effect_stroke_moves_the_edge_to_the_image_only_near_the_stroke():
    rng = np.random.default_rng(0)
    truth = ball((40, 48, 48), (20, 24, 24), 12)
    image = (100 + 80 * truth + rng.normal(0, 8, truth.shape)).astype(np.float32)
    reference = truth.astype(np.uint8)
    labels = ball((40, 48, 48), (20, 24, 24), 9).astype(np.uint8)  # drawn 3 voxels too small all round
    region = robot.largest_error(labels, reference, [1], SPACING)
    edited = labels.copy()
    changed = robot.effect_stroke(edited, image, region, SPACING, radius_mm=5.0, strength=0.6)
    assert changed > 0
    moved = np.argwhere(edited != labels)
    assert np.all(np.linalg.norm(moved - region.centre_kji, axis=1) <= 5.0 + 1e-6), "only inside the stroke"
    assert robot.mean_dice(edited, reference, [1]) > robot.mean_dice(labels, reference, [1])


def test_effect_defaults_are_read_from_the_effect_and_a_renamed_constant_fails(tmp_path):
    defaults = robot.effect_defaults()
    assert defaults["radius_mm"] > 0 and 0 < defaults["strength"] <= 1
    broken = tmp_path / "SegmentEditorEffect.py"
    broken.write_text("DEFAULT_RADIUS_MM = 5.0\nSTRENGTH = 0.6\n")
    with pytest.raises(ValueError, match="DEFAULT_STRENGTH"):
        robot.effect_defaults(broken)


# ---- uncertainty ranking ------------------------------------------------------------------------

def test_share_inside_counts_error_voxels_in_the_union_of_regions():
    errors = np.zeros((10, 10, 10), bool)
    errors[0, 0, :8] = True  # 8 error voxels
    regions = [np.array([[0, 0, 0], [0, 0, 1], [5, 5, 5]]), np.array([[0, 0, 1], [0, 0, 7]])]
    assert ranking.share_inside(errors, regions) == pytest.approx(3 / 8)  # (0,0,1) counted once
    assert ranking.share_inside(errors, []) == 0.0
    assert ranking.share_inside(np.zeros_like(errors), regions) == 1.0


def ranking_case():
    """A cube predicted one voxel too large on its +x face only; the network is unsure exactly there."""
    reference = np.zeros((24, 24, 24), np.uint8)
    reference[6:18, 6:18, 6:18] = 1
    labels = reference.copy()
    labels[6:18, 6:18, 18] = 1  # 144 extra voxels on the +x face
    uncertainty = np.zeros(labels.shape, np.float32)
    uncertainty[6:18, 6:18, 17:20] = 0.9  # across the wrong face
    uncertainty[6:9, 6:9, 4:6] = 0.4      # a small, less doubtful spot on the -x face, where nothing is wrong
    return labels, reference, uncertainty


def test_top_regions_are_the_ranked_components_and_contain_the_known_error():
    labels, reference, uncertainty = ranking_case()
    regions = ranking.top_regions(uncertainty, labels, SPACING)
    assert len(regions) == 2
    first = np.zeros(labels.shape, bool)
    first[tuple(regions[0].T)] = True
    assert first[6:18, 6:18, 18].all(), "the most uncertain region covers the wrong face"
    assert ranking.share_inside(labels != reference, regions) == 1.0
    image = sitk.GetImageFromArray(labels)
    from e2miseg.edges.uncertainty import uncertain_regions

    listed = uncertain_regions(uncertainty, labels, None, image)
    assert [r["voxels"] for r in listed] == [len(r) for r in regions], "the same regions in the same order as the button"


def test_random_regions_are_disjoint_band_voxels_of_the_requested_sizes():
    labels, _reference, _uncertainty = ranking_case()
    from e2miseg.edges.band import band_mask, boundary_mask

    band = band_mask(labels, SPACING, 2.0)
    regions = ranking.random_regions(band, boundary_mask(labels), SPACING, [50, 20, 7], np.random.default_rng(1))
    assert [len(r) for r in regions] == [50, 20, 7]
    flat = np.concatenate([np.ravel_multi_index(tuple(r.T), labels.shape) for r in regions])
    assert len(np.unique(flat)) == len(flat)
    assert band.ravel()[flat].all()


def test_measure_case_scores_the_ranking_above_random_where_the_answer_is_known():
    labels, reference, uncertainty = ranking_case()
    row = ranking.measure_case(labels, reference, uncertainty, SPACING, repeats=10, seed=0)
    assert row["top_share"] == 1.0 and row["error_voxels"] == 144
    assert len(row["random_shares"]) == 10 and max(row["random_shares"]) < 1.0
    summary = ranking.summarise([{"case": "a", **row}])
    assert summary["top_beats_every_repeat"] and summary["top_over_random"] > 1


def test_benchmarks_refuse_an_unknown_model_in_one_line_and_write_nothing(tmp_path, capsys):
    import correction_effort

    assert correction_effort.main(["--model", "no-such-model", "--results", str(tmp_path)]) == 2
    assert ranking.main(["--model", "no-such-model", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: no bundled model 'no-such-model'") for line in err)
    assert not list(tmp_path.iterdir())


def test_a_region_where_a_stroke_changed_nothing_is_passed_over():
    reference = np.zeros((20, 20, 20), np.uint8)
    labels = reference.copy()
    labels[2:6, 2:6, 2:6] = 1     # 64 extra voxels
    labels[12:14, 12:14, 12:14] = 1  # 8 extra voxels
    first = robot.largest_error(labels, reference, [1], SPACING)
    assert first.voxels == 64
    second = robot.largest_error(labels, reference, [1], SPACING, {(1, "FP", first.centre_kji)})
    assert second.voxels == 8
    assert robot.largest_error(labels, reference, [1], SPACING, {(1, "FP", first.centre_kji), (1, "FP", second.centre_kji)}) is None


def test_the_effect_robot_moves_on_when_a_stroke_changes_nothing_and_stops_when_nothing_is_left():
    reference = np.zeros((24, 24, 24), np.uint8)
    reference[3:7, 3:7, 3:7] = 1       # two missed blobs, no predicted segment anywhere:
    reference[15:18, 15:18, 15:18] = 1  # the effect has no edge to move, so each stroke changes nothing
    image = (100 + 80 * reference).astype(np.float32)
    result = robot.correct(np.zeros_like(reference), reference, [1], SPACING, "effect", image=image, clock=FakeClock())
    assert [s["region_voxels"] for s in result.strokes] == [64, 27]
    assert [s["changed_voxels"] for s in result.strokes] == [0, 0]
    assert result.count == 2 and not result.reached


@pytest.mark.parametrize("name", ["correction_effort", "uncertainty_ranking"])
def test_docs_quote_the_results_on_disk(name):
    """docs/edges.md shows the tables the benchmarks last wrote (each run refreshes its block)."""
    import bench_common

    page = (BENCHMARKS.parent / "docs" / "edges.md").read_text(encoding="utf-8")
    block = page.split(f"<!-- {name}:start -->", 1)[1].split(f"<!-- {name}:end -->", 1)[0].strip()
    assert block == bench_common.quoted_results(name), f"run benchmarks/{name}.py (or bench_common.quote_results_in_page)"
    assert "| model |" in block


def test_quoting_replaces_only_the_marked_block(tmp_path):
    import bench_common

    (tmp_path / "demo.md").write_text("# demo\n\n| a |\n|---|\n| 0.91 |\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- demo:start -->\nold\n<!-- demo:end -->\nafter\n", encoding="utf-8")
    assert bench_common.quote_results_in_page("demo", page, tmp_path)
    assert page.read_text(encoding="utf-8") == "before\n<!-- demo:start -->\n| a |\n|---|\n| 0.91 |\n<!-- demo:end -->\nafter\n"
    assert not bench_common.quote_results_in_page("demo", page, tmp_path)  # already current


def test_a_run_into_a_scratch_folder_leaves_the_docs_page_alone(tmp_path):
    """Results written elsewhere (a trial run) must not be quoted in the project's docs as if they were its own."""
    import bench_common

    page = tmp_path / "page.md"
    page.write_text("<!-- demo:start -->\nold\n<!-- demo:end -->\n", encoding="utf-8")
    text = bench_common.publish_model_results("demo", "m", {"value": 0.5}, lambda r: "# demo\n\n| model |\n| m |\n",
                                              tmp_path, page)
    assert text.startswith("# demo") and (tmp_path / "demo.json").is_file()
    assert page.read_text(encoding="utf-8") == "<!-- demo:start -->\nold\n<!-- demo:end -->\n"

