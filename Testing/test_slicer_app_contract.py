"""The Slicer module against a double of Slicer's application layer, on real MRML (slicer-core).

The double (Testing/slicer_app_double) reproduces how Slicer loads scripted modules, builds their
widget from the .ui, drives setup/enter/exit/cleanup, loads Segment Editor effects and registers them
at startupCompleted; each mechanic cites the Slicer source it was checked against. These tests catch
what the plain slicer-core tests cannot: a module that does not open, an effect that never registers.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import sys
import time
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from conftest import require_module  # noqa: E402

slicer = require_module("slicer", "the slicer-core wheel runs the Slicer module's logic on real MRML")

from conftest import ROOT  # noqa: E402
from helpers import HIPPOCAMPUS_LABELS, make_e2miseg_checkpoint  # noqa: E402
from slicer_app_double import SlicerApplication  # noqa: E402
from slicer_app_double.app import loadSourceAsModule  # noqa: E402
from slicer_app_double.qtwidgets import QFile, QUiLoader  # noqa: E402

MODULE_DIR = ROOT / "E2MISegModule"
MODULE_FILE = MODULE_DIR / "E2MISegModule.py"
EFFECT_DIR = MODULE_DIR / "SegmentEditorE2MISegEdgeRefine"
HIDDEN_MODULE_FILE = EFFECT_DIR / "SegmentEditorE2MISegEdgeRefine.py"
SAMPLE = MODULE_DIR / "Resources" / "SampleData" / "hippocampus_008.nii.gz"
EFFECT_NAME = "E2MISeg edge refine"


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    """A user model store holding one tiny E2MISeg (3 mm grid: one or two tiles per run)."""
    store = tmp_path_factory.mktemp("store")
    make_e2miseg_checkpoint(store / "tiny-hippocampus.safetensors", spacing=(3.0, 3.0, 3.0))
    return store


@pytest.fixture
def application(monkeypatch, model_store):
    monkeypatch.setenv("E2MISEG_MODELS", str(model_store))
    with SlicerApplication(version=(5, 10)) as app:
        yield app


def load_sample(scene):
    """The bundled sample read by Slicer's own volume storage node."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hippocampus_008")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(SAMPLE))
    assert storage.ReadData(volume)
    return volume


def segment_names(segmentationNode):
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def run_until_done(widget, timeout_s=300):
    """What the QTimer does in Slicer: call the widget's poll slot until the run is over."""
    deadline = time.monotonic() + timeout_s
    while widget.task is not None:
        assert time.monotonic() < deadline, "the run did not finish"
        widget.timer.fire()
        time.sleep(0.05)


# ---- the double reproduces Slicer's mechanics -----------------------------------------------------------

def test_double_logic_base_calls_super_init_like_slicer(application):
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

    class NeedsScene:
        def __init__(self, scene):
            self.scene = scene

    class WrongOrderLogic(ScriptedLoadableModuleLogic, NeedsScene):
        def __init__(self):
            ScriptedLoadableModuleLogic.__init__(self)

    with pytest.raises(TypeError):  # the MRO sends super().__init__() to NeedsScene without its argument
        WrongOrderLogic()


