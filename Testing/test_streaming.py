"""Slab-wise stitching, resampling and labelling: the same labels as whole volumes, in bounded memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import e2miseg
from conftest import ROOT, oblique_image
from e2miseg.card import validate_card
from e2miseg.inference import InferenceOptions, Predictor
from e2miseg.postprocess import LabelSink, labels_on_input_grid
from e2miseg.preprocess import Normalizer, normalize, preprocess, resample_array
from e2miseg.resample import Geometry
from helpers import make_card, pointwise_net


class RecordingSink:
    """Keeps every slab the predictor hands over, to check order, coverage and values."""

    def begin(self, num_classes, shape_zyx, axis):
        self.axis, self.shape, self.parts = axis, (num_classes,) + tuple(shape_zyx), []

    def add(self, start, slab):
        self.parts.append((start, slab.copy()))

    def end(self):
        pass

    def whole(self) -> np.ndarray:
        starts = [start for start, _ in self.parts]
        sizes = [slab.shape[self.axis + 1] for _, slab in self.parts]
        assert starts == list(np.cumsum([0] + sizes[:-1]))  # consecutive, no gap, no overlap
        return np.concatenate([slab for _, slab in self.parts], axis=self.axis + 1)


class SmallConvNet(torch.nn.Module):
    """3x3x3 receptive field: window borders matter, so the Gaussian blending is exercised."""

    kind = "3d"
    num_classes = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv3d(1, 6, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(6, 4, 3, padding=1))

    def forward(self, x):
        return self.net(x) * 3.0


def whole_volume_stitching(net, volume: np.ndarray, card: dict) -> np.ndarray:
    """The textbook algorithm: every window's weighted probabilities summed into full-size arrays."""
    from e2miseg.tiling import gaussian_weights, pad_to_at_least, window_grid

    patch = tuple(card["inference"]["patch_size_zyx"])
    padded, crop = pad_to_at_least(volume, patch)
    weights = torch.from_numpy(np.array(gaussian_weights(patch, card["inference"]["gaussian_sigma_scale"])))
    total = torch.zeros((net.num_classes,) + padded.shape[1:])
    weight_sum = torch.zeros(padded.shape[1:])
    with torch.inference_mode():
        for window in window_grid(padded.shape[1:], patch, card["inference"]["step"]):
            tile = torch.from_numpy(padded[(slice(None),) + window][None].copy())
            total[(slice(None),) + window] += torch.softmax(net(tile), 1)[0] * weights
            weight_sum[window] += weights
    return (total[(slice(None),) + crop] / weight_sum[crop]).numpy()


@pytest.mark.parametrize("batch_size,step", [(1, 0.5), (3, 0.5), (5, 0.3), (50, 0.7)])
def test_band_stitching_streams_what_whole_volume_stitching_gives(batch_size, step):
    """Batches that straddle rows of windows, several rows per batch, and a volume padded up to the patch."""
    volume = np.random.default_rng(0).normal(size=(1, 37, 21, 11)).astype(np.float32)
    card = validate_card(make_card(patch=(8, 12, 16), step=step, batch_size=batch_size))
    net = SmallConvNet().eval()
    sink = RecordingSink()
    Predictor(net, card, InferenceOptions(device="cpu", runtime="torch")).predict_into(volume, sink)
    streamed = sink.whole()
    assert len(sink.parts) > 1 or batch_size == 50
    np.testing.assert_allclose(streamed, whole_volume_stitching(net, volume, card), atol=1e-6)


def test_slice_wise_models_stream_slabs_along_their_slice_axis():
    volume = np.random.default_rng(1).normal(size=(1, 9, 30, 11)).astype(np.float32)
    card = validate_card(make_card("2d", patch=None, slice_axis="y", batch_size=1))

    class TwoD(torch.nn.Module):
        num_classes = 3

        def forward(self, x):
            return torch.cat([x, -x, x * x], 1)

    sink = RecordingSink()
    predictor = Predictor(TwoD(), card, InferenceOptions(device="cpu", runtime="torch"))
    predictor.predict_into(volume, sink)
    assert sink.axis == 1 and len(sink.parts) == 8  # 30 slices, 4 per network pass
    np.testing.assert_allclose(sink.whole(), predictor.predict(volume), atol=0)


class ArgmaxOnlySink(RecordingSink):
    needs_probabilities = False


