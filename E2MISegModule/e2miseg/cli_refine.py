"""``e2miseg refine``: refine an existing segmentation against its image, without the network; and the
edge flags of ``e2miseg predict`` (``--refine-edges``, ``--edge-strength``, ``--uncertainty``).

A label map (.nii.gz, .nrrd, ...) comes back as a label map with the same geometry and pixel type;
a Slicer ``.seg.nrrd`` comes back as a ``.seg.nrrd`` with the same geometry, segments, names,
colours, terminology and layers, only the refined voxels (and the segments' extents) differ.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import OutputError


def add_predict_edge_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uncertainty", default=None,
                        help="also write the boundary uncertainty map here (.nii.gz/.nrrd) and its ranked regions beside it (.regions.json)")


def add_refine_parser(sub) -> None:
    from .edges.defaults import DEFAULT_BAND_MM, DEFAULT_METHOD, DEFAULT_STRENGTH, METHOD_NAMES

    r = sub.add_parser("refine", help="refine the edges of an existing segmentation against its image (no network)")
    r.add_argument("image", help="the image the segmentation belongs to")
    r.add_argument("segmentation", help="label map (.nii.gz, .nrrd, ...) or Slicer .seg.nrrd")
    r.add_argument("-o", "--output", required=True, help="output file of the same kind as the segmentation")
    r.add_argument("--labels", nargs="+", default=None, help="refine only these label values or segment names (others stay bit-identical)")
    r.add_argument("--roi", default=None, help="refine only inside this box: i0,j0,k0,i1,j1,k1 (voxels, inclusive) or with --roi-space lps, mm")
    r.add_argument("--roi-space", choices=["ijk", "lps"], default="ijk", help="coordinates of --roi (default ijk voxel indices of the segmentation)")
    r.add_argument("--model", default=None, help="the model the segmentation is of (store name or .safetensors): its learned "
                   "boundary refiner is used when it has one; label values are the model's")
    r.add_argument("--strength", type=float, default=DEFAULT_STRENGTH,
                   help=f"0 (off) .. 1 (default {DEFAULT_STRENGTH}); the learned refiner only uses 0 = off")
    r.add_argument("--method", choices=METHOD_NAMES, default=None,
                   help=f"refinement method (default: learned when --model has a learned refiner, else {DEFAULT_METHOD})")
    r.add_argument("--band-mm", type=float, default=None, help=f"how far from an edge voxels may change (default: the "
                   f"learned refiner's training band, else {DEFAULT_BAND_MM} mm)")
    r.add_argument("--uncertainty", default=None, help="also write the boundary uncertainty map here and its ranked regions (.regions.json)")
    r.set_defaults(func=cmd_refine)


def _check_map_output(path: str, what: str) -> None:
    from .io import LABELMAP_SUFFIXES, suffix_of

    if suffix_of(path) not in LABELMAP_SUFFIXES:
        raise OutputError(f"unknown {what} type for {Path(path).name}; use .nii.gz, .nii, .nrrd or .mha")


def check_predict_edge_args(args) -> None:
    """Called before the model loads, so a bad flag costs milliseconds."""
    if args.uncertainty:
        _check_map_output(args.uncertainty, "uncertainty output")


def write_prediction_uncertainty(probabilities, labels, path: str) -> str:
    """Uncertainty map and ranked regions of a prediction (SimpleITK images); returns the JSON path."""
    from .edges.uncertainty import write_prediction_uncertainty as write

    return write(probabilities, labels, path)


def cmd_refine(args) -> int:
    from .paths import check_refine_paths

    image_path, segmentation_path, output = Path(args.image), Path(args.segmentation), Path(args.output)
    check_refine_paths(image_path, segmentation_path, output, args.uncertainty)
    from .edges import EdgeOptions
    from .edges.defaults import DEFAULT_METHOD, LEARNED_METHOD
    from .edges.files import parse_roi, refine_file

    roi = parse_roi(args.roi) if args.roi else None
    refiner = None
    if args.model:
        from .refiner_part import read_refiner

        refiner = read_refiner(args.model)  # refuses a tampered refiner part with a one-line error
    method = args.method or (LEARNED_METHOD if refiner is not None else DEFAULT_METHOD)
    options = EdgeOptions(method=method, strength=args.strength, band_mm=args.band_mm, refiner=refiner)
    refine_file(image_path, segmentation_path, output, args.labels, roi, args.roi_space, options, args.uncertainty)
    print(f"wrote {output}", file=sys.stderr)
    return 0
