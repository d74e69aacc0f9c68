"""Back to the input grid through probabilities, then per-label clean-up.

Resampling class probabilities (not labels) and taking the argmax on the input grid keeps edges
smooth at native resolution. ``LabelSink`` does it slab by slab as the predictor finalises network
slices, so memory holds a few slices of probabilities and the uint8 labels, never one float volume
per class (``resample.py`` says why this equals resampling whole volumes).

Most voxels need no interpolation at all: when all 8 network voxels around an input voxel have the
same argmax k, class k dominates every other class at each of them, hence in any convex combination
of them, so the interpolated argmax is k. Only voxels in cells that straddle a boundary are
interpolated, with the same operations in the same order as a full separable pass.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from .preprocess import NetworkGrid
from .resample import AxisMap, Geometry, axis_maps, blend, interpolate, slab_length

# Bytes of temporaries per slab of input-grid slices, and the share of boundary voxels above which
# a slab is interpolated whole (cheaper than gathering 8 corners per voxel; same result).
_SLAB_BYTES = 32 << 20
_POINTWISE_SHARE = 0.25


def _input_maps(grid: NetworkGrid) -> list[AxisMap]:
    if grid.network_geometry is None:
        return [AxisMap.same(n) for n in grid.crop_geometry.shape_zyx]
    return axis_maps(grid.network_geometry, grid.crop_geometry)


def class_argmax(values: torch.Tensor) -> torch.Tensor:
    """uint8 index of the largest value along dim 0, the first one on ties (as ``np.argmax``).

    A running comparison: torch's argmax over a leading dimension is several times slower.
    """
    classes = values.shape[0]
    if classes == 1:
        return torch.zeros(values.shape[1:], dtype=torch.uint8)
    if classes == 2:  # one comparison, no running maximum (S2aNet's left atrium: 2.5 -> 0.6 ms per case)
        return torch.gt(values[1], values[0]).view(torch.uint8)
    best = values[0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8)
    for k in range(1, classes):
        better = values[k] > best
        labels.masked_fill_(better, k)
        if k + 1 < classes:
            torch.maximum(best, values[k], out=best)
    return labels


def _cell_uniform(labels: torch.Tensor, maps: list[AxisMap]) -> torch.Tensor:
    """True where the interpolation cell starting at a voxel (itself and its upper neighbours along
    the resampled axes) has one label throughout."""
    high, low = labels, labels
    for dim, axis_map in enumerate(maps):
        length = labels.shape[dim]
        if axis_map.identity or length == 1:
            continue
        upper = torch.arange(1, length + 1).clamp_(max=length - 1)
        high = torch.maximum(high, high.index_select(dim, upper))
        low = torch.minimum(low, low.index_select(dim, upper))
    return high == low


class LabelSink:
    """Turns finalised network-grid probability slabs into uint8 labels on the input grid.

    The predictor calls ``begin``, then ``add`` for consecutive slabs along one axis, then ``end``;
    ``begin`` starts over (the out-of-memory ladder restarts a prediction from its first tile).
    """

    def __init__(self, grid: NetworkGrid, reference: Geometry | sitk.Image, slab_bytes: int = _SLAB_BYTES):
        self.grid = grid
        self.reference = reference if isinstance(reference, Geometry) else Geometry.of(reference)
        self.maps = _input_maps(grid)
        self.slab_bytes = slab_bytes
        self.labels = np.zeros(self.reference.shape_zyx, dtype=np.uint8)

    @property
    def needs_probabilities(self) -> bool:
        """False when the network grid is the input grid: each voxel's label is then the argmax of
        its own scores, which logits give as well as probabilities (no softmax needed)."""
        return not all(m.identity for m in self.maps)

    def begin(self, num_classes: int, shape_zyx: tuple[int, ...], axis: int) -> None:
        if tuple(shape_zyx) != tuple(self.grid.network_shape_zyx):
            raise ValueError(f"probabilities of shape {tuple(shape_zyx)} are not on the network grid {self.grid.network_shape_zyx}")
        self.axis = axis
        others = [d for d in range(3) if d != axis]
        self.moved_maps = [self.maps[axis]] + [self.maps[d] for d in others]
        self.source_length = shape_zyx[axis]
        self.pending: list[tuple[int, np.ndarray]] = []  # (first slice, (K, slices, ., .)), streaming axis first
        self.received = 0
        self.done = 0  # input-grid slices along the axis that are labelled
        self.out = np.moveaxis(self.labels[self.grid.box], axis, 0)
        # per input-grid voxel of a slab: three float32 interpolation temporaries per class, plus
        # the network slices it reads (a copy of the block per class)
        plane = self.out.shape[1] * self.out.shape[2]
        network_plane = int(np.prod(shape_zyx)) // shape_zyx[axis]
        source_per_target = self.source_length / max(1, len(self.moved_maps[0])) * network_plane / max(1, plane)
        self.step = slab_length(plane, int(num_classes * 4 * (3 + source_per_target)) + 2, self.slab_bytes)

    def add(self, start: int, slab: np.ndarray) -> None:
        """Probabilities (K, ...) on the network grid for slices [start, start + n) along the axis."""
        if start != self.received:
            raise ValueError(f"slab starts at {start} but {self.received} slices were received")
        self.pending.append((start, np.moveaxis(slab, self.axis + 1, 1)))
        self.received += slab.shape[self.axis + 1]
        lead = self.moved_maps[0]
        ready = lead.ready_until(self.received, self.source_length)
        while self.done < ready:
            stop = min(ready, self.done + self.step)
            self._label(self.done, stop)
            self.done = stop
        # drop the slabs no later input slice reads
        keep = int(lead.lo[self.done]) if self.done < len(lead) else self.received
        self.pending = [(first, part) for first, part in self.pending if first + part.shape[1] > keep]

    def end(self) -> None:
        if self.done != len(self.moved_maps[0]):
            raise RuntimeError(f"labelled {self.done} of {len(self.moved_maps[0])} slices: the prediction stopped early")
        self.pending = []

    def image(self) -> sitk.Image:
        return self.reference.attach(self.labels)

    def _label(self, start: int, stop: int) -> None:
        lead, second, third = self.moved_maps
        first, last = lead.source_range(start, stop)
        pieces = [part[:, max(first - begin, 0):last - begin] for begin, part in self.pending
                  if begin < last and begin + part.shape[1] > first]
        block = torch.from_numpy(pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1))
        spans = {1: (lead, start, stop, first), 2: (second, 0, len(second), 0), 3: (third, 0, len(third), 0)}
        if all(m.identity for m in self.moved_maps):
            self.out[start:stop] = class_argmax(block).numpy()
            return
        net_labels = class_argmax(block)
        uniform = _cell_uniform(net_labels, self.moved_maps)
        # per dimension, the block's cell (lower neighbour) of each input-grid index
        cell_of = [axis_map.lo[lo_start:lo_stop] - offset for axis_map, lo_start, lo_stop, offset in (spans[d] for d in (1, 2, 3))]
        # numpy's take: torch's index_select is ~10x slower on uint8 (a 36x512x512 CT slab: 164 vs 13 ms)
        labels = net_labels.numpy()
        for dim, index in enumerate(cell_of):
            labels = np.take(labels, index, axis=dim)
        labels = torch.from_numpy(labels)
        # voxels whose interpolation cell holds more than one label: found on the network grid, where
        # they are few, rather than by expanding a flag per voxel to the input grid
        points = _voxels_of_cells((~uniform).nonzero().numpy(), cell_of)
        count = len(points[0])
        if count > _POINTWISE_SHARE * labels.numel():
            values = interpolate(block, spans, [1, 2, 3])
            labels[points] = class_argmax(values)[points]
        elif count:
            labels[points] = class_argmax(_interpolate_points(block, spans, points))
        self.out[start:stop] = labels.numpy()


def _voxels_of_cells(cells: np.ndarray, cell_of: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Indices (z, y, x) of the target voxels that fall in the given source cells (M, 3).

    ``cell_of[d][i]`` is the source cell of target index i along dimension d; it never decreases, so
    each cell owns a contiguous run of target indices per dimension and a box of voxels overall.
    """
    firsts, sizes = [], []
    for dim, lo in enumerate(cell_of):
        first = np.searchsorted(lo, cells[:, dim], side="left")
        firsts.append(first)
        sizes.append(np.searchsorted(lo, cells[:, dim], side="right") - first)
    per_cell = sizes[0] * sizes[1] * sizes[2]
    total = int(per_cell.sum())
    if total == 0:
        return tuple(torch.zeros(0, dtype=torch.int64) for _ in range(3))
    owner = np.repeat(np.arange(len(cells)), per_cell)
    local = np.arange(total) - np.repeat(np.cumsum(per_cell) - per_cell, per_cell)
    x = local % sizes[2][owner]
    rest = local // sizes[2][owner]
    y = rest % sizes[1][owner]
    z = rest // sizes[1][owner]
    return tuple(torch.from_numpy(firsts[d][owner] + offset) for d, offset in enumerate((z, y, x)))


