"""Training patches: foreground-oversampled crops plus MONAI augmentation.

3D models get (C, *patch) crops; 2D/2.5D models get one slice (or a stack of neighbouring slices,
channel-major as the engine's predictor builds them) cropped/padded in-plane to the patch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from e2miseg.preprocess import AXIS_INDEX_ZYX
from e2miseg.tiling import slice_stack_indices

MAX_LOCATIONS = 2000  # foreground voxels remembered per class and case (enough to pick centres from)
SPATIAL_MARGIN = 1.3  # crops are this much larger before rotation/scaling, so corners stay real data


def crop_with_pad(array: np.ndarray, start: list[int], size: list[int]) -> np.ndarray:
    """``array[..., start:start+size]`` over the trailing axes, zero-filled outside the array."""
    lead = array.ndim - len(size)
    out = np.zeros(array.shape[:lead] + tuple(size), dtype=array.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for axis, (s, n) in enumerate(zip(start, size)):
        length = array.shape[lead + axis]
        a, b = max(s, 0), min(s + n, length)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def build_augmentation(ndim: int, mirror_axes: list[int], seed: int, intensity: bool = True):
    """MONAI intensity + mirroring transforms (dict keys ``image``/``label``); spatial ones are separate."""
    from monai.transforms import (Compose, RandAdjustContrastd, RandFlipd, RandGaussianNoised,
                                  RandGaussianSmoothd, RandScaleIntensityd)

    steps = []
    if intensity:
        steps += [
            RandGaussianNoised("image", prob=0.1, std=0.1),
            RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.1),
            RandScaleIntensityd("image", factors=0.25, prob=0.15),
            RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.15),
        ]
    steps += [RandFlipd(["image", "label"], prob=0.5, spatial_axis=axis) for axis in mirror_axes]
    compose = Compose(steps)
    compose.set_random_state(seed=seed)
    return compose


def build_spatial(patch: list[int], seed: int, rotate_deg: float = 15.0, scale: float = 0.15):
    """MONAI affine (rotation + scaling) that also crops the enlarged patch back to ``patch``."""
    from monai.transforms import RandAffined

    ndim = len(patch)
    angle = np.deg2rad(rotate_deg)
    rotate = (angle,) * (3 if ndim == 3 else 1)
    affine = RandAffined(["image", "label"], prob=1.0, spatial_size=tuple(patch), rotate_range=rotate,
                         scale_range=(scale,) * ndim, mode=("bilinear", "nearest"), padding_mode="zeros")
    affine.set_random_state(seed=seed)
    return affine


class PatchSampler:
    """Draws augmented training batches from network-grid arrays (held in memory)."""

    def __init__(self, data: list[tuple[np.ndarray, np.ndarray]], card: dict[str, Any], seed: int = 0,
                 fg_fraction: float = 0.33, augment: bool = True, spatial_prob: float = 0.3) -> None:
        settings = card["inference"]
        self.kind = settings["kind"]
        self.patch = [int(p) for p in settings["patch_size_zyx"]]
        self.data = data
        self.fg_fraction = fg_fraction
        self.spatial_prob = spatial_prob if augment else 0.0
        self.rng = np.random.default_rng(seed)
        self.slice_axis = AXIS_INDEX_ZYX[settings.get("slice_axis", "z")]
        self.slices = int(settings.get("slices", 1)) if self.kind == "2.5d" else 1
        self.locations = [self._foreground_locations(labels) for _, labels in data]
        if self.kind == "3d":
            mirror = [AXIS_INDEX_ZYX[a] for a in settings["mirror_axes"]]
        else:  # in-plane axes of the (A, B) slice, numbered after removing the slice axis
            in_plane = [a for a in range(3) if a != self.slice_axis]
            mirror = [in_plane.index(AXIS_INDEX_ZYX[a]) for a in settings["mirror_axes"] if AXIS_INDEX_ZYX[a] in in_plane]
        self.augment = build_augmentation(len(self.patch), mirror, seed) if augment else None
        self.spatial = build_spatial(self.patch, seed + 1) if augment else None

    def reseed(self, seed: int) -> None:
        """Restart every random draw (crop centres, augmentation) from ``seed``; the trainer reseeds per
        iteration so the batches depend on the iteration, not on how many ran in this process."""
        self.rng = np.random.default_rng(seed)
        if self.augment is not None:
            self.augment.set_random_state(seed=seed % 2**32)
        if self.spatial is not None:
            self.spatial.set_random_state(seed=(seed + 1) % 2**32)

    def _foreground_locations(self, labels: np.ndarray) -> dict[int, np.ndarray]:
        found = {}
        for value in np.unique(labels):
            if value == 0:
                continue
            coords = np.argwhere(labels == value)
            if len(coords) > MAX_LOCATIONS:
                coords = coords[self.rng.choice(len(coords), MAX_LOCATIONS, replace=False)]
            found[int(value)] = coords
        return found

    def _centre(self, index: int, force_fg: bool) -> np.ndarray:
        labels = self.data[index][1]
        locations = self.locations[index]
        if force_fg and locations:
            value = list(locations)[self.rng.integers(len(locations))]
            coords = locations[value]
            return coords[self.rng.integers(len(coords))].astype(int)
        return np.array([self.rng.integers(0, s) for s in labels.shape])

    def sample(self, force_fg: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One augmented (image, labels) pair: image (C', *patch) float32, labels (*patch) int64."""
        if force_fg is None:
            force_fg = bool(self.rng.random() < self.fg_fraction)
        index = int(self.rng.integers(len(self.data)))
        image, labels = self.data[index]
        centre = self._centre(index, force_fg)
        use_spatial = self.spatial is not None and self.rng.random() < self.spatial_prob
        size = [int(np.ceil(p * SPATIAL_MARGIN)) for p in self.patch] if use_spatial else self.patch
        if self.kind == "3d":
            start = [int(c) - s // 2 for c, s in zip(centre, size)]
            img = crop_with_pad(image, start, size)
            lab = crop_with_pad(labels, start, size)
        else:
            img, lab = self._slice_patch(image, labels, centre, size)
        sample = {"image": torch.from_numpy(np.ascontiguousarray(img)), "label": torch.from_numpy(lab[None].astype(np.float32))}
        if use_spatial:
            sample = self.spatial(sample)
        if self.augment is not None:
            sample = self.augment(sample)
        img_out = np.asarray(sample["image"], dtype=np.float32)
        lab_out = np.rint(np.asarray(sample["label"])[0]).astype(np.int64)
        return img_out, lab_out

    def _slice_patch(self, image: np.ndarray, labels: np.ndarray, centre: np.ndarray, size: list[int]):
        axis = self.slice_axis
        stacked = np.moveaxis(image, axis + 1, 1)  # (C, S, A, B)
        lab = np.moveaxis(labels, axis, 0)
        index = int(centre[axis])
        in_plane = [int(c) for a, c in enumerate(centre) if a != axis]
        start = [c - s // 2 for c, s in zip(in_plane, size)]
        neighbours = slice_stack_indices(stacked.shape[1], index, self.slices)
        channels = stacked[:, neighbours].reshape(-1, *stacked.shape[2:])
        return crop_with_pad(channels, start, size), crop_with_pad(lab[index], start, size)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.sample() for _ in range(size)]
        # at least one foreground patch per batch when oversampling, as nnU-Net guarantees
        if self.fg_fraction > 0 and size > 1 and not any((lab > 0).any() for _, lab in pairs):
            pairs[-1] = self.sample(force_fg=True)
        images = torch.from_numpy(np.stack([p[0] for p in pairs]))
        labels = torch.from_numpy(np.stack([p[1] for p in pairs]))
        return images, labels
