"""One extreme voxel must not decide the normalisation (issue 21): it used to set the z-score
statistics alone, so the whole image normalised to a constant and the segmentation came back empty
(FLT_MAX, 1e30, a -FLT_MAX NoData value) or degraded (1e6: Dice 0.70), with exit 0."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from bad_inputs import good_array

EXTREMES = [float(np.finfo(np.float32).max), 1e30, 1e6, -float(np.finfo(np.float32).max)]


@pytest.fixture(scope="module")
def bundled():
    import e2miseg

    return e2miseg.load_model("e2miseg-hippocampus", device="cpu")


@pytest.fixture(scope="module")
def clean(bundled, hippocampus_image_module):
    import e2miseg

    image = sitk.ReadImage(str(hippocampus_image_module), sitk.sitkFloat32)
    return image, sitk.GetArrayFromImage(e2miseg.predict(image, bundled[0]))


@pytest.fixture(scope="module")
def hippocampus_image_module():
    from conftest import shared_file

    return shared_file("fixtures/Hippocampus_mini/imagesTr/hippocampus_001.nii.gz")


@pytest.mark.parametrize("value", EXTREMES, ids=["FLT_MAX", "1e30", "1e6", "-FLT_MAX"])
def test_one_extreme_voxel_keeps_the_segmentation(bundled, clean, value, one_thread):
    import e2miseg

    image, reference = clean
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = value
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    labels = sitk.GetArrayFromImage(e2miseg.predict(bad, bundled[0]))
    both = np.count_nonzero(labels > 0) + np.count_nonzero(reference > 0)
    dice = 2 * np.count_nonzero((labels > 0) & (reference > 0)) / both
    assert np.count_nonzero(reference) > 100 and dice >= 0.99, dice


def test_clipping_leaves_ordinary_images_alone():
    """Bounds lie four 1-99 % spreads beyond the percentiles: a normal image has nothing out there."""
    from e2miseg.preprocess import Normalizer, robust_clip_bounds

    array = good_array((20, 24, 28))
    low, high = robust_clip_bounds(array)
    assert low < array.min() and high > array.max()
    spiked = array.copy()
    spiked[0, 0, 0] = 1e30
    normal = Normalizer.fit(array, {"scheme": "zscore"})
    robust = Normalizer.fit(spiked, {"scheme": "zscore"})
    assert abs(robust.mean - normal.mean) < 0.05 * normal.std and abs(robust.std / normal.std - 1) < 0.05
    out = robust.apply(spiked)
    assert np.isfinite(out).all() and out[0, 0, 0] < 30  # clipped, not 1e28 standard deviations


def test_no_spread_means_no_clipping():
    """An image that is 99 % one value has no spread to call anything an outlier: nothing is clipped."""
    from e2miseg.preprocess import robust_clip_bounds

    array = np.zeros((10, 10, 10), np.float32)
    array[0, 0, :5] = 100.0
    assert robust_clip_bounds(array) is None
    assert robust_clip_bounds(array, nonzero=True) is None  # the non-zero voxels are all 100


def test_training_preprocesses_through_the_same_function():
    """The training cache calls e2miseg.preprocess.preprocess, whose Normalizer clips: one rule for both."""
    import inspect

    from e2miseg_train import cache

    assert "from e2miseg.preprocess import preprocess" in inspect.getsource(cache)


def test_plausibility_warns_on_empty_and_far_off_volumes():
    """Issue 21 point 4: an empty result, or a label volume far outside the card's validation range, is
    reported in one line (not an error)."""
    from bad_inputs import volume
    from e2miseg.card import validate_card
    from e2miseg.plausibility import plausibility_warning
    from helpers import make_card

    card = make_card()
    card["labels"][0]["validation_volume_mm3"] = {"min": 100.0, "max": 200.0, "cases": 5}
    card = validate_card(card)
    array = np.zeros((12, 14, 16), np.uint8)
    assert "the segmentation is empty" in plausibility_warning(volume(array), card)
    array[:5, :5, :6] = 1  # 150 mm³: inside the range
    assert plausibility_warning(volume(array), card) is None
    array[:, :, :] = 1  # 2688 mm³: more than twice the largest
    line = plausibility_warning(volume(array), card)
    assert "Anterior hippocampus 2688 mm³ (validation 100-200)" in line and "\n" not in line