def _interpolate_points(block: torch.Tensor, spans: dict, points: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Trilinear values (K, N) at N target points, by the same three passes as ``interpolate``."""
    _, _, rows, cols = block.shape
    flat = block.reshape(block.shape[0], -1)  # a copy only if the block is a view with gaps
    corners, weights = [], []
    for dim, position in zip((1, 2, 3), points):
        axis_map, start, stop, offset = spans[dim]
        position = position.numpy() + start
        corners.append((torch.from_numpy(axis_map.lo[position] - offset), torch.from_numpy(axis_map.hi[position] - offset)))
        weights.append(torch.from_numpy(axis_map.weight[position]))

    def at(a: int, b: int, c: int) -> torch.Tensor:
        return flat.index_select(1, (corners[0][a] * rows + corners[1][b]) * cols + corners[2][c])

    along_lead = {(b, c): blend(at(0, b, c), at(1, b, c), weights[0]) for b in (0, 1) for c in (0, 1)}
    along_second = {c: blend(along_lead[0, c], along_lead[1, c], weights[1]) for c in (0, 1)}
    return blend(along_second[0], along_second[1], weights[2])


class ArraySink:
    """Collects the whole probability array on the network grid (what ``Predictor.predict`` returns)."""

    def begin(self, num_classes: int, shape_zyx: tuple[int, ...], axis: int) -> None:
        self.axis = axis
        self.array = np.empty((num_classes,) + tuple(shape_zyx), dtype=np.float32)

    def add(self, start: int, slab: np.ndarray) -> None:
        index = [slice(None)] * 4
        index[self.axis + 1] = slice(start, start + slab.shape[self.axis + 1])
        self.array[tuple(index)] = slab

    def end(self) -> None:
        pass


def labels_on_input_grid(probabilities: np.ndarray, grid: NetworkGrid, reference: Geometry | sitk.Image) -> sitk.Image:
    """Argmax of the probabilities resampled onto ``reference``'s grid; uint8 labels, same geometry.

    The same computation as streaming slabs through a ``LabelSink``: the labels do not depend on it.
    """
    sink = LabelSink(grid, reference)
    sink.begin(probabilities.shape[0], probabilities.shape[1:], 0)
    sink.add(0, probabilities)
    sink.end()
    return sink.image()


def probabilities_on_input_crop(probabilities: np.ndarray, grid: NetworkGrid, label: int) -> np.ndarray:
    """One class's probabilities linearly resampled from the network grid onto the cropped input grid."""
    if grid.network_geometry is None:
        return probabilities[label]
    maps = _input_maps(grid)
    shape = grid.crop_geometry.shape_zyx
    out = np.empty(shape, dtype=np.float32)
    source = torch.from_numpy(probabilities[label])
    step = slab_length(shape[1] * shape[2], 12, _SLAB_BYTES)
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        first, last = maps[0].source_range(start, stop)
        spans = {0: (maps[0], start, stop, first), 1: (maps[1], 0, shape[1], 0), 2: (maps[2], 0, shape[2], 0)}
        out[start:stop] = interpolate(source[first:last], spans, [0, 1, 2]).numpy()
    return out


def probability_image(probabilities: np.ndarray, grid: NetworkGrid, reference: Geometry | sitk.Image) -> sitk.Image:
    """All class probabilities on the input grid as a vector image (background 1 outside the crop).

    Needs one float32 input-grid volume per class: only for callers that ask for probabilities.
    """
    reference = reference if isinstance(reference, Geometry) else Geometry.of(reference)
    planes = np.zeros(reference.shape_zyx + (probabilities.shape[0],), dtype=np.float32)
    planes[..., 0] = 1.0
    for label in range(probabilities.shape[0]):
        planes[grid.box + (label,)] = probabilities_on_input_crop(probabilities, grid, label)
    image = sitk.GetImageFromArray(planes, isVector=True)
    image.SetSpacing([float(s) for s in reference.spacing])
    image.SetOrigin([float(o) for o in reference.origin])
    image.SetDirection(reference.direction)
    return image


def keep_largest_component(labels: np.ndarray, values: list[int]) -> np.ndarray:
    """For each label value, keep only its largest 26-connected component."""
    from scipy import ndimage  # imported here: scipy.ndimage costs about a second to import

    structure = np.ones((3, 3, 3), dtype=bool)
    for value in values:
        mask = labels == value
        components, count = ndimage.label(mask, structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        labels[mask & (components != sizes.argmax())] = 0
    return labels


def remove_islands(labels: np.ndarray, values: list[int], min_volume_mm3: float, spacing_xyz: tuple[float, ...]) -> np.ndarray:
    """Drop components of each label smaller than ``min_volume_mm3``."""
    voxel_mm3 = float(np.prod(spacing_xyz))
    min_voxels = int(np.ceil(min_volume_mm3 / voxel_mm3))
    from scipy import ndimage

    structure = np.ones((3, 3, 3), dtype=bool)
    for value in values:
        mask = labels == value
        components, count = ndimage.label(mask, structure)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())
        small = np.flatnonzero(sizes < min_voxels)
        small = small[small != 0]
        if small.size:
            labels[np.isin(components, small)] = 0
    return labels


def clean_labels(label_image: sitk.Image, values: list[int], keep_largest: bool = False, min_island_mm3: float = 0.0) -> sitk.Image:
    if not keep_largest and min_island_mm3 <= 0:
        return label_image
    labels = sitk.GetArrayFromImage(label_image)
    if keep_largest:
        labels = keep_largest_component(labels, values)
    if min_island_mm3 > 0:
        labels = remove_islands(labels, values, min_island_mm3, label_image.GetSpacing())
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(label_image)
    return result


def finish_labels(labels: sitk.Image, card: dict, settings, image: sitk.Image | None = None,
                  probabilities: sitk.Image | None = None, refiner=None) -> sitk.Image:
    """The steps after the network, as resolved ``settings`` (``e2miseg.settings``) say: edge
    refinement against ``image`` (needs the ``probabilities`` on the input grid), then the largest
    component per label and the removal of small islands.

    ``refiner`` is the model's learned refiner (``model.refiner``), used when the edge method is "learned".
    ``predict`` and ``e2miseg-train choose-defaults`` both call this, so a default chosen on the
    validation split is measured with the code that applies it.
    """
    if settings.refine_edges:
        learned = settings.edge_method == "learned"
        if image is None or (probabilities is None and not learned):
            raise ValueError("edge refinement needs the image and the class probabilities on the input grid")
        from .edges import refine_prediction

        labels = refine_prediction(image, labels, probabilities, strength=settings.edge_strength, method=settings.edge_method,
                                   refiner=refiner)
    return clean_labels(labels, [entry["value"] for entry in card["labels"]], bool(settings.keep_largest),
                        float(settings.min_island_mm3 or 0.0))
