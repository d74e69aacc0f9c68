"""A simulated reader who corrects a segmentation stroke by stroke ("robot corrector").

Interactive segmentation is measured this way in the literature: strokes (or clicks) to reach a
target overlap. Definitions used here:

- **Error regions.** For each label ``v`` of the model, the missed voxels ``FN_v = (reference == v) &
  (labels != v)`` and the extra voxels ``FP_v = (labels == v) & (reference != v)`` are split into 3D
  connected components (26-connectivity), FN and FP apart, so that each region is all "paint here" or
  all "erase here". A voxel labelled ``a`` that should be ``b`` is in ``FP_a`` and in ``FN_b``.
- **Largest region.** The component with the most voxels over all labels and both kinds (one grid,
  so also the largest volume); ties go to the lower label, FN before FP, then scan order.
- **Stroke.** One click with a sphere brush of fixed radius (mm), centred on the region's voxel
  farthest (mm) from the region's border (the maximum of its Euclidean distance transform), so the
  centre is inside the error even for a thin or curved region.
- **A stroke that changes nothing** is not repeated: from then on the robot passes over any region of
  that label and kind that still contains its centre, and takes the next largest (the stroke counts).
  Otherwise one futile stroke would be repeated to the cap. Paint always changes its centre voxel, so
  this only ever applies to the effect.
- **Dice.** Mean over the model's labels of each label's Dice (the cards' "case-mean Dice over
  labels"); a label absent from both counts 1.

The two tools:

- ``paint``: Segment Editor Paint/Erase with "Sphere brush". As checked in Slicer's source
  (Slicer/Slicer, Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorPaintEffect.cxx,
  ``paintBrushes``/``paintApply``): the brush is a sphere of the brush radius rasterised on the
  segmentation's grid, its centre rounded to the nearest voxel; Paint calls
  ``modifySelectedSegmentByLabelmap`` with ModificationModeAdd, Erase with ModificationModeRemove
  (ModificationModeRemoveAll only with the non-default "Erase all segments"). The masking defaults
  (vtkMRMLSegmentEditorNode.h: ``MaskMode = EditAllowedEverywhere``, ``OverwriteMode =
  OverwriteAllSegments``; qSlicerSegmentEditorAbstractEffect.cxx ``modifySegmentByLabelmap``) make
  Paint take the brush's voxels from every other segment, and Erase clear them from the selected
  segment only. Slicer rasterises a 16x16-facet polygonal sphere (voxel centres inside the polygon);
  this uses the exact sphere (voxel centres within the radius), a difference of a few rim voxels.
  The robot paints the region's label into FN regions and erases it from FP regions.
- ``effect``: the "E2MISeg edge refine" Segment Editor effect. Its ``applyStroke`` calls the
  engine's ``refine_under_stroke`` on the whole segmentation grid with the effect's default brush
  radius and strength (read from the effect's source here, so they cannot drift), then writes the
  voxels to add with ModificationModeAdd and those to remove with ModificationModeRemove, the same
  masking as Paint. The robot selects the region's label as the segment and strokes once at the
  same centre; the effect itself decides what joins and what leaves.

Only the tool's own work is timed (what a reader waits for after releasing the mouse), not the
robot's search for the next region.
"""
from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
EFFECT_SOURCE = ROOT / "E2MISegModule" / "SegmentEditorE2MISegEdgeRefine" / "SegmentEditorE2MISegEdgeRefineLib" / "SegmentEditorEffect.py"
TOOLS = ("paint", "effect")
TARGET_DICE = 0.95
MAX_STROKES = 20
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connected


def effect_defaults(source: Path = EFFECT_SOURCE) -> dict[str, float]:
    """The effect's DEFAULT_RADIUS_MM and DEFAULT_STRENGTH, read from its file (it imports Slicer, so it
    cannot be imported here)."""
    found = {}
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("DEFAULT_RADIUS_MM", "DEFAULT_STRENGTH"):
                found[node.targets[0].id] = float(ast.literal_eval(node.value))
    missing = {"DEFAULT_RADIUS_MM", "DEFAULT_STRENGTH"} - set(found)
    if missing:
        raise ValueError(f"{source} no longer defines {', '.join(sorted(missing))}")
    return {"radius_mm": found["DEFAULT_RADIUS_MM"], "strength": found["DEFAULT_STRENGTH"]}