@pytest.mark.parametrize("tta", [False, True])
def test_a_sink_that_only_takes_the_argmax_gets_logits_unless_mirrorings_are_averaged(tta):
    """Slice-wise prediction skips the softmax for a sink that labels on the network grid (each slice
    is predicted once, argmax(logits) == argmax(softmax)); mirrored passes still average probabilities."""
    volume = np.random.default_rng(5).normal(size=(1, 7, 12, 10)).astype(np.float32)
    card = validate_card(make_card("2d", patch=None, slice_axis="z", batch_size=1, mirror_axes=["x"]))

    class ThreeClass(torch.nn.Module):
        num_classes = 3

        def forward(self, x):
            return torch.cat([x, -x, 0.5 * x * x - 1.0], 1)

    predictor = Predictor(ThreeClass(), card, InferenceOptions(device="cpu", runtime="torch", tta=tta))
    probabilities = predictor.predict(volume)
    sink = ArgmaxOnlySink()
    predictor.predict_into(volume, sink)
    scores = sink.whole()
    np.testing.assert_array_equal(scores.argmax(0), probabilities.argmax(0))
    if tta:
        np.testing.assert_allclose(scores, probabilities, atol=1e-6)
    else:
        logits = np.concatenate([volume, -volume, 0.5 * volume ** 2 - 1.0])
        np.testing.assert_allclose(scores, logits, atol=1e-6)


@pytest.mark.parametrize("spacing,needs", [((1.0, 1.0, 1.0), False), ((0.5, 1.7, 2.2), True)])
def test_label_sink_needs_probabilities_only_when_it_resamples(spacing, needs):
    reference = oblique_image(size=(12, 10, 8))
    card = make_card(spacing=spacing)
    card["preprocessing"]["target_spacing_xyz"] = [s * f for s, f in zip(reference.GetSpacing(), spacing)]
    _, grid = preprocess([reference], validate_card(card))
    assert LabelSink(grid, reference).needs_probabilities is needs


def _grid_and_probabilities(spacing, classes=4, seed=0, crop=False):
    reference = oblique_image(size=(29, 23, 17), seed=seed)
    card = make_card(spacing=spacing)
    card["preprocessing"]["normalization"] = {"scheme": "none"}
    card["preprocessing"]["crop_to_nonzero"] = crop
    image = reference
    if crop:  # zero margins, so the network grid covers only part of the input
        array = sitk.GetArrayFromImage(reference)
        array[:3], array[:, -4:], array[:, :, :2] = 0, 0, 0
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
    _, grid = preprocess([image], validate_card(card))
    rng = np.random.default_rng(seed)
    # smooth blobs plus noise: large uniform regions and boundaries, as real predictions have
    z, y, x = np.meshgrid(*[np.linspace(0, 3, n) for n in grid.network_shape_zyx], indexing="ij")
    logits = np.stack([np.sin(z * (k + 1) + y * (2 - k) + x * k) * 4 for k in range(classes)])
    logits = logits + rng.normal(scale=0.3, size=logits.shape)
    probabilities = np.exp(logits) / np.exp(logits).sum(0)
    return reference, grid, probabilities.astype(np.float32)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 1.7, 2.2), (2.1, 0.6, 0.9), (0.7, 1.3, 2.9)])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_label_sink_gives_the_same_labels_slab_by_slab(spacing, axis):
    reference, grid, probabilities = _grid_and_probabilities(spacing, crop=axis == 1)
    whole = sitk.GetArrayFromImage(labels_on_input_grid(probabilities, grid, reference))
    rng = np.random.default_rng(axis)
    length = probabilities.shape[axis + 1]
    cuts = np.unique(np.concatenate([[0, length], rng.integers(1, length, size=6)]))
    sink = LabelSink(grid, reference, slab_bytes=1)  # one input slice per step: the most boundaries
    sink.begin(probabilities.shape[0], probabilities.shape[1:], axis)
    for start, stop in zip(cuts[:-1], cuts[1:]):
        index = [slice(None)] * 4
        index[axis + 1] = slice(start, stop)
        sink.add(int(start), probabilities[tuple(index)])
    sink.end()
    np.testing.assert_array_equal(sink.labels, whole)


@pytest.mark.parametrize("spacing", [(0.5, 1.7, 2.2), (2.1, 0.6, 0.9), (1.0, 1.0, 1.0)])
def test_labels_agree_with_simpleitk_resampling_of_each_class(spacing):
    """The previous implementation: each class resampled by SimpleITK (linear), then the argmax."""
    reference, grid, probabilities = _grid_and_probabilities(spacing, classes=3, seed=2, crop=True)
    labels = sitk.GetArrayFromImage(labels_on_input_grid(probabilities, grid, reference))
    resampled = np.stack([resample_array(p, grid.network_reference, grid.cropped) for p in probabilities])
    expected = np.zeros_like(labels)
    expected[grid.box] = np.argmax(resampled, axis=0)
    assert np.mean(labels == expected) >= 0.9999
    assert np.mean(labels[grid.box] > 0) > 0.2  # not trivially all background


