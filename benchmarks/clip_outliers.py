"""Does outlier clipping (``e2miseg.preprocess.robust_clip_bounds``) change the bundled models' results?

For every bundled model, every validation case of its card's split (``provenance.split.val_cases`` under
``provenance.dataset_path``): if no voxel of the case lies outside the clip bounds, clipping is a no-op,
the normalised array is bit for bit the one without it and so are the labels (counted as 0 changed
voxels without running the network). Cases with clipped voxels are segmented with and without clipping
and the changed labels counted. The issue's bar: fewer than 0.1 % of voxels change, per model.

Also checks one extreme voxel of each sign on a hippocampus validation case (Dice to the clean result).

    python benchmarks/clip_outliers.py            # writes benchmarks/results/clip_outliers.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "E2MISegModule"))

from e2miseg import preprocess  # noqa: E402
from e2miseg.checkpoint import read_card  # noqa: E402
from e2miseg.store import bundled_models_dir  # noqa: E402

EXTREMES = (float(np.finfo(np.float32).max), 1e30, 1e6, -float(np.finfo(np.float32).max))


def clipped_voxels(image: sitk.Image) -> int:
    array = sitk.GetArrayViewFromImage(image)
    bounds = preprocess.robust_clip_bounds(array)
    if bounds is None:
        return 0
    return int(np.count_nonzero((array < bounds[0]) | (array > bounds[1])))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    both = np.count_nonzero(a > 0) + np.count_nonzero(b > 0)
    return 1.0 if both == 0 else 2.0 * np.count_nonzero((a > 0) & (b > 0)) / both


def main() -> None:
    import e2miseg

    report: dict = {"rule": f"clip to [p{preprocess._CLIP_PERCENTILES[0]:g} - {preprocess._CLIP_WIDTHS:g} s, "
                            f"p{preprocess._CLIP_PERCENTILES[1]:g} + {preprocess._CLIP_WIDTHS:g} s], "
                            f"s = p{preprocess._CLIP_PERCENTILES[1]:g} - p{preprocess._CLIP_PERCENTILES[0]:g}",
                    "models": {}}
    for path in sorted(bundled_models_dir().glob("*.safetensors")):
        card = read_card(path)
        split, dataset = card["provenance"]["split"], Path(card["provenance"]["dataset_path"])
        total = changed = clipped_cases = 0
        model = None
        for case in split["val_cases"]:
            image = sitk.ReadImage(str(dataset / "imagesTr" / f"{case}.nii.gz"))
            voxels = int(np.prod(image.GetSize()))
            total += voxels
            if clipped_voxels(image) == 0:
                continue  # bit-identical input to the network: identical labels
            clipped_cases += 1
            if model is None:
                model, _ = e2miseg.load_model(path, device="cpu")
            with_clip = sitk.GetArrayFromImage(e2miseg.predict(image, model))
            with mock.patch.object(preprocess, "robust_clip_bounds", lambda *a, **k: None):
                without = sitk.GetArrayFromImage(e2miseg.predict(image, model))
            changed += int(np.count_nonzero(with_clip != without))
        share = changed / total
        report["models"][card["name"]] = {"version": card["version"], "validation_cases": len(split["val_cases"]),
                                          "cases_with_clipped_voxels": clipped_cases, "voxels": total,
                                          "labels_changed": changed, "share_changed": share, "below_0.1_percent": share < 1e-3}
        print(f"{card['name']} {card['version']}: {len(split['val_cases'])} validation cases, {clipped_cases} with clipped "
              f"voxels, {changed} of {total} labels changed ({100 * share:.4f} %)", flush=True)

    model, card = e2miseg.load_model("e2miseg-hippocampus", device="cpu")
    case = card["provenance"]["split"]["val_cases"][0]
    image = sitk.ReadImage(str(Path(card["provenance"]["dataset_path"]) / "imagesTr" / f"{case}.nii.gz"), sitk.sitkFloat32)
    clean = sitk.GetArrayFromImage(e2miseg.predict(image, model))
    report["extreme_voxel"] = {"case": case, "dice_to_clean": {}}
    for value in EXTREMES:
        array = sitk.GetArrayFromImage(image)
        array[0, 0, 0] = value
        bad = sitk.GetImageFromArray(array)
        bad.CopyInformation(image)
        score = dice(sitk.GetArrayFromImage(e2miseg.predict(bad, model)), clean)
        report["extreme_voxel"]["dice_to_clean"][f"{value:g}"] = round(score, 5)
        print(f"{case}, voxel [0,0,0] = {value:g}: Dice to the clean result {score:.4f}", flush=True)
    out = ROOT / "benchmarks" / "results" / "clip_outliers.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