@dataclass
class ErrorRegion:
    label: int
    kind: str                       # "FN" (paint the label here) or "FP" (erase it here)
    voxels: int
    centre_kji: tuple[int, int, int]
    depth_mm: float                 # distance from the centre to the region's border


def mean_dice(labels: np.ndarray, reference: np.ndarray, values: list[int]) -> float:
    scores = []
    for value in values:
        a, b = labels == value, reference == value
        total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
        scores.append(1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total)
    return float(np.mean(scores))


def foreground_box(labels: np.ndarray, reference: np.ndarray) -> tuple[slice, ...] | None:
    """The box of every voxel labelled in either map: all errors lie inside it."""
    found = ndimage.find_objects(((labels > 0) | (reference > 0)).astype(np.uint8))
    return found[0] if found and found[0] is not None else None


def largest_error(labels: np.ndarray, reference: np.ndarray, values: list[int],
                  spacing_zyx: tuple[float, float, float],
                  skip: set[tuple[int, str, tuple[int, int, int]]] | frozenset = frozenset()) -> ErrorRegion | None:
    """The largest connected error region (see the module's definitions); None when there is no error.

    ``skip`` holds (label, kind, centre) of strokes that changed nothing: a region of that label and
    kind that still contains such a centre is passed over (the same stroke would change nothing again).
    """
    box = foreground_box(labels, reference)
    if box is None:
        return None
    lab, ref = labels[box], reference[box]
    origin = np.array([s.start for s in box])
    best = None  # (voxels, label, kind, component ids, id)
    for value in values:
        for kind, mask in (("FN", (ref == value) & (lab != value)), ("FP", (lab == value) & (ref != value))):
            if not mask.any():
                continue
            components, count = ndimage.label(mask, structure=CONNECTIVITY)
            sizes = np.bincount(components.ravel(), minlength=count + 1)
            sizes[0] = 0
            for skip_value, skip_kind, centre in skip:
                local = tuple(np.asarray(centre) - origin)
                if (skip_value, skip_kind) == (value, kind) and all(0 <= c < n for c, n in zip(local, mask.shape)):
                    sizes[components[local]] = 0
            position = int(np.argmax(sizes))
            if sizes[position] and (best is None or sizes[position] > best[0]):
                best = (int(sizes[position]), value, kind, components, position)
    if best is None:
        return None
    voxels, value, kind, components, index = best
    region_box = ndimage.find_objects(components, max_label=index)[index - 1]
    # one layer of non-region voxels all round, so the distance is to the region's border (the image edge counts as one)
    inside = np.pad(components[region_box] == index, 1)
    distance = ndimage.distance_transform_edt(inside, sampling=spacing_zyx)
    peak = np.unravel_index(int(np.argmax(distance)), distance.shape)
    centre = tuple(int(b.start + r.start + p - 1) for b, r, p in zip(box, region_box, peak))
    return ErrorRegion(value, kind, voxels, centre, float(distance[peak]))


