"""Window grids, Gaussian weights, padding and slice stacks."""
from __future__ import annotations

import numpy as np
import pytest

from e2miseg.tiling import gaussian_weights, pad_to_at_least, pad_to_multiple, slice_stack_indices, window_grid, window_starts


@pytest.mark.parametrize("size,patch,step", [(100, 32, 0.5), (33, 32, 0.5), (32, 32, 0.5), (10, 32, 0.5), (200, 64, 0.8), (97, 16, 0.25)])
def test_windows_cover_every_voxel_with_bounded_stride(size, patch, step):
    starts = window_starts(size, patch, step)
    assert starts[0] == 0
    covered = np.zeros(max(size, patch), dtype=int)
    for s in starts:
        covered[s:s + patch] += 1
    assert covered[:size].min() >= 1
    if size > patch:
        assert starts[-1] + patch == size
        assert max(np.diff(starts)) <= patch * step + 1  # rounding may add one voxel
    assert starts == sorted(set(starts))


def test_window_grid_is_product_of_axes():
    grid = window_grid((40, 20, 16), (16, 16, 16), 0.5)
    assert len(grid) == len(window_starts(40, 16, 0.5)) * len(window_starts(20, 16, 0.5)) * 1
    assert all(w[2] == slice(0, 16) for w in grid)


def test_gaussian_weights_peak_in_centre_and_never_zero():
    w = gaussian_weights((9, 15, 15), 0.125)
    assert w.shape == (9, 15, 15)
    assert w.max() == pytest.approx(1.0)
    assert np.unravel_index(w.argmax(), w.shape) == (4, 7, 7)
    assert w.min() >= 1e-3
    assert np.allclose(w, w[::-1, ::-1, ::-1])  # symmetric
    assert w[4, 7, 0] < w[4, 7, 3] < w[4, 7, 7]
    with pytest.raises(ValueError):
        w[0, 0, 0] = 5  # shared cached array must not be mutated


def test_pad_to_at_least_is_centred_and_invertible():
    a = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7)
    padded, crop = pad_to_at_least(a, (8, 6, 10))
    assert padded.shape == (2, 8, 6, 10)
    assert np.array_equal(padded[(slice(None),) + crop], a)
    assert crop[0] == slice(1, 6) and crop[2] == slice(1, 8)


def test_pad_to_multiple():
    a = np.ones((1, 3, 33, 30), dtype=np.float32)
    padded, crop = pad_to_multiple(a, 32)
    assert padded.shape == (1, 3, 64, 32)
    assert np.array_equal(padded[(slice(None), slice(None)) + crop], a)


def test_slice_stack_replicates_edges():
    assert slice_stack_indices(10, 0, 3) == [0, 0, 1]
    assert slice_stack_indices(10, 9, 3) == [8, 9, 9]
    assert slice_stack_indices(10, 5, 5) == [3, 4, 5, 6, 7]
    assert slice_stack_indices(1, 0, 7) == [0] * 7
