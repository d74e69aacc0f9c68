"""Applying a learned boundary refiner: its input features and its class probabilities on a crop.

The refiner works on the grid of the label map being refined (the input grid, where the user
edits), whatever grid the network ran on: its errors are geometric, wherever they came from. It only
runs on tiles that hold voxels allowed to change; the rest of the crop keeps its current labels.
``refine.refine_with_uncertainty`` decides which voxels may change (band, ROI, selected labels),
exactly as for the classical methods.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import E2MISegError
from .band import Box

TILE_VOXELS = 48  # core of one tile along each axis (in-plane refiners: along y and x)
THIN_AXIS_MM = 1.0e4  # "spacing" that makes a distance transform ignore an axis (per-slice distances)


def normalised_image(image: np.ndarray, normalization: dict[str, Any]) -> np.ndarray:
    """The image as the model normalises it (``e2miseg.preprocess.normalize``), on the image's own grid."""
    from ..preprocess import normalize

    return normalize(np.asarray(image, dtype=np.float32), normalization)


def class_distance(mask: np.ndarray, spacing_zyx: tuple[float, float, float], in_plane: bool) -> np.ndarray:
    """Signed distance (mm) to the class's surface, negative inside, +-half a voxel next to the interface.

    One distance transform per class (to the mask's inner border layer), the sign from the mask: half
    the work of two transforms, which is most of a training step's cost.
    """
    if not mask.any():
        return np.full(mask.shape, 1e3, dtype=np.float32)
    structure = ndimage.generate_binary_structure(3, 1)
    if in_plane:
        structure[0] = structure[2] = False
    border = mask & ~ndimage.binary_erosion(mask, structure, border_value=1)
    if not border.any():
        return np.full(mask.shape, -1e3, dtype=np.float32)
    sampling = (THIN_AXIS_MM, *spacing_zyx[1:]) if in_plane else tuple(spacing_zyx)
    distance = ndimage.distance_transform_edt(~border, sampling=sampling).astype(np.float32)
    half = 0.5 * min(sampling)
    return np.where(mask, -distance - half, distance - half)


def refiner_features(image_norm: np.ndarray, labels: np.ndarray, num_classes: int, spacing_zyx: tuple[float, float, float],
                     clip_mm: float, in_plane: bool) -> np.ndarray:
    """(2C, z, y, x) float32: image, one-hot per class (C), signed distance per foreground class / ``clip_mm``
    clipped to [-1, 1] (C - 1; background's is implied by the others).

    Label values the model does not know (>= C, e.g. a locked extra segment) are in no class channel.
    In-plane refiners get per-slice distances, as they see one slice at a time.
    """
    features = np.empty((2 * num_classes,) + labels.shape, dtype=np.float32)
    features[0] = image_norm
    for index in range(num_classes):
        mask = labels == index
        features[1 + index] = mask
        if index:
            distance = class_distance(mask, spacing_zyx, in_plane)
            features[num_classes + index] = np.clip(distance / clip_mm, -1.0, 1.0)
    return features


def _grow(box: Box, margin: tuple[int, int, int], shape: tuple[int, ...]) -> Box:
    return tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(box, margin, shape))


def _tiles(shape: tuple[int, int, int], size: tuple[int, int, int]):
    for z in range(0, shape[0], size[0]):
        for y in range(0, shape[1], size[1]):
            for x in range(0, shape[2], size[2]):
                yield tuple(slice(a, min(a + s, n)) for a, s, n in zip((z, y, x), size, shape))


class LearnedRefiner:
    """A loaded refiner network with what it needs to build its inputs (the model's normalisation)."""

    def __init__(self, network, normalization: dict[str, Any], model_name: str = "model") -> None:
        import torch

        # channels-last: oneDNN's own layout for 3D convolutions, about twice as fast as contiguous for these widths
        self.network = network.eval().to(memory_format=torch.channels_last_3d)
        self.normalization = normalization
        self.model_name = model_name

    @property
    def config(self) -> dict[str, Any]:
        return self.network.config

    @property
    def band_mm(self) -> float:
        return float(self.config["band_mm"])

    def check_labels(self, allowed: list[int]) -> None:
        unknown = [v for v in allowed if v >= self.network.num_classes]
        if unknown:
            raise E2MISegError(f"label {unknown[0]} is not one of {self.model_name}'s labels, so its learned refiner cannot "
                               f"place it; refine it with a classical method (--method meanfield)")

    def probabilities(self, image: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, float, float], box: Box,
                      allowed: list[int], changeable: np.ndarray) -> np.ndarray:
        """Class probabilities (len(allowed), *crop) on ``box``; the current label (one-hot) where nothing may change.

        ``image`` and ``labels`` are whole volumes: the normalisation's statistics and the distance
        maps must not depend on where the crop falls.
        """
        import torch

        self.check_labels(allowed)
        config, network = self.config, self.network
        clip_voxels = tuple(int(np.ceil(config["distance_clip_mm"] / s)) for s in spacing_zyx)
        halo = network.halo_zyx
        outer = _grow(box, tuple(h + c for h, c in zip(halo, clip_voxels)), labels.shape)
        image_norm = normalised_image(image[outer], self.normalization) if _local_statistics(self.normalization) \
            else normalised_image(image, self.normalization)[outer]
        features = refiner_features(image_norm, labels[outer], network.num_classes, spacing_zyx,
                                    config["distance_clip_mm"], config["in_plane"])
        offset = tuple(b.start - o.start for b, o in zip(box, outer))
        crop_labels = labels[box]
        allowed_index = np.asarray(allowed)
        probs = (crop_labels[np.newaxis] == allowed_index[:, None, None, None]).astype(np.float32)
        tile = (8 if config["in_plane"] else TILE_VOXELS, TILE_VOXELS, TILE_VOXELS)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=refiner_bf16()):
            for core in _tiles(crop_labels.shape, tile):
                if not changeable[core].any():
                    continue
                # the tile with its halo, in the coordinates of ``features`` (clipped at the volume's edge)
                start = [c.start + o - h for c, o, h in zip(core, offset, halo)]
                stop = [c.stop + o + h for c, o, h in zip(core, offset, halo)]
                lo = [max(0, a) for a in start]
                hi = [min(n, b) for b, n in zip(stop, features.shape[1:])]
                window = features[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]
                batch = torch.from_numpy(np.ascontiguousarray(window))[None].contiguous(memory_format=torch.channels_last_3d)
                logits = network(batch)[0]
                inner = tuple(slice(c.start + o - a, c.stop + o - a) for c, o, a in zip(core, offset, lo))
                chosen = logits[(allowed_index,) + inner].float()
                probs[(slice(None),) + core] = torch.softmax(chosen, dim=0).numpy()
        return probs


def refiner_bf16() -> bool:
    """bfloat16 on CPUs that compute it natively (about 5x faster than float32 for the refiner's convolutions on
    them, benchmarks/results/refiner_cost.md), as the engine runs its bundled networks there; float32 elsewhere
    and when E2MISEG_PRECISION=f32 asks for it."""
    from ..environment import choice
    from ..runtime import PRECISIONS, native_bf16

    return (choice("E2MISEG_PRECISION", PRECISIONS) or "auto").lower() in ("auto", "bf16") and native_bf16()


def _local_statistics(normalization: dict[str, Any]) -> bool:
    """Schemes without per-image statistics can be applied to the crop alone (cheaper on big volumes)."""
    return normalization.get("scheme") in ("ct", "none")
