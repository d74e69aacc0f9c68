"""The README's scripting example runs as written on a slicer-core scene (in-process engine).

Only the file names are swapped: the bundled sample for the image, a small random E2MISeg
checkpoint for the bundled model, and a temporary folder for the output.
"""
from __future__ import annotations

import contextlib
import io
import re

import pytest

from conftest import require_module  # noqa: E402

slicer = require_module("slicer", "the slicer-core wheel runs the Slicer module's logic on real MRML")

from conftest import ROOT  # noqa: E402
from helpers import HIPPOCAMPUS_LABELS, make_e2miseg_checkpoint  # noqa: E402

MARKER = re.compile(r"<!-- e2miseg-scripting-example -->\s*```python\n(.*?)```\s*<!-- /e2miseg-scripting-example -->",
                    re.DOTALL)
# The README (README.md) gets the Slicer section from the lead's notes; until it does, read the notes.
SOURCES = [ROOT / "README.md", ROOT.parent / "notes" / "readme_slicer.md"]


def scripting_example() -> str:
    for path in SOURCES:
        if path.is_file():
            found = MARKER.search(path.read_text())
            if found:
                return found.group(1)
    pytest.skip("no README carries the E2MISeg scripting example yet (marker e2miseg-scripting-example)")


def test_readme_scripting_example_runs(tmp_path):
    code = scripting_example()
    sample = ROOT / "E2MISegModule" / "Resources" / "SampleData" / "hippocampus_008.nii.gz"
    if not sample.is_file():
        pytest.skip(f"{sample} is not bundled in this checkout")
    model = make_e2miseg_checkpoint(tmp_path / "tiny.safetensors", spacing=(3.0, 3.0, 3.0))
    output = tmp_path / "hippocampus_008.seg.nrrd"
    for name, path in (("hippocampus_008.nii.gz", sample), ("e2miseg-hippocampus", model),
                       ("hippocampus_008.seg.nrrd", output)):
        assert f'"{name}"' in code, f"the example no longer mentions {name}"
        code = code.replace(f'"{name}"', repr(str(path)))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README scripting example", "exec"), {"__name__": "readme_example"})

    lines = printed.getvalue().splitlines()
    assert [line.split(" ")[0] for line in lines] == ["Anterior", "Posterior"]
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(output))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        [label["name"] for label in HIPPOCAMPUS_LABELS]
