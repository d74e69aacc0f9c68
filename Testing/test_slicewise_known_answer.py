"""The 2D and 2.5D paths of ``e2miseg.predict`` on volumes whose answer is known.

Issue 24 asked whether the slice-wise path (tiling of each slice, Gaussian stitching, resampling to
the network grid and back) shifts, blurs or inflates boundaries, which would show up as the
over-segmentation both slice-wise models had. An oracle network reads the labels from its input:
one channel per label holding that label's indicator (no normalisation), so every difference between
its output and the reference comes from the engine's path, not from a network. (One channel with
intensity k for label k would not do: resampling the boundary between 0 and 2 passes through 1.)
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

import e2miseg
from e2miseg.card import validate_card
from helpers import HIPPOCAMPUS_LABELS, make_card

LEVELS = 4  # background + three labels, as ACDC (RV, myocardium, LV)


class IndicatorOracle(torch.nn.Module):
    """Label k wins where its indicator channel (centre slice of the stack) is above 1/2 and highest."""

    num_classes = LEVELS
    size_divisor = 8

    def __init__(self, kind: str, slices: int) -> None:
        super().__init__()
        self.kind, self.slices = kind, slices
        self.gain = torch.nn.Parameter(torch.tensor(20.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 2.5D rows are channel-major: the k neighbours of channel 0, then those of channel 1, ...
        centres = x[:, self.slices // 2:: self.slices]
        background = torch.full_like(centres[:, :1], 0.5)
        return self.gain * torch.cat((background, centres), dim=1)


def heart_like_labels(shape_zyx: tuple[int, int, int], spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """LV blood pool (3) inside a myocardial ring (2), an RV crescent (1) beside it; radii in mm shrink
    towards the apex, as in a short-axis stack."""
    z, y, x = np.indices(shape_zyx, dtype=np.float32)
    sx, sy, _ = spacing_xyz
    cy, cx = shape_zyx[1] * sy / 2, shape_zyx[2] * sx / 2
    labels = np.zeros(shape_zyx, np.uint8)
    for k in range(shape_zyx[0]):
        scale = 1.0 - 0.5 * k / max(shape_zyx[0] - 1, 1)
        r_lv, r_myo = 14 * scale, 20 * scale
        dy, dx = y[k] * sy - cy, x[k] * sx - cx
        d_lv = np.hypot(dy, dx)
        d_rv = np.hypot(dy, dx + 24 * scale)
        labels[k][d_rv < 16 * scale] = 1
        labels[k][d_lv < r_myo] = 2
        labels[k][d_lv < r_lv] = 3
    return labels


def channels_of(labels: np.ndarray, spacing_xyz) -> list[sitk.Image]:
    """One indicator image per label, on the same (anisotropic, off-origin) grid."""
    images = []
    for value in range(1, LEVELS):
        image = sitk.GetImageFromArray((labels == value).astype(np.float32))
        image.SetSpacing(tuple(float(s) for s in spacing_xyz))
        image.SetOrigin((-31.0, 12.5, -40.0))
        images.append(image)
    return images


def oracle_model(kind: str, slices: int, target_spacing_xyz, patch) -> torch.nn.Module:
    labels = [copy.deepcopy(HIPPOCAMPUS_LABELS[0]) for _ in range(LEVELS - 1)]
    for value, entry in enumerate(labels, start=1):
        entry.update(value=value, name=f"label {value}")
    card = make_card(kind, arch="ehanet", patch=patch, labels=labels, spacing=target_spacing_xyz,
                     channels=LEVELS - 1, slices=slices, slice_axis="z", step=0.5, batch_size=2)
    for channel in card["channels"]:
        channel["normalization"] = {"scheme": "none"}
    card["preprocessing"].pop("normalization", None)
    model = IndicatorOracle(kind, slices)
    model.card = validate_card(card)
    return model


def per_label(reference: np.ndarray, predicted: np.ndarray, spacing_xyz) -> dict[int, dict[str, float]]:
    scores = {}
    for value in range(1, LEVELS):
        ref, pred = reference == value, predicted == value
        centroid_shift_mm = np.abs((np.array(ndimage.center_of_mass(pred)) - np.array(ndimage.center_of_mass(ref)))
                                   * np.array(spacing_xyz[::-1]))
        scores[value] = {"dice": 2 * (ref & pred).sum() / (ref.sum() + pred.sum()),
                         "volume_ratio": pred.sum() / ref.sum(), "shift_mm": float(centroid_shift_mm.max())}
    return scores


@pytest.mark.parametrize("kind,slices", [("2d", 1), ("2.5d", 3)])
def test_on_the_network_grid_tiled_slices_reproduce_the_labels_exactly(kind, slices):
    """Input at the target spacing, slices larger than the patch: only tiling and stitching act."""
    spacing = (1.5625, 1.5625, 10.0)
    reference = heart_like_labels((8, 72, 64), spacing)
    model = oracle_model(kind, slices, spacing, patch=(32, 32))
    predicted = sitk.GetArrayFromImage(e2miseg.predict(channels_of(reference, spacing), model, runtime="torch"))
    np.testing.assert_array_equal(predicted, reference)


@pytest.mark.parametrize("kind,slices", [("2d", 1), ("2.5d", 3)])
@pytest.mark.parametrize("input_spacing", [(1.25, 1.25, 10.0), (1.9, 1.9, 5.0)])
def test_resampled_slices_keep_volume_and_position(kind, slices, input_spacing):
    """Finer or coarser in-plane input, thinner slices: resampling to the network grid and back may
    move a boundary by a fraction of a voxel, but must not grow, shrink or shift the anatomy."""
    reference = heart_like_labels((12, 96, 88), input_spacing)
    model = oracle_model(kind, slices, (1.5625, 1.5625, 10.0), patch=(32, 32))
    out = e2miseg.predict(channels_of(reference, input_spacing), model, runtime="torch")
    predicted = sitk.GetArrayFromImage(out)
    assert out.GetSpacing() == pytest.approx(input_spacing) and predicted.shape == reference.shape
    for value, score in per_label(reference, predicted, input_spacing).items():
        assert score["dice"] >= 0.99, (value, score)
        assert 0.98 <= score["volume_ratio"] <= 1.02, (value, score)
        assert score["shift_mm"] <= 0.1, (value, score)
