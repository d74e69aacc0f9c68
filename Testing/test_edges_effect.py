"""The Segment Editor effect's stroke arithmetic (Slicer-free part), on a ball and on a real hippocampus."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from conftest import shared_file
from e2miseg.edges import refine_under_stroke


def ball_case(spacing_ijk=(1.0, 1.0, 2.0)):
    rng = np.random.default_rng(0)
    k, j, i = np.mgrid[0:20, 0:48, 0:48]
    distance = np.sqrt(((k - 10) * spacing_ijk[2]) ** 2 + ((j - 24) * spacing_ijk[1]) ** 2 + ((i - 24) * spacing_ijk[0]) ** 2)
    ball = distance <= 12.0
    voxels = (100 + 80 * ball + rng.normal(0, 8, ball.shape)).astype(np.float32)
    drawn = distance <= 9.0
    return voxels, ball, drawn


def test_stroke_grows_the_segment_to_the_edge_only_under_the_stroke():
    voxels, ball, drawn = ball_case()
    extent_start = (5, -3, 10)  # a vtkOrientedImageData extent need not start at 0
    stroke = np.array([[34.0, 20.0, 10.0], [34.0, 28.0, 10.0]]) + extent_start
    add, remove = refine_under_stroke(voxels, drawn, stroke, extent_start, (1.0, 1.0, 2.0), radius_mm=5.0, strength=0.6)
    assert add.sum() > 10 and not (add & drawn).any() and not (remove & ~drawn).any()
    changed = np.argwhere(add | remove)
    # only within 5 mm of the painted line (i = 34, j 20..28, k = 10)
    assert changed[:, 2].min() >= 29 and changed[:, 1].min() >= 15 and changed[:, 1].max() <= 33
    assert np.all(np.abs(changed[:, 0] - 10) * 2.0 <= 5.0)
    refined = (drawn | add) & ~remove
    assert (refined & ball).sum() > (drawn & ball).sum()
    assert (refined & ~ball).sum() <= (drawn & ~ball).sum() + 2


def test_stroke_outside_the_image_changes_nothing():
    voxels, _, drawn = ball_case()
    add, remove = refine_under_stroke(voxels, drawn, np.array([[500.0, 500.0, 500.0]]), (0, 0, 0), (1.0, 1.0, 2.0), 5.0, 0.6)
    assert not add.any() and not remove.any()


def test_stroke_on_a_shaved_real_hippocampus_segment():
    image = sitk.ReadImage(str(shared_file("fixtures/Hippocampus_mini/imagesTr/hippocampus_001.nii.gz")))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_file("fixtures/Hippocampus_mini/labelsTr/hippocampus_001.nii.gz"))))
    truth = labels > 0
    drawn = ndimage.binary_erosion(truth, iterations=1)
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)
    along = np.argwhere(truth)
    stroke = along[np.linspace(0, len(along) - 1, 6).astype(int)][:, ::-1].astype(float)  # (i, j, k) points through it
    add, remove = refine_under_stroke(voxels, drawn, stroke, (0, 0, 0), image.GetSpacing(), radius_mm=6.0, strength=0.6)
    refined = (drawn | add) & ~remove
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    assert dice(refined, truth) > dice(drawn, truth)