def test_a_sink_that_misses_slabs_fails_loudly():
    reference, grid, probabilities = _grid_and_probabilities((0.5, 1.7, 2.2))
    sink = LabelSink(grid, reference)
    sink.begin(probabilities.shape[0], probabilities.shape[1:], 0)
    sink.add(0, probabilities[:, :3])
    with pytest.raises(ValueError, match="slab starts at"):
        sink.add(5, probabilities[:, 5:])
    with pytest.raises(RuntimeError, match="stopped early"):
        sink.end()


def test_preprocessing_matches_simpleitk_resampling():
    image = oblique_image(size=(33, 26, 19))
    card = validate_card(make_card(spacing=(0.6, 1.9, 1.1)))
    array, grid = preprocess([image], card)
    expected = resample_array(normalize(sitk.GetArrayViewFromImage(image), {"scheme": "zscore"}), image, grid.network_reference)
    np.testing.assert_allclose(array[0], expected, atol=2e-5)


@pytest.mark.parametrize("scheme", [{"scheme": "zscore"}, {"scheme": "percentile", "lower": 1, "upper": 99},
                                    {"scheme": "nonzero_zscore"}])
@pytest.mark.parametrize("slice_mm,share", [(2.0, 0.35), (0.8, 0.2)])
def test_downsampling_normalises_only_the_slices_it_reads_and_gives_the_same_bits(monkeypatch, scheme, slice_mm, share):
    """A CT-like job (0.8 mm in-plane to 3 mm; slices of 2 mm, or 0.8 mm so that z is thinned too): rows,
    columns and slices that no network voxel reads are dropped before normalising; the result is bit
    for bit the one without that shortcut."""
    rng = np.random.default_rng(5)
    array = rng.integers(-1000, 1500, size=(9, 70, 66)).astype(np.int16)
    array[:, :5] = 0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, slice_mm))
    image.SetDirection(oblique_image().GetDirection())
    card = make_card(spacing=(3.0, 3.0, 3.0))
    card["preprocessing"]["normalization"] = scheme
    card = validate_card(card)
    normalised = []
    original_apply = Normalizer.apply

    def counting_apply(self, chunk):
        normalised.append(chunk.size)
        return original_apply(self, chunk)

    monkeypatch.setattr(Normalizer, "apply", counting_apply)
    compacted, grid = preprocess([image], card)
    compacted_voxels = sum(normalised)
    monkeypatch.setattr("e2miseg.preprocess._COMPACT_SHARE", 0.0)  # never compact
    normalised.clear()
    whole, _ = preprocess([image], card)
    whole_voxels = sum(normalised)  # every slice the slabs span (at 0.8 mm the last two of 9 are read by none)
    assert whole_voxels == (array.size if slice_mm == 2.0 else 7 * array[0].size)
    # in-plane 2 x 18 of 66 columns and 2 x 19 of 70 rows are read; at 0.8 mm also at most 4 of the 7 slices
    assert compacted_voxels < share * whole_voxels
    assert np.array_equal(compacted, whole)
    expected = resample_array(normalize(array, scheme), image, grid.network_reference)
    np.testing.assert_allclose(compacted[0], expected, atol=2e-5)


def test_take_gives_index_select_for_evenly_spaced_and_irregular_indices():
    from e2miseg.resample import take

    block = torch.randn(5, 9, 11)
    for dim in range(3):
        length = block.shape[dim]
        for index in (np.arange(0, length, 2), np.arange(1, length, 3), np.arange(length), np.array([length - 1]),
                      np.array([0, 1, 1, 2]), np.array([2, 0]), np.array([0, 2, 3])):
            got = take(block, dim, index)
            assert torch.equal(got, block.index_select(dim, torch.from_numpy(index))), (dim, index)


def test_chunked_normalisation_keeps_wide_integer_contrast(monkeypatch):
    """uint32 values near 4e9 with a spread of a few units: float32 would flatten them."""
    monkeypatch.setattr("e2miseg.preprocess._CHUNK_VOXELS", 7)  # many chunks even for a small array
    rng = np.random.default_rng(3)
    array = (4_000_000_000 + rng.integers(0, 9, size=(6, 5, 4))).astype(np.uint32)
    array[0, 0] = 0
    for scheme in ({"scheme": "zscore"}, {"scheme": "nonzero_zscore"}, {"scheme": "percentile", "lower": 5, "upper": 95}):
        wide = array.astype(np.float64)
        mask = wide != 0 if scheme["scheme"] == "nonzero_zscore" else np.ones(wide.shape, bool)
        if scheme["scheme"] == "percentile":
            wide = np.clip(wide, *np.percentile(wide, [5, 95]))
        expected = (wide - wide[mask].mean()) / wide[mask].std()
        expected[~mask] = 0
        np.testing.assert_allclose(normalize(array, scheme), expected, atol=1e-5)
    assert Normalizer.fit(np.zeros((3, 3), np.int16), {"scheme": "nonzero_zscore"}).std == 1e-8