def test_double_loads_a_file_as_a_plain_module_named_by_the_caller(tmp_path, application):
    folder = tmp_path / "SomethingLib"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "Helper.py").write_text("VALUE = 1\n")
    (folder / "Effect.py").write_text("from SomethingLib.Helper import VALUE\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ModuleNotFoundError, match="is not a package"):
            loadSourceAsModule("SomethingLib", str(folder / "Effect.py"))
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("SomethingLib", "SomethingLib.Helper"):
            sys.modules.pop(name, None)


def test_double_ui_rejects_unknown_widgets_and_unbound_parameter_names(application):
    from slicer.parameterNodeWrapper import parameterNodeWrapper

    ui = slicer.util.childWidgetVariables(QUiLoader().load(QFile(MODULE_DIR / "Resources" / "UI" / "E2MISegModule.ui")))
    with pytest.raises(AttributeError):
        ui.noSuchWidget  # noqa: B018  (childWidgetVariables has exactly the .ui's names)
    with pytest.raises(AttributeError):
        ui.segmentButton.txt = "typo"  # a property the widget class does not have

    @parameterNodeWrapper
    class OnlyInput:
        inputVolume: slicer.vtkMRMLScalarVolumeNode

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    with pytest.raises(ValueError, match="Cannot find a param"):  # the .ui binds e.g. "quality"
        OnlyInput(node).connectGui(ui)


# ---- the module in the application ---------------------------------------------------------------------

def test_module_opens_and_get_module_logic_returns_the_scene_bound_logic(application):
    module = application.loadScriptedModule(str(MODULE_FILE))
    assert module.python.parent.title == "E2MISeg" and module.hasWidget
    logic = slicer.util.getModuleLogic("E2MISegModule")  # Slicer's own util: widgetRepresentation().self().logic
    from E2MISegModuleLib.Logic import E2MISegLogic

    assert isinstance(logic, E2MISegLogic) and logic.scene is slicer.mrmlScene
    assert logic.moduleName == "E2MISegModule" and logic.isSingletonParameterNode
    parameterNode = logic.getParameterNode()
    assert parameterNode.parameterNode.GetAttribute("ModuleName") == "E2MISegModule"
    assert logic.getParameterNode().parameterNode is parameterNode.parameterNode  # a singleton


def test_every_ui_name_the_widget_uses_exists_and_every_parameter_binds(application):
    module = application.loadScriptedModule(str(MODULE_FILE))
    widget = module.widgetRepresentation().self()
    tree = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "E2MISegModule.ui")
    bound = {w.get("name"): p.find("string").text for w in tree.iter("widget") for p in w.findall("property")
             if p.get("name") == "SlicerParameterName"}
    fields = set(type(widget._parameterNode).allParameters)
    assert bound and set(bound.values()) <= fields
    # the widgets follow the node: a value written into the parameter node shows in its widget
    widget._parameterNode.keepLargest = True
    widget._parameterNode.edgeStrength = 0.45
    assert widget.ui.keepLargestCheckBox.checked and widget.ui.edgeStrengthSpinBox.value == pytest.approx(0.45)
    widget.ui.qualitySelector.currentIndex = 0  # and the other way
    assert widget._parameterNode.quality.value == "fast"


def test_a_widget_missing_from_the_ui_stops_setup(tmp_path, application):
    copy = tmp_path / "E2MISegModule"
    (copy / "Resources" / "UI").mkdir(parents=True)
    shutil.copy(MODULE_FILE, copy / "E2MISegModule.py")
    shutil.copy(MODULE_DIR / "Resources" / "requirements.txt", copy / "Resources")
    ui = (MODULE_DIR / "Resources" / "UI" / "E2MISegModule.ui").read_text(encoding="utf-8")
    (copy / "Resources" / "UI" / "E2MISegModule.ui").write_text(ui.replace('name="show3DButton"', 'name="show3DBtn"'))
    module = application.loadScriptedModule(str(copy / "E2MISegModule.py"))
    with pytest.raises(AttributeError, match="show3DButton"):
        module.widgetRepresentation()