def sphere_brush(shape: tuple[int, ...], centre_kji: tuple[int, int, int], spacing_zyx: tuple[float, float, float],
                 radius_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """(box, mask in the box) of the voxels whose centres lie within ``radius_mm`` of the centre voxel."""
    reach = [int(np.floor(radius_mm / s)) for s in spacing_zyx]
    box = tuple(slice(max(0, c - r), min(n, c + r + 1)) for c, r, n in zip(centre_kji, reach, shape))
    axes = [(np.arange(b.start, b.stop) - c) * s for b, c, s in zip(box, centre_kji, spacing_zyx)]
    dz, dy, dx = np.meshgrid(*axes, indexing="ij")
    return box, dz ** 2 + dy ** 2 + dx ** 2 <= radius_mm ** 2 + 1e-9


def paint_stroke(labels: np.ndarray, region: ErrorRegion, spacing_zyx: tuple[float, float, float], radius_mm: float) -> int:
    """Paint (FN) or Erase (FP) one sphere at the region's centre, Segment Editor semantics; voxels changed."""
    box, brush = sphere_brush(labels.shape, region.centre_kji, spacing_zyx, radius_mm)
    view = labels[box]
    before = view.copy()
    if region.kind == "FN":
        view[brush] = region.label          # Add, overwriting all other segments
    else:
        view[brush & (view == region.label)] = 0  # Remove from the selected segment only
    return int(np.count_nonzero(view != before))


def effect_stroke(labels: np.ndarray, image: np.ndarray, region: ErrorRegion, spacing_zyx: tuple[float, float, float],
                  radius_mm: float, strength: float) -> int:
    """One click of the E2MISeg edge refine effect on the region's label, as its applyStroke writes it; voxels changed."""
    from e2miseg.edges.stroke import refine_under_stroke

    segment = labels == region.label
    stroke_ijk = np.array([region.centre_kji[::-1]], dtype=np.float64)
    add, remove = refine_under_stroke(image, segment, stroke_ijk, (0, 0, 0), spacing_zyx[::-1], radius_mm, strength)
    changed = add | (remove & segment)
    labels[add] = region.label                      # ModificationModeAdd, overwrite all segments
    labels[remove & (labels == region.label)] = 0   # ModificationModeRemove: the selected segment only
    return int(np.count_nonzero(changed))


@dataclass
class Correction:
    tool: str
    dice: list[float]                                   # before any stroke, then after each stroke
    seconds: list[float] = field(default_factory=list)  # per stroke, the tool's own work
    strokes: list[dict] = field(default_factory=list)
    target: float = TARGET_DICE

    @property
    def reached(self) -> bool:
        return self.dice[-1] >= self.target

    @property
    def count(self) -> int:
        """Strokes used; MAX_STROKES (the cap) when the target was not reached."""
        return len(self.seconds)

    def dice_after(self, strokes: int) -> float:
        """Dice after that many strokes (the final Dice when the robot stopped earlier)."""
        return self.dice[min(strokes, len(self.dice) - 1)]


def correct(labels: np.ndarray, reference: np.ndarray, values: list[int], spacing_zyx: tuple[float, float, float],
            tool: str, image: np.ndarray | None = None, radius_mm: float | None = None, strength: float | None = None,
            target: float = TARGET_DICE, max_strokes: int = MAX_STROKES,
            clock: Callable[[], float] = time.perf_counter) -> Correction:
    """Stroke at the largest error until mean Dice >= ``target`` or ``max_strokes`` strokes; ``labels`` is not changed."""
    if tool not in TOOLS:
        raise ValueError(f"unknown tool '{tool}'; use one of {', '.join(TOOLS)}")
    defaults = effect_defaults()
    radius_mm = defaults["radius_mm"] if radius_mm is None else radius_mm
    strength = defaults["strength"] if strength is None else strength
    if tool == "effect" and image is None:
        raise ValueError("the effect follows the image: pass image=")
    current = labels.copy()
    guide = None if image is None else np.asarray(image, dtype=np.float32)
    result = Correction(tool, [mean_dice(current, reference, values)], target=target)
    futile: set[tuple[int, str, tuple[int, int, int]]] = set()
    while result.dice[-1] < target and result.count < max_strokes:
        region = largest_error(current, reference, values, spacing_zyx, futile)
        if region is None:
            break
        start = clock()
        if tool == "paint":
            changed = paint_stroke(current, region, spacing_zyx, radius_mm)
        else:
            changed = effect_stroke(current, guide, region, spacing_zyx, radius_mm, strength)
        result.seconds.append(clock() - start)
        if changed == 0:
            futile.add((region.label, region.kind, region.centre_kji))
        result.dice.append(mean_dice(current, reference, values))
        result.strokes.append({"label": region.label, "kind": region.kind, "region_voxels": region.voxels,
                               "centre_kji": list(region.centre_kji), "depth_mm": round(region.depth_mm, 3),
                               "changed_voxels": changed})
    return result
