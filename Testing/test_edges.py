"""Edge refinement, boundary uncertainty, regions and metrics of ``e2miseg.edges`` on real fixture images."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import oblique_image, shared_file, require_module
from e2miseg.edges import (EdgeOptions, band_mask, box_mask_ijk, box_mask_lps, entropy_map, refine_in_region,
                           refine_label_array, refine_segmentation, soft_probabilities, stroke_region, uncertain_regions)
from e2miseg.edges.metrics import binary_metrics, label_metrics
from e2miseg.errors import E2MISegError

HIPPOCAMPUS = ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
ACDC = ["patient021_frame01", "patient021_frame02"]
STRONG = EdgeOptions(strength=0.6)  # a deliberate correction, as a user asks for where they see an error


def load(folder: str, case: str):
    image = sitk.ReadImage(str(shared_file(f"fixtures/{folder}/imagesTr/{case}.nii.gz")))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_file(f"fixtures/{folder}/labelsTr/{case}.nii.gz"))))
    return sitk.GetArrayFromImage(image).astype(np.float32), labels.astype(np.uint8), tuple(image.GetSpacing()[::-1])


def erode_labels(labels: np.ndarray, structure: np.ndarray, steps: int = 1) -> np.ndarray:
    result = labels.copy()
    for value in np.unique(labels[labels > 0]):
        mask = labels == value
        result[mask & ~ndimage.binary_erosion(mask, structure, iterations=steps, border_value=1)] = 0
    return result


def dilate_labels(labels: np.ndarray, structure: np.ndarray) -> np.ndarray:
    result = labels.copy()
    for value in np.unique(labels[labels > 0]):
        result[ndimage.binary_dilation(labels == value, structure) & (result == 0)] = value
    return result


def mean_metric(prediction, reference, spacing, name):
    values = [int(v) for v in np.unique(reference) if v]
    return float(np.mean([m[name] for m in label_metrics(prediction, reference, spacing, values).values()]))


@pytest.mark.parametrize("case", HIPPOCAMPUS)
@pytest.mark.parametrize("perturb", ["erode", "dilate"])
def test_refinement_moves_a_perturbed_hippocampus_boundary_back(case, perturb):
    image, reference, spacing = load("Hippocampus_mini", case)
    structure = ndimage.generate_binary_structure(3, 1)
    perturbed = erode_labels(reference, structure) if perturb == "erode" else dilate_labels(reference, structure)
    refined = refine_label_array(image, perturbed, spacing, options=STRONG)
    assert mean_metric(refined, reference, spacing, "assd_mm") < mean_metric(perturbed, reference, spacing, "assd_mm") - 0.05
    assert mean_metric(refined, reference, spacing, "dice") > mean_metric(perturbed, reference, spacing, "dice")


@pytest.mark.parametrize("case", ACDC)
def test_refinement_moves_shifted_cardiac_boundaries_back_in_plane(case):
    image, reference, spacing = load("ACDC_mini", case)  # 1.56 x 1.56 x 10 mm slice stack
    perturbed = np.roll(reference, 2, axis=2)  # two voxels (3.1 mm) sideways in every slice
    refined = refine_label_array(image, perturbed, spacing, options=STRONG)
    assert mean_metric(refined, reference, spacing, "assd_mm") < mean_metric(perturbed, reference, spacing, "assd_mm") - 0.03
    assert mean_metric(refined, reference, spacing, "dice") > mean_metric(perturbed, reference, spacing, "dice")
    # 3 mm band and 10 mm slices: nothing may jump to a neighbouring slice's label
    changed = refined != perturbed
    assert changed.any()
    assert np.all(band_mask(perturbed, spacing, 3.0)[changed])


def test_default_strength_keeps_correct_masks_nearly_unchanged():
    losses = []
    for folder, cases in (("Hippocampus_mini", HIPPOCAMPUS), ("ACDC_mini", ACDC)):
        for case in cases:
            image, reference, spacing = load(folder, case)
            refined = refine_label_array(image, reference, spacing)
            losses.append(1.0 - mean_metric(refined, reference, spacing, "dice"))
    assert np.mean(losses) < 0.005
    assert max(losses) < 0.01


def test_strength_zero_is_off_and_out_of_range_is_an_error():
    image, reference, spacing = load("Hippocampus_mini", "hippocampus_001")
    shifted = np.roll(reference, 1, axis=0)
    assert np.array_equal(refine_label_array(image, shifted, spacing, options=EdgeOptions(strength=0.0)), shifted)
    with pytest.raises(E2MISegError, match="outside 0..1"):
        EdgeOptions(strength=1.5)
    with pytest.raises(E2MISegError, match="unknown edge refinement method"):
        EdgeOptions(method="crf9000")


@pytest.mark.parametrize("method", ["meanfield", "guided", "geodesic"])
def test_selected_labels_only_others_bit_identical(method):
    image, reference, spacing = load("Hippocampus_mini", "hippocampus_003")
    perturbed = erode_labels(reference, ndimage.generate_binary_structure(3, 1))
    refined = refine_label_array(image, perturbed, spacing, values=[1], options=EdgeOptions(method=method, strength=0.8))
    assert np.array_equal(refined == 2, perturbed == 2)  # label 2 neither moved nor was entered
    assert not np.array_equal(refined, perturbed)  # label 1 did move
    assert set(np.unique(refined[refined != perturbed])) <= {0, 1}


def test_editable_region_limits_changes_and_band_limits_distance():
    image, reference, spacing = load("Hippocampus_mini", "hippocampus_001")
    perturbed = erode_labels(reference, ndimage.generate_binary_structure(3, 1), steps=2)
    editable = box_mask_ijk(reference.shape, [0, 0, 0, 40, 25, 40])
    refined = refine_label_array(image, perturbed, spacing, editable=editable, options=STRONG)
    assert np.array_equal(refined[~editable], perturbed[~editable])
    assert (refined[editable] != perturbed[editable]).any()
    narrow = refine_label_array(image, perturbed, spacing, options=EdgeOptions(strength=0.9, band_mm=1.0))
    changed = narrow != perturbed
    assert changed.any() and np.all(band_mask(perturbed, spacing, 1.0)[changed])


def test_refine_in_region_changes_only_the_painted_part_of_the_segment():
    image, reference, spacing = load("Hippocampus_mini", "hippocampus_004")
    segment = ndimage.binary_erosion(reference > 0, iterations=2)  # an under-drawn segment
    points = np.argwhere(segment)[[0, len(np.argwhere(segment)) // 2]][:, ::-1]  # two stroke points (i, j, k)
    region = stroke_region(segment.shape, points, spacing, radius_mm=4.0)
    refined = refine_in_region(image, segment, region, spacing, strength=0.8)
    assert refined.dtype == bool
    assert np.array_equal(refined[~region], segment[~region])
    assert (refined[region] != segment[region]).sum() > 5
    before = binary_metrics(segment, reference > 0, spacing)["dice"]
    assert binary_metrics(refined, reference > 0, spacing)["dice"] > before


def test_stroke_region_is_a_physical_tube_on_an_anisotropic_grid():
    spacing = (3.0, 1.0, 0.5)  # z, y, x mm
    shape = (10, 30, 60)
    region = stroke_region(shape, np.array([[10.0, 15.0, 5.0], [50.0, 15.0, 5.0]]), spacing, radius_mm=2.0)
    # along x (0.5 mm) the tube spans 20 mm + 2 x 2 mm; across y (1 mm) 2 x 2 mm; across z (3 mm) one slice
    assert region[5, 15, 6:55].all() and not region[5, 15, 0:5].any()
    assert region[5, 13:18, 30].all() and not region[5, 12, 30] and not region[5, 18, 30]
    assert region[:, 15, 30].sum() == 1
    assert not stroke_region(shape, np.empty((0, 3)), spacing, 2.0).any()


def test_uncertainty_is_high_on_boundaries_and_low_inside():
    image, reference, spacing = load("Hippocampus_mini", "hippocampus_001")
    probabilities = soft_probabilities(reference, [0, 1, 2], spacing, 1.0)
    uncertainty = entropy_map(probabilities)
    away = ~band_mask(reference, spacing, 3.0)  # more than 3 mm from any edge, including the 1|2 interface
    boundary = band_mask(reference, spacing, 0.5)
    assert uncertainty[boundary].mean() > 0.4
    assert uncertainty[away & (reference > 0)].max() < 0.05 and uncertainty[away & (reference == 0)].max() < 0.05
    assert entropy_map(np.full((3, 2, 2, 2), 1 / 3, dtype=np.float32)) == pytest.approx(1.0, abs=1e-5)


def test_uncertain_regions_ranked_with_lps_centroids_on_an_oblique_grid():
    reference = oblique_image()
    labels = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)
    labels[3:9, 4:14, 5:15] = 1
    uncertainty = np.zeros(labels.shape, dtype=np.float32)
    uncertainty[3:9, 4:6, 5:15] = 0.9   # long doubtful edge
    uncertainty[3:5, 12:14, 13:15] = 0.5  # small doubtful corner
    regions = uncertain_regions(uncertainty, labels, None, reference, patch_mm=None)
    assert [r["rank"] for r in regions] == [1, 2]
    assert regions[0]["summed_uncertainty"] > regions[1]["summed_uncertainty"]
    first = regions[0]
    assert first["box_ijk"] == [5, 4, 3, 14, 5, 8]
    expected = reference.TransformContinuousIndexToPhysicalPoint(first["centroid_ijk"])
    assert first["centroid_lps_mm"] == pytest.approx(expected)
    assert first["labels"] == [0, 1]
    assert first["volume_mm3"] == pytest.approx(first["voxels"] * np.prod(reference.GetSpacing()))


def test_box_mask_lps_matches_voxel_centres_on_an_oblique_grid():
    reference = oblique_image()
    centre = reference.TransformIndexToPhysicalPoint((10, 9, 6))
    mask = box_mask_lps(reference, [c - 0.01 for c in centre] + [c + 0.01 for c in centre])
    assert mask.sum() == 1 and mask[6, 9, 10]
    with pytest.raises(E2MISegError, match="contains no voxel centre"):
        box_mask_lps(reference, [1e4, 1e4, 1e4, 1e4 + 1, 1e4 + 1, 1e4 + 1])


def test_refine_segmentation_keeps_geometry_and_pixel_type():
    image = oblique_image()
    array = np.zeros(image.GetSize()[::-1], dtype=np.int16)
    array[4:8, 5:13, 6:14] = 3  # one voxel inside the bright block
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    refined = refine_segmentation(image, labels, options=STRONG)
    assert refined.GetPixelID() == labels.GetPixelID()
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(refined, getter)() == getattr(labels, getter)()
    grown = sitk.GetArrayFromImage(refined)
    truth = np.zeros_like(array)
    truth[3:9, 4:14, 5:15] = 3
    assert binary_metrics(grown == 3, truth == 3, (2.9, 1.3, 0.7))["dice"] > binary_metrics(array == 3, truth == 3, (2.9, 1.3, 0.7))["dice"]


def test_metrics_agree_with_monai():
    monai_metrics = require_module("monai.metrics")
    torch = require_module("torch")
    _, reference, spacing = load("Hippocampus_mini", "hippocampus_001")
    truth = reference == 1
    prediction = np.roll(dilate_labels(reference, ndimage.generate_binary_structure(3, 1)) == 1, 1, axis=1)
    ours = binary_metrics(prediction, truth, spacing)
    as_tensor = lambda m: torch.from_numpy(m[None, None].astype(np.float32))  # noqa: E731
    hd95 = monai_metrics.compute_hausdorff_distance(as_tensor(prediction), as_tensor(truth), percentile=95, spacing=list(spacing))
    assd = monai_metrics.compute_average_surface_distance(as_tensor(prediction), as_tensor(truth), symmetric=True, spacing=list(spacing))
    dice = 2 * (prediction & truth).sum() / (prediction.sum() + truth.sum())
    assert ours["dice"] == pytest.approx(dice)
    assert ours["hd95_mm"] == pytest.approx(float(hd95), abs=0.5)
    assert ours["assd_mm"] == pytest.approx(float(assd), rel=0.1)
    assert 0.0 < ours["boundary_f1"] < 1.0
    assert binary_metrics(truth, truth, spacing) == {"dice": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0, "boundary_f1": 1.0}
    assert binary_metrics(truth, np.zeros_like(truth), spacing)["hd95_mm"] == float("inf")


def test_an_uncertain_rim_round_an_organ_is_cut_into_reviewable_patches():
    image, reference, spacing = load("Hippocampus_mini", "hippocampus_001")
    reference_image = sitk.ReadImage(str(shared_file("fixtures/Hippocampus_mini/labelsTr/hippocampus_001.nii.gz")))
    rim = band_mask((reference > 0).astype(np.uint8), spacing, 1.0)
    uncertainty = rim.astype(np.float32) * 0.8
    whole = uncertain_regions(uncertainty, reference, None, reference_image, patch_mm=None)
    patches = uncertain_regions(uncertainty, reference, None, reference_image, patch_mm=10.0)
    assert len(whole) == 1 and len(patches) > 4
    assert sum(r["voxels"] for r in patches) == whole[0]["voxels"]
    for region in patches:
        i0, j0, k0, i1, j1, k1 = region["box_ijk"]
        assert max(i1 - i0 + 1, j1 - j0 + 1, k1 - k0 + 1) <= 10  # 1 mm voxels, 10 mm blocks
    sums = [r["summed_uncertainty"] for r in patches]
    assert sums == sorted(sums, reverse=True)