def test_segment_through_the_button_then_leave_the_module_before_it_finishes(application):
    volume = load_sample(slicer.mrmlScene)
    module = application.loadScriptedModule(str(MODULE_FILE))
    representation = module.widgetRepresentation()
    widget = representation.self()
    representation.enter()
    ui = widget.ui
    assert ui.inputVolumeSelector.currentNode() is volume  # enter() picks the scene's volume
    ui.modelSelector.currentIndex = [ui.modelSelector.itemText(i) for i in range(ui.modelSelector.count)].index(
        "tiny-hippocampus")
    ui.deviceSelector.currentIndex = [d.value for d in type(widget._parameterNode.device)].index("cpu")
    ui.qualitySelector.currentIndex = 0  # fast
    ui.show3DButton.checked = True
    assert ui.segmentButton.enabled and ui.segmentButton.text == "Segment"

    ui.segmentButton.click()  # the widget's own handler starts the run
    assert widget.task is not None and widget.timer.isActive() and ui.segmentButton.text == "Cancel"
    assert not ui.inputsCollapsibleButton.enabled  # inputs are locked while it runs
    representation.exit()  # the user opens another module: the GUI lets go of the parameter node
    run_until_done(widget)

    assert not widget.timer.isActive() and ui.statusLabel.text.startswith("Done")
    assert application.cursorDepth == 0  # every wait cursor was restored
    segmentation = slicer.util.getModuleLogic("E2MISegModule").getParameterNode().outputSegmentation
    assert segmentation is not None, "the result must reach the module's parameter node after exit()"
    assert segment_names(segmentation) == [label["name"] for label in HIPPOCAMPUS_LABELS]
    assert segmentation.GetSegmentation().ContainsRepresentation("Closed surface")  # Show 3D ran
    representation.enter()  # back in the module: the result is selected as the output
    assert ui.outputSegmentationSelector.currentNode() is segmentation
    assert ui.segmentButton.text == "Segment" and ui.inputsCollapsibleButton.enabled
    representation.exit()
    representation.unload()


def test_segment_without_input_is_refused_and_the_cursor_comes_back(application):
    module = application.loadScriptedModule(str(MODULE_FILE))
    representation = module.widgetRepresentation()
    representation.enter()
    widget = representation.self()
    assert not widget.ui.segmentButton.enabled
    assert widget.ui.segmentButton.toolTip == "Select an input volume and a model first."
    representation.exit()
    representation.unload()


# ---- the Segment Editor effect -------------------------------------------------------------------------

def test_effect_registers_at_startup_and_loads_as_slicer_loads_it(application):
    application.loadScriptedModule(str(MODULE_FILE))
    hidden = application.loadScriptedModule(str(HIDDEN_MODULE_FILE))
    assert hidden.python.parent.hidden and not hidden.hasWidget
    factory = slicer.qSlicerSegmentEditorEffectFactory.instance()
    assert EFFECT_NAME not in factory.effects  # registered at startupCompleted, not at load
    application.emitStartupCompleted()
    effect = factory.effects[EFFECT_NAME].self()
    loaded = sys.modules["SegmentEditorE2MISegEdgeRefineLib"]
    assert type(effect).__module__ == "SegmentEditorE2MISegEdgeRefineLib" and not hasattr(loaded, "__path__")
    assert slicer.SegmentEditorE2MISegEdgeRefineLib is effect
    assert (EFFECT_DIR / "Resources" / "Icons" / "SegmentEditorE2MISegEdgeRefine.png").is_file()
    assert Path(effect.icon().path).resolve() == (EFFECT_DIR / "Resources" / "Icons" / "SegmentEditorE2MISegEdgeRefine.png")
    assert "Refine the selected segment" in effect.helpText()
    effect.setMRMLDefaults()
    assert effect.scriptedEffect.doubleParameter("Strength") == pytest.approx(0.6)
    # a second editor's copy goes through the same loader (clone() -> setPythonSource)
    clone = effect.clone()
    assert clone.self() is not effect and clone.name == EFFECT_NAME


def test_nothing_in_the_effect_folder_imports_its_own_lib_package():
    """Once the effect is registered, "SegmentEditorE2MISegEdgeRefineLib" in sys.modules is the effect file
    itself, so importing anything below that name fails in Slicer (the hidden module's self-test included)."""
    for path in EFFECT_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("SegmentEditorE2MISegEdgeRefineLib") for n in names), f"{path.name}: {names}"