def test_streamed_labels_equal_the_labels_returned_with_probabilities():
    image = oblique_image(size=(30, 26, 14))
    card = validate_card(make_card(patch=(8, 16, 16), spacing=(0.8, 1.1, 2.0), step=0.5, batch_size=2))
    net = pointwise_net(hidden=4)
    timings: dict[str, float] = {}
    streamed = e2miseg.predict(image, net, card, device="cpu", timings=timings)
    labels, probabilities = e2miseg.predict(image, net, card, device="cpu", return_probabilities=True)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(streamed), sitk.GetArrayViewFromImage(labels))
    assert probabilities.GetNumberOfComponentsPerPixel() == 3
    assert {"load", "read", "preprocess", "compile", "network", "stitch", "postprocess", "total"} <= set(timings)
    assert all(value >= 0 for value in timings.values()) and timings["network"] > 0
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"] * 1.01 + 1e-3
    assert Geometry.of(streamed) == Geometry.of(image)


MEMORY_CHILD = textwrap.dedent('''
    import json, sys
    import numpy as np, psutil, SimpleITK, torch
    torch.set_num_threads(1)
    import e2miseg, e2miseg.api
    from e2miseg.card import validate_card
    from helpers import make_card

    CLASSES = {classes}

    class Pointwise(torch.nn.Module):
        kind = "3d"
        num_classes = CLASSES

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 1), torch.nn.Tanh(), torch.nn.Conv3d(8, CLASSES, 1))

        def forward(self, x):
            return self.net(x)

    labels = [{{"value": v, "name": f"class {{v}}", "color": [v / CLASSES, 0.5, 0.5]}} for v in range(1, CLASSES)]
    card = validate_card(make_card(patch={patch}, labels=labels, spacing=(1.0, 1.0, 1.0), step=0.5, batch_size=2))
    net = Pointwise().eval()
    with torch.inference_mode():  # torch's one-time allocations happen before the baseline
        net(torch.zeros((2, 1) + {patch}))
    before = psutil.Process().memory_info().rss
    labels = e2miseg.predict(sys.argv[1], net, card, device="cpu", runtime="torch")
    # VmHWM: the peak of this process's own memory map. (ru_maxrss is no good here: at exec the
    # kernel folds the parent's high-water mark into it, and the parent is pytest.)
    status = open("/proc/self/status", encoding="ascii").read()
    peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024
    labelled = int(np.count_nonzero(SimpleITK.GetArrayViewFromImage(labels)))
    print(json.dumps({{"extra": peak - before, "labelled": labelled}}))
''')


@pytest.mark.machine("Linux /proc")
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak resident set from Linux's /proc")
def test_peak_memory_stays_far_below_one_float_volume_per_class(tmp_path):
    """A 16-class model on a 480x192x192 network grid: one float32 volume per class is 1.1 GB.
    The streamed pipeline must stay under half of that above its starting point (it needs about
    0.35 GB here); the previous design, with a full-size accumulator per class and each class
    resampled whole, needed 1.6 GB, and anything holding one volume per class fails."""
    classes, patch = 16, (16, 128, 128)
    z, y, x = np.meshgrid(np.linspace(-1, 1, 240), np.linspace(-1, 1, 192), np.linspace(-1, 1, 192), indexing="ij")
    array = (np.sin(3 * z) + np.cos(4 * y) * x * 2).astype(np.float32)  # smooth: labels with real boundaries
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))  # the network grid (1 mm) has twice the input's slices
    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(image, str(path))
    del array, image, z, y, x
    script = tmp_path / "child.py"
    script.write_text(MEMORY_CHILD.format(classes=classes, patch=patch), encoding="utf-8")
    env_path = f"{ROOT / 'E2MISegModule'}:{ROOT / 'Testing'}"
    result = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": env_path})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    one_volume_per_class = classes * 480 * 192 * 192 * 4
    assert report["labelled"] > 0
    assert report["extra"] < one_volume_per_class / 2, f"{report['extra'] / 2**20:.0f} MB above the baseline"


def test_voxels_of_cells_are_the_voxels_whose_cell_is_listed():
    """The sink finds the voxels to interpolate from the listed source cells; the same set as
    expanding a per-cell flag to every target voxel (the previous way)."""
    from e2miseg.postprocess import _voxels_of_cells

    rng = np.random.default_rng(7)
    for _ in range(20):
        shape = tuple(int(n) for n in rng.integers(1, 6, size=3))
        maps = [np.sort(rng.integers(0, n, size=int(rng.integers(1, 12)))) for n in shape]
        listed = rng.random(shape) < 0.3
        points = _voxels_of_cells(np.argwhere(listed), maps)
        expanded = listed[np.ix_(*maps)]
        found = np.zeros(expanded.shape, bool)
        found[tuple(p.numpy() for p in points)] = True
        np.testing.assert_array_equal(found, expanded)
        assert len(points[0]) == expanded.sum()  # each voxel once
