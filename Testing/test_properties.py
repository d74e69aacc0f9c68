"""Property-based tests (hypothesis): geometry survives the whole pipeline, tiling covers everything.

Example counts are kept modest (the machine is shared); each property still sees oblique, flipped,
anisotropic and tiny cases, and hypothesis shrinks any failure to a minimal one.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from e2miseg.card import validate_card
from e2miseg.inference import InferenceOptions, Predictor
from e2miseg.tiling import gaussian_weights, pad_to_at_least, window_grid, window_starts
from helpers import make_card, pointwise_net

SETTINGS = dict(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def torch_runtime(monkeypatch):
    # these tests drive PyTorch modules directly (injected failures, pointwise nets); an OpenVINO
    # conversion per example would only add minutes
    monkeypatch.setenv("E2MISEG_RUNTIME", "torch")


class ThresholdNet(torch.nn.Module):
    """Class 1 where the (unnormalised) intensity is above 200, half-way between background 100 and block 300:
    a pointwise 'network' whose answer is known."""

    kind = "3d"
    num_classes = 2

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), 0.08 * (x[:, :1] - 200.0)], dim=1)


def rotation(quaternion) -> np.ndarray:
    w, x, y, z = np.array(quaternion) / np.linalg.norm(quaternion)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


quaternions = st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: np.linalg.norm(q) > 0.2)
spacings = st.tuples(*[st.floats(0.4, 3.0)] * 3)
sizes = st.tuples(*[st.integers(8, 20)] * 3)


@settings(**SETTINGS)
@given(size=sizes, spacing=spacings, origin=st.tuples(*[st.floats(-300, 300)] * 3), quaternion=quaternions,
       flip=st.booleans(), ratio=st.tuples(*[st.floats(0.7, 2.0)] * 3), suffix=st.sampled_from([".nrrd", ".seg.nrrd"]))
def test_geometry_round_trip_through_resampling(tmp_path_factory, size, spacing, origin, quaternion, flip, ratio, suffix):
    """Input file -> target spacing -> tiles -> back to the input grid -> output file: same grid, exactly.

    The labels also land where the bright block is: most of the block, little of the rest.
    """
    import e2miseg
    from e2miseg.io import write_result

    folder = tmp_path_factory.mktemp("geo")
    direction = rotation(quaternion) @ np.diag([1, 1, -1 if flip else 1])
    array = np.full(size[::-1], 100.0, dtype=np.float32)
    box = tuple(slice(s // 4, s // 4 + max(2, s // 2)) for s in size[::-1])
    array[box] = 300.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    source = folder / "input.nrrd"
    sitk.WriteImage(image, str(source))
    target = [s * r for s, r in zip(spacing, ratio)]
    card = make_card(patch=(16, 16, 16), spacing=target, labels=[{"value": 1, "name": "block", "color": [1, 0, 0]}])
    card["preprocessing"]["normalization"] = {"scheme": "none"}
    card = validate_card(card)
    labels = e2miseg.predict(str(source), ThresholdNet(), card, device="cpu")
    original = sitk.ReadImage(str(source))
    # in memory the pipeline's output grid is the input grid, bit for bit (direction entries below
    # 1e-30, which break ITK's resampler, are read as the 0 they stand for)
    assert labels.GetSize() == original.GetSize() and labels.GetSpacing() == original.GetSpacing()
    assert labels.GetOrigin() == original.GetOrigin()
    np.testing.assert_allclose(labels.GetDirection(), original.GetDirection(), rtol=0, atol=1e-30)
    output = folder / f"out{suffix}"
    write_result(labels, card, output)

    if suffix == ".seg.nrrd":
        import slicerio

        written = slicerio.read_segmentation(str(output))
        assert written["voxels"].shape == original.GetSize()
        expected = np.eye(4)
        expected[:3, :3] = np.array(original.GetDirection()).reshape(3, 3) @ np.diag(original.GetSpacing())
        expected[:3, 3] = original.GetOrigin()
        np.testing.assert_allclose(written["ijkToLPS"], expected, rtol=0, atol=1e-9)
        result = written["voxels"].transpose(2, 1, 0)
    else:
        written = sitk.ReadImage(str(output))
        assert written.GetSize() == original.GetSize()
        # NRRD stores direction x spacing, so reading any file back re-derives the spacing (1 ulp)
        for get in (sitk.Image.GetSpacing, sitk.Image.GetOrigin, sitk.Image.GetDirection):
            np.testing.assert_allclose(get(written), get(original), rtol=0, atol=1e-12)
        result = sitk.GetArrayFromImage(written)
    block = np.zeros(array.shape, bool)
    block[box] = True
    hit = result > 0
    dice = 2 * np.sum(hit & block) / (hit.sum() + block.sum())
    assert dice > 0.5, (dice, ratio)  # a 4-voxel block seen at half resolution keeps about 3/4
    # and it sits where the block is: centroids agree to within one network voxel
    centre = np.argwhere(hit).mean(0) - np.argwhere(block).mean(0)
    shift_mm = np.linalg.norm(direction @ (centre[::-1] * np.array(spacing)))
    assert shift_mm < max(target), (shift_mm, target)


@settings(max_examples=50, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 40)] * 3), patch=st.tuples(*[st.integers(1, 16)] * 3), step=st.floats(0.1, 1.0))
def test_windows_cover_every_voxel_of_any_volume(shape, patch, step):
    array = np.arange(np.prod(shape), dtype=np.float32).reshape((1,) + shape)
    padded, crop = pad_to_at_least(array, patch)
    assert all(p >= q for p, q in zip(padded.shape[1:], patch))
    np.testing.assert_array_equal(padded[(slice(None),) + crop], array)  # the crop undoes the padding exactly
    coverage = np.zeros(padded.shape[1:], dtype=np.int32)
    windows = window_grid(padded.shape[1:], patch, step)
    for window in windows:
        assert all(0 <= w.start and w.stop <= n and w.stop - w.start == p for w, n, p in zip(window, padded.shape[1:], patch))
        coverage[window] += 1
    assert coverage.min() >= 1
    for size, length in zip(padded.shape[1:], patch):
        starts = window_starts(size, length, step)
        assert starts[0] == 0 and starts[-1] == size - length
        assert all(0 < b - a <= max(1, int(np.ceil(length * step))) for a, b in zip(starts, starts[1:]))


@settings(max_examples=50, deadline=None)
@given(patch=st.tuples(*[st.integers(1, 24)] * 3), sigma=st.floats(0.01, 2.0))
def test_gaussian_weights_are_positive_and_peak_at_one(patch, sigma):
    weights = gaussian_weights(patch, sigma)
    assert weights.shape == patch and np.all(weights > 0) and np.all(np.isfinite(weights))
    assert weights.max() == pytest.approx(1.0)


NET = pointwise_net(hidden=4)


@settings(max_examples=30, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 24)] * 3), patch=st.tuples(*[st.integers(2, 12)] * 3),
       step=st.floats(0.25, 1.0), batch=st.integers(1, 5))
def test_stitched_probabilities_of_any_size_equal_the_whole_volume(shape, patch, step, batch):
    """A 1-voxel receptive field cannot see tiles: any size (also below the patch) gives the untiled answer."""
    volume = np.random.default_rng(sum(shape)).normal(size=(1,) + shape).astype(np.float32)
    card = validate_card(make_card(patch=patch, step=step, batch_size=batch))
    probabilities = Predictor(NET, card, InferenceOptions(device="cpu")).predict(volume)
    with torch.inference_mode():
        whole = torch.softmax(NET(torch.from_numpy(volume)[None]), 1)[0].numpy()
    assert probabilities.shape == (3,) + shape and np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities, whole, atol=1e-5)
