"""The top-level Resources/ the extension index shows: the icon and a real preview of each bundled
model, named by the top-level CMakeLists.txt and shown in the README."""
from __future__ import annotations

import re
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "E2MISegModule" / "Resources" / "Models"


def _cmake_value(name: str) -> str:
    return re.search(rf'set\({name} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text()).group(1)


def test_icon_and_one_screenshot_per_bundled_model_are_in_cmake_and_the_readme():
    icon = _cmake_value("EXTENSION_ICONURL")
    assert icon.endswith("/main/Resources/Icons/E2MISeg.png") and (ROOT / "Resources/Icons/E2MISeg.png").is_file()
    urls = _cmake_value("EXTENSION_SCREENSHOTURLS").split()
    shots = {url.split("/main/", 1)[1] for url in urls}
    bundled = {p.name[: -len(".safetensors")] for p in MODELS.glob("*.safetensors")}
    assert shots == {f"Resources/Screenshots/{name}.png" for name in bundled}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for shot in shots:
        picture = sitk.ReadImage(str(ROOT / shot))  # a real picture: RGB, wider than tall (three views)
        assert picture.GetNumberOfComponentsPerPixel() in (3, 4)
        width, height = picture.GetSize()
        assert 400 < width < 4000 and 200 < height < width
        assert f"({shot})" in readme, f"the README does not show {shot}"
