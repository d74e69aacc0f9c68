"""Regenerate Resources/Screenshots/: the preview `e2miseg predict --preview` writes, for each bundled
model on one case (the bundled hippocampus sample; an ACDC and a LeftAtrium2018 validation case from
../shared/data), with the model's own defaults. The extension index (EXTENSION_SCREENSHOTURLS in the
top-level CMakeLists.txt) and the README show these files.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/make_screenshots.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CASES = {
    "e2miseg-hippocampus": ROOT / "E2MISegModule" / "Resources" / "SampleData" / "hippocampus_008.nii.gz",
    "ehanet-acdc": DATA / "ACDC" / "imagesTr" / "patient006_frame01.nii.gz",
    "s2anet-leftatrium": DATA / "LeftAtrium2018" / "imagesTr" / "LA_1MHBF3G6DCPWHSKG7XCP.nii.gz",
}


def main() -> int:
    sys.path.insert(0, str(ROOT / "E2MISegModule"))
    from e2miseg.cli import main as e2miseg

    out = ROOT / "Resources" / "Screenshots"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for model, image in CASES.items():
            if not image.is_file():
                print(f"skipped {model}: {image} is not here", file=sys.stderr)
                continue
            code = e2miseg(["predict", str(image), "-o", str(Path(scratch) / f"{model}.seg.nrrd"), "--model", model,
                            "--preview", str(out / f"{model}.png"), "--quiet"])
            if code:
                return code
            print(f"wrote {out / f'{model}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