def test_both_modules_pass_slicers_generic_module_test_fields(application):
    """Base/QTCore/Testing/Python/qSlicerModuleGenericTest.py.in (v5.10.0), run for modules built
    WITH_GENERIC_TESTS: categories, contributors and acknowledgementText must not be empty."""
    for path in (MODULE_FILE, HIDDEN_MODULE_FILE):
        parent = application.loadScriptedModule(str(path)).python.parent
        for field in ("categories", "contributors", "acknowledgementText", "helpText", "title"):
            assert getattr(parent, field), f"{path.name}: {field} is empty"
        assert parent.iconPath, f"{path.name}: no Resources/Icons/<module>.png beside it"


# ---- supported Slicer versions -------------------------------------------------------------------------

def supported_minimum():
    from E2MISegModuleLib.SlicerVersion import MINIMUM_SLICER_VERSION

    return MINIMUM_SLICER_VERSION


# MRML methods the module calls that not every Slicer 5 has: first tag that has them (checked in
# Libs/vtkSegmentationCore/vtkSegment.h: SetTerminology absent at v5.8.0, present at v5.10.0)
NEWER_MRML_METHODS = {"SetTerminology": (5, 10)}


def test_the_minimum_slicer_has_every_mrml_method_the_module_calls():
    sources = "\n".join(p.read_text(encoding="utf-8")
                        for p in [MODULE_FILE, *sorted((MODULE_DIR / "E2MISegModuleLib").glob("*.py"))])
    for method, since in NEWER_MRML_METHODS.items():
        if re.search(rf"\.{method}\(", sources):
            assert supported_minimum() >= since, f"{method} needs Slicer {since}, the module claims {supported_minimum()}"
    assert hasattr(slicer.vtkSegment(), "SetTerminology")  # and the wheel these tests run on has it


def test_an_older_slicer_is_told_what_to_do_and_gets_no_effect(monkeypatch, model_store):
    older = (supported_minimum()[0], supported_minimum()[1] - 1)
    with SlicerApplication(version=older) as app:
        with pytest.raises(ImportError, match=r"needs 3D Slicer 5\.10 or later; this is Slicer 5\.9"):
            app.loadScriptedModule(str(MODULE_FILE))
        app.loadScriptedModule(str(HIDDEN_MODULE_FILE))
        app.emitStartupCompleted()
        assert slicer.qSlicerSegmentEditorEffectFactory.instance().effects == {}


def test_readme_and_cmake_state_the_same_minimum():
    minimum = "{}.{}".format(*supported_minimum())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"{minimum} or later" in readme
    assert not re.search(r"\b5\.\d+ or later", readme.replace(f"{minimum} or later", "")), "another minimum in the README"
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f"find_package(Slicer {minimum} REQUIRED)" in cmake and f"Requires 3D Slicer {minimum} or later" in cmake


# ---- packaging and installation ------------------------------------------------------------------------

