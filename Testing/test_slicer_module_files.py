"""The Slicer module's files that only the application loads: .ui, widget, parameters, CMake, requirements.

These cannot be imported here (they need Qt and the Slicer application), so they are checked as text:
every widget the code uses exists in the .ui, every parameter is bound to a widget, every script is
packaged, and the requirements never pull in torch or a second SimpleITK.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from conftest import ROOT

MODULE_DIR = ROOT / "E2MISegModule"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "E2MISegModule.ui"
# every file that reaches into the .ui's widgets (self.ui.name, or ui.name where the ui is passed in)
WIDGET_SOURCES = [MODULE_DIR / "E2MISegModule.py", MODULE_DIR / "E2MISegModuleLib" / "EdgeWidget.py"]


def ui_tree() -> ElementTree.ElementTree:
    return ElementTree.parse(UI_FILE)


def ui_widgets() -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ui_tree().iter("widget")}


def used_ui_names(source: str) -> set[str]:
    names = set(re.findall(r"\bui\.(\w+)", source))
    # getattr(self.ui, f"extraVolume{number}Label") for number in (1, 2, 3)
    for prefix, suffix in re.findall(r'getattr\(self\.ui, f"(\w*)\{number\}(\w*)"\)', source):
        names |= {f"{prefix}{n}{suffix}" for n in (1, 2, 3)}
    return names


def parameter_fields() -> dict[str, str]:
    tree = ast.parse((MODULE_DIR / "E2MISegModuleLib" / "Parameters.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "E2MISegParameterNode")
    return {item.target.id: ast.unparse(item.annotation) for item in node.body if isinstance(item, ast.AnnAssign)}


def test_ui_parses_and_every_widget_the_code_uses_exists():
    widgets = ui_widgets()
    assert ui_tree().getroot().tag == "ui" and widgets["E2MISegModule"] == "qMRMLWidget"
    for path in WIDGET_SOURCES:
        missing = used_ui_names(path.read_text()) - set(widgets)
        assert not missing, f"{path.name} uses widgets the .ui does not define: {sorted(missing)}"
    assert len(used_ui_names(WIDGET_SOURCES[0].read_text())) >= 15  # the regex really finds the uses
    edges = used_ui_names(WIDGET_SOURCES[1].read_text())
    assert {"refineEdgesButton", "undoRefinementButton", "showUncertaintyCheckBox", "nextUncertainEdgeButton",
            "edgeSegmentsTableView", "edgeStatusLabel"} <= edges


def test_a_widget_missing_from_the_ui_is_caught():
    widgets = set(ui_widgets())
    source = WIDGET_SOURCES[1].read_text().replace("ui.nextUncertainEdgeButton", "ui.nextUncertainEdgeButtn", 1)
    assert used_ui_names(source) - widgets == {"nextUncertainEdgeButtn"}
    assert used_ui_names("def f(ui):\n    ui.noSuchWidget.clicked.connect(f)\n") - widgets == {"noSuchWidget"}


def test_edges_section_controls():
    widgets = ui_widgets()
    assert widgets["edgesCollapsibleButton"] == "ctkCollapsibleButton"
    assert widgets["edgeSegmentsTableView"] == "qMRMLSegmentsTableView"
    root = ui_tree().getroot()
    roi = next(w for w in root.iter("widget") if w.get("name") == "edgeRoiSelector")
    assert [s.text for s in roi.find("property[@name='nodeTypes']").iter("string")] == ["vtkMRMLMarkupsROINode"]
    table = next(w for w in root.iter("widget") if w.get("name") == "edgeSegmentsTableView")
    assert table.find("property[@name='selectionMode']/number").text == "3"  # ExtendedSelection: several segments
    texts = {w.get("name"): w.find("property[@name='text']/string").text for w in root.iter("widget")
             if w.find("property[@name='text']/string") is not None}
    assert texts["edgesCollapsibleButton"] == "Edges" and texts["refineEdgesButton"] == "Refine edges"
    assert texts["showUncertaintyCheckBox"] == "Show boundary uncertainty"
    assert texts["nextUncertainEdgeButton"] == "Next uncertain edge"


def test_every_parameter_is_bound_to_a_widget_of_a_fitting_type():
    fields = parameter_fields()
    bound = {}
    for widget in ui_tree().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert set(bound) <= set(fields), f"unknown parameters in the .ui: {set(bound) - set(fields)}"
    assert set(fields) - set(bound) == {"model"}  # the model combo is filled from the store by the widget
    fitting = {"vtkMRMLScalarVolumeNode": "qMRMLNodeComboBox", "vtkMRMLSegmentationNode": "qMRMLNodeComboBox",
               "vtkMRMLMarkupsROINode": "qMRMLNodeComboBox",
               "bool": "QCheckBox", "Device": "QComboBox", "Quality": "QComboBox"}
    for name, widget_class in bound.items():
        annotation = fields[name]
        expected = "QDoubleSpinBox" if annotation.startswith("Annotated[float") else fitting[annotation]
        assert widget_class == expected, f"{name}: {annotation} bound to a {widget_class}"


def test_node_selectors_receive_the_scene_and_custom_widgets_are_declared():
    root = ui_tree().getroot()
    combos = {n for n, c in ui_widgets().items() if c.startswith("qMRML") and n != "E2MISegModule"}
    connected = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    assert combos and combos <= connected, f"selectors without a scene show no nodes: {combos - connected}"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    custom = {c for c in ui_widgets().values() if not c.startswith("Q")}
    assert custom <= declared


def test_module_sources_parse_and_the_logic_needs_no_qt():
    for path in [MODULE_DIR / "E2MISegModule.py", *sorted((MODULE_DIR / "E2MISegModuleLib").glob("*.py"))]:
        ast.parse(path.read_text(), filename=str(path))
    import E2MISegModuleLib  # noqa: F401

    assert "qt" not in sys.modules and "ctk" not in sys.modules
    assert len((MODULE_DIR / "E2MISegModule.py").read_text().splitlines()) < 320  # the shell stays thin (+ version check, issue 20)


def test_cmake_packages_every_script_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    for path in sorted((MODULE_DIR / "E2MISegModuleLib").glob("*.py")):
        assert f"E2MISegModuleLib/{path.name}" in cmake, f"{path.name} is not packaged"
    engine = MODULE_DIR / "e2miseg"
    for package in [engine, *sorted(p.parent for p in engine.rglob("__init__.py"))]:
        pattern = f"{package.relative_to(MODULE_DIR).as_posix()}/*.py"
        assert pattern in cmake, f"engine package {pattern} is not packaged"
    assert "slicerMacroBuildScriptedModule" in cmake and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui", "Resources/requirements.txt"):
        assert resource in cmake
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "E2MISegModule")).is_file()
    top = (ROOT / "CMakeLists.txt").read_text()
    assert "add_subdirectory(E2MISegModule)" in top


def test_icon_is_a_128_pixel_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "E2MISegModule.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 128 and int.from_bytes(data[20:24], "big") == 128


def _requirements():
    from packaging.requirements import Requirement

    lines = (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith(("#", "-"))]


def _closure(names: list[str]) -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in importlib.metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def test_requirements_never_replace_slicer_packages_and_cover_the_engine():
    requirements = _requirements()
    names = {r.name.lower() for r in requirements}
    assert not names & {"torch", "simpleitk", "numpy"}
    pulled = _closure(sorted(names))
    assert not pulled & {"torch", "simpleitk"}, "a requirement would install torch or replace Slicer's SimpleITK"
    # every third-party package the engine imports for inference is either Slicer's own or listed
    provided_by_slicer = {"torch", "numpy", "simpleitk"}
    training_only = {"monai"}
    distributions = importlib.metadata.packages_distributions()
    for path in sorted((MODULE_DIR / "e2miseg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "e2miseg":
                    continue
                dist = {d.lower() for d in distributions.get(top, [top])}
                assert dist & (names | provided_by_slicer | training_only), f"{path.name} imports {top}, not in requirements.txt"


def test_progress_fraction_rises_through_the_stages():
    from E2MISegModuleLib import overallFraction

    steps = [("load", 0, 1), ("load", 1, 1), ("preprocess", 1, 1), ("infer", 0, 8), ("infer", 4, 8), ("infer", 8, 8),
             ("postprocess", 1, 1), ("write", 1, 1), ("import", 0, 1), ("import", 1, 1)]
    fractions = [overallFraction(*step) for step in steps]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert overallFraction("infer", 4, 8) - overallFraction("infer", 0, 8) > 0.3  # inference dominates the bar