def test_cmake_lists_name_files_that_exist():
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for url in re.findall(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/([^\"\s]+)", top):
        assert (ROOT / url).is_file(), f"top-level CMakeLists.txt names {url}, which is not in the repository"
    assert re.search(r"EXTENSION_ICONURL \"https://raw", top)
    effect_cmake = (EFFECT_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"\$\{MODULE_NAME\}(\S+)", effect_cmake))
    assert "Lib/SegmentEditorEffect.py" in listed and ".py" in listed
    assert "Resources/Icons/${MODULE_NAME}.png" in effect_cmake
    scripts = {p.relative_to(EFFECT_DIR).as_posix().replace("SegmentEditorE2MISegEdgeRefine", "", 1)
               for p in EFFECT_DIR.rglob("*.py")}
    assert scripts <= listed, f"not packaged: {scripts - listed}"


def test_requirements_path_may_be_a_str_and_old_slicer_packaging_path_installs_nothing_present(application):
    from E2MISegModuleLib.Install import ensurePackages

    ensurePackages(str(MODULE_DIR / "Resources" / "requirements.txt"))  # EdgeWidget passes what resourcePath gives


def test_slicer_packaging_gets_the_requirements(application, monkeypatch):
    calls = []
    packaging = types.ModuleType("slicer.packaging")
    packaging.load_requirements = lambda path: ["read", path.name]
    packaging.pip_ensure = lambda requirements, requester=None: calls.append((requirements, requester))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    from E2MISegModuleLib.Install import ensurePackages

    ensurePackages(str(MODULE_DIR / "Resources" / "requirements.txt"))
    assert calls == [(["read", "requirements.txt"], "E2MISeg")]


def test_a_torch_older_than_the_minimum_is_not_accepted(application, monkeypatch):
    from E2MISegModuleLib.Install import InstallError, ensureTorch, torchTooOld

    assert torchTooOld("2.3.0+cu121") is None and torchTooOld("2.13.0") is None
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.1.2" if name == "torch" else real_version(name))
    with pytest.raises(InstallError, match="needs PyTorch >=2.3; PyTorch 2.1.2 is installed") as raised:
        ensureTorch()
    assert raised.value.restartRequired


# ---- the smoke test for a real Slicer (runs in CI only) --------------------------------------------------

def test_smoke_script_and_workflow_name_what_exists():
    smoke = (ROOT / "Testing" / "SlicerApp" / "smoke.py").read_text(encoding="utf-8")
    ast.parse(smoke)
    ast.parse((ROOT / "Testing" / "SlicerApp" / "prepare.py").read_text(encoding="utf-8"))
    assert f'EFFECT_NAME = "{EFFECT_NAME}"' in smoke
    assert f'scriptedEffect.name = "{EFFECT_NAME}"' in (EFFECT_DIR / "SegmentEditorE2MISegEdgeRefineLib" /
                                                        "SegmentEditorEffect.py").read_text(encoding="utf-8")
    model = re.search(r'MODEL = "([^"]+)"', smoke).group(1)
    assert (MODULE_DIR / "Resources" / "Models" / f"{model}.safetensors").is_file() and SAMPLE.is_file()
    assert "widget.onSegmentButton()" in smoke and "slicer.util.exit(1)" in smoke
    workflow = (ROOT / ".github" / "workflows" / "slicer-smoke.yml").read_text(encoding="utf-8")
    for needed in ("xvfb-run", '--additional-module-paths "$PWD/E2MISegModule" "$PWD/E2MISegModule/SegmentEditorE2MISegEdgeRefine"',
                   "Testing/SlicerApp/prepare.py", "Testing/SlicerApp/smoke.py", "stability=release",
                   "actions/upload-artifact"):
        assert needed in workflow, needed


def test_a_stroke_with_the_registered_effect_refines_only_under_it_on_real_mrml(application):
    """The effect as the editor runs it: images and edits go through the real vtkSlicerSegmentEditorLogic."""
    import numpy as np
    import vtk
    from vtk.util import numpy_support

    from E2MISegModuleLib.SegmentationImport import exportSegmentsToArray, maskToOrientedImage

    application.loadScriptedModule(str(MODULE_FILE))
    application.loadScriptedModule(str(HIDDEN_MODULE_FILE))
    application.emitStartupCompleted()
    scene = slicer.mrmlScene
    rng = np.random.default_rng(0)
    k, j, i = np.mgrid[0:40, 0:48, 0:48]
    ball = (k - 20) ** 2 + (j - 24) ** 2 + (i - 24) ** 2 <= 12 ** 2
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ball")
    image = vtk.vtkImageData()
    image.SetDimensions(48, 48, 40)
    voxels = (100 + 80 * ball + rng.normal(0, 8, ball.shape)).astype(np.float32)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(voxels.ravel(), deep=True))
    volume.SetAndObserveImageData(image)
    volume.SetSpacing(0.8, 0.8, 1.5)
    volume.SetOrigin(-10.0, 5.0, 2.0)
    ijkToRas = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijkToRas)
    matrix = np.array([[ijkToRas.GetElement(r, c) for c in range(4)] for r in range(4)])
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentId = segmentationNode.GetSegmentation().AddEmptySegment("ball")
    drawn = (k - 20) ** 2 + (j - 24) ** 2 + (i - 24) ** 2 <= 9 ** 2  # 3 voxels too small
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        maskToOrientedImage(drawn, matrix), segmentationNode, segmentId,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, None, False, [])

    editorLogic = slicer.vtkSlicerSegmentEditorLogic()
    editorLogic.SetMRMLScene(scene)
    editorLogic.SetSegmentEditorNode(scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
    editorLogic.SetSegmentationNode(segmentationNode)
    editorLogic.SetSourceVolumeNode(volume)
    editorLogic.SetCurrentSegmentID(segmentId)
    scriptedEffect = slicer.qSlicerSegmentEditorEffectFactory.instance().effects[EFFECT_NAME]
    scriptedEffect.bindEditorLogic(editorLogic)
    effect = scriptedEffect.self()
    effect.setMRMLDefaults()

    def segment():
        return exportSegmentsToArray(slicer.modules.segmentations.logic(), segmentationNode, [segmentId], volume, scene) > 0

    before = segment()
    assert np.array_equal(before, drawn)
    # a stroke along the +i side of the ball in slice k = 20 (RAS points, as the mouse gives them)
    stroke = np.array([(matrix @ [34.0, float(jj), 20.0, 1.0])[:3] for jj in (20, 24, 28)])
    changed = effect.applyStroke(stroke)
    after = segment()
    assert changed == int((after != before).sum()) > 0
    assert np.array_equal(after[:, :, :28], before[:, :, :28])  # far from the stroke: untouched
    assert np.array_equal(after[:12], before[:12]) and np.array_equal(after[29:], before[29:])  # beyond 5 mm in k
    assert (after & ball).sum() > (before & ball).sum() and (after & ~ball).sum() <= (before & ~ball).sum() + 2
    editorLogic.Undo()
    assert np.array_equal(segment(), before)


def test_the_smoke_script_runs_in_the_double(application, monkeypatch):
    """Testing/SlicerApp/smoke.py's steps against the double (the CI run on a real Slicer is the real check):
    a tiny model instead of the bundled one, and Slicer's volume storage node in place of loadVolume."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("e2miseg_smoke", ROOT / "Testing" / "SlicerApp" / "smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)  # not __main__: defines the steps, runs nothing
    monkeypatch.setattr(smoke, "MODEL", "tiny-hippocampus")
    monkeypatch.setattr(slicer.util, "loadVolume", lambda path: load_sample(slicer.mrmlScene))
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *args, **kwargs: errors.append(text))
    application.loadScriptedModule(str(MODULE_FILE))
    application.loadScriptedModule(str(HIDDEN_MODULE_FILE))
    application.emitStartupCompleted()
    volume, segmentationNode = smoke.segmentWithTheModule(errors)
    assert segment_names(segmentationNode) == [label["name"] for label in HIPPOCAMPUS_LABELS] and not errors
    smoke.strokeWithTheEffect(volume, segmentationNode)


def test_the_effect_registers_before_the_engines_packages_are_installed(application, monkeypatch):
    """A fresh Slicer has no scipy until the user accepts E2MISeg's packages: the effect must still register."""
    for name in ("scipy", "scipy.ndimage", "e2miseg.edges.stroke", "e2miseg.edges.region", "e2miseg.edges.band",
                 "e2miseg.edges.refine"):
        monkeypatch.setitem(sys.modules, name, None)  # importing any of these now raises ImportError
    application.loadScriptedModule(str(MODULE_FILE))
    application.loadScriptedModule(str(HIDDEN_MODULE_FILE))
    application.emitStartupCompleted()
    assert EFFECT_NAME in slicer.qSlicerSegmentEditorEffectFactory.instance().effects
