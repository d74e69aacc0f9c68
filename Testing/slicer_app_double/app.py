"""The application mechanics the E2MISeg module relies on: how Slicer finds, loads and drives scripted
modules and Segment Editor effects. Written for these tests; each mechanic names the Slicer source
(tag v5.10.0) it was checked against. ``git diff v5.10.0 v5.12.0`` of the C++ files cited here is empty.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import slicer


def loadSourceAsModule(moduleName: str, filePath: str):
    """Base/QTCore/qSlicerScriptedUtils.cxx ``loadSourceAsModule`` (v5.10.0): the file becomes a plain module
    named ``moduleName`` via importlib.util.spec_from_file_location, stored in sys.modules (replacing what
    was there) before it runs. No submodule search path is given, so the module is no package."""
    spec = importlib.util.spec_from_file_location(moduleName, filePath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[moduleName] = module
    spec.loader.exec_module(module)
    return module


def _classFromModule(moduleName: str, filePath: str, className: str):
    """The lookup shared by qSlicerScriptedLoadableModule::setPythonSource (Base/QTGUI/qSlicerScriptedLoadableModule.cxx),
    qSlicerScriptedLoadableModuleWidget::setPythonSource (Base/QTGUI/qSlicerScriptedLoadableModuleWidget.cxx) and
    qSlicerSegmentEditorScriptedEffect::setPythonSource (Modules/Loadable/Segmentations/EditorEffects/
    qSlicerSegmentEditorScriptedEffect.cxx), v5.10.0: a module already in sys.modules that has the class is
    reused; otherwise the file is loaded with loadSourceAsModule."""
    module = sys.modules.get(moduleName)
    if module is None or not hasattr(module, className):
        module = loadSourceAsModule(moduleName, filePath)
    if not hasattr(module, className):
        raise RuntimeError(f"class {className} was not found in {filePath}")
    return module, getattr(module, className)


class ModuleRepresentation:
    """The qSlicerScriptedLoadableModuleWidget that hosts a Python ``<Module>Widget`` (isEntered as in
    Base/QTGUI/qSlicerAbstractModuleWidget.cxx: enter() and exit() toggle it, each exactly once)."""

    def __init__(self, module):
        import qt

        self.host = qt.QWidget(module.name + "Widget")
        self.isEntered = False
        self.module = module
        # qSlicerScriptedLoadableModuleWidget::setPythonSource: class "<module name>Widget", parent = the host
        _, widgetClass = _classFromModule(module.name, module.path, module.name + "Widget")
        self.host.isEntered = False
        self.widget = widgetClass(self.host)
        # qSlicerAbstractCoreModule::createNewWidgetRepresentation (Base/QTCore/qSlicerAbstractCoreModule.cxx):
        # setModule() calls setup(), then setMRMLScene()
        self.widget.setup()

    def self(self):
        return self.widget

    def enter(self):
        assert not self.isEntered, "Slicer asserts enter() is not called twice"
        self.isEntered = self.host.isEntered = True
        self.widget.enter()

    def exit(self):
        assert self.isEntered, "Slicer asserts exit() follows enter()"
        self.isEntered = self.host.isEntered = False
        self.widget.exit()

    def unload(self):
        # ScriptedLoadableModuleWidget._onModuleAboutToBeUnloaded calls cleanup(), once
        if self.widget is not None:
            self.widget.cleanup()
            self.widget = None


class ScriptedModule:
    """A qSlicerScriptedLoadableModule: name from the file name; the Python class of that name gets it as ``parent``."""

    def __init__(self, path: str):
        self.path = path
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.hidden = False
        self._representation = None
        module, moduleClass = _classFromModule(self.name, path, self.name)
        self.python = moduleClass(self)
        # widget creation is disabled when the file has no "<name>Widget" class
        self.hasWidget = hasattr(module, self.name + "Widget")

    def widgetRepresentation(self):
        if self._representation is None and self.hasWidget:
            self._representation = ModuleRepresentation(self)
        return self._representation

    def self(self):
        return self.python


class ModuleManager:
    def __init__(self):
        self.modules = {}

    def module(self, name):
        return self.modules.get(name)


class CommandOptions:
    testingEnabled = True
    noMainWindow = True


class Application:
    """slicer.app: version, testing mode, cursor, the startupCompleted() signal and the module manager."""

    def __init__(self, version=(5, 10), processEvents=None):
        self.majorVersion, self.minorVersion = version
        self._processEvents = processEvents
        self._moduleManager = ModuleManager()
        self.startupSlots = []
        self.cursorDepth = 0

    def connect(self, signal, slot):
        if signal != "startupCompleted()":
            raise AssertionError(f"the application double has no signal {signal}")
        self.startupSlots.append(slot)

    def emitStartupCompleted(self):
        # Base/QTApp/qSlicerApplicationHelper.hxx (v5.10.0): emitted once, after every module is loaded
        for slot in self.startupSlots:
            slot()

    def moduleManager(self):
        return self._moduleManager

    def commandOptions(self):
        return CommandOptions()

    def testingEnabled(self):
        return True

    def setOverrideCursor(self, cursor):
        self.cursorDepth += 1

    def restoreOverrideCursor(self):
        self.cursorDepth -= 1

    def processEvents(self):
        if self._processEvents is not None:
            self._processEvents()

    def loadScriptedModule(self, path: str) -> ScriptedModule:
        """Base/QTGUI/qSlicerScriptedLoadableModuleFactory.cxx (v5.10.0): ctkFactoryScriptedItem::load appends
        the module file's folder to sys.path, then the instantiator makes the module from the file."""
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in sys.path:
            sys.path.append(folder)
        module = ScriptedModule(os.path.abspath(path))
        self._moduleManager.modules[module.name] = module
        setattr(slicer.modules, module.name.lower(), module)
        return module


class EffectFactory:
    """slicer.qSlicerSegmentEditorEffectFactory: AbstractScriptedSegmentEditorEffect.register() calls
    registerEffect(self.scriptedEffect) (Modules/Loadable/Segmentations/EditorEffects/Python/SegmentEditorEffects/
    AbstractScriptedSegmentEditorEffect.py, v5.10.0)."""

    _instance = None

    def __init__(self):
        self.effects = {}

    @classmethod
    def instance(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def registerEffect(self, scriptedEffect):
        self.effects[scriptedEffect.name] = scriptedEffect

    def registeredEffects(self):
        return list(self.effects.values())


class SegmentEditorWidget:
    """slicer.qMRMLSegmentEditorWidget without its GUI (Modules/Loadable/Segmentations/Widgets/
    qMRMLSegmentEditorWidget.cxx, v5.10.0): it works on copies of the registered effects (copyEffects ->
    clone()), gives each the editor's vtkSlicerSegmentEditorLogic, calls setMRMLDefaults() once the
    editor node is set, and forwards the node/segment selection and undo() to that logic."""

    def __init__(self):
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.effects = [effect.python.clone() for effect in EffectFactory.instance().registeredEffects()]
        self.active = None

    def setMRMLScene(self, scene):
        self.logic.SetMRMLScene(scene)

    def setMRMLSegmentEditorNode(self, node):
        self.logic.SetSegmentEditorNode(node)
        for effect in self.effects:
            effect.bindEditorLogic(self.logic)
            effect.python.setMRMLDefaults()

    def setSegmentationNode(self, node):
        self.logic.SetSegmentationNode(node)

    def setSourceVolumeNode(self, node):
        self.logic.SetSourceVolumeNode(node)

    def setCurrentSegmentID(self, segmentId):
        self.logic.SetCurrentSegmentID(segmentId)

    def setActiveEffectByName(self, name):
        self.active = next((effect for effect in self.effects if effect.name == name), None)

    def activeEffect(self):
        return self.active

    def undo(self):
        self.logic.Undo()


class ScriptedEffect:
    """qSlicerSegmentEditorScriptedEffect: setPythonSource(path) loads the file as a module named after its
    FOLDER and instantiates the class named after the file (plus "Effect" when missing) with this object."""

    def __init__(self, parent=None):
        self.name = ""
        self.title = ""
        self.perSegment = False
        self.requireSegments = False
        self.python = None
        self.parameters = {}
        self.editorLogic = None

    def setPythonSource(self, path: str) -> bool:
        moduleName = os.path.basename(os.path.dirname(path))
        className = os.path.splitext(os.path.basename(path))[0]
        if not className.endswith("Effect"):
            className += "Effect"
        _, effectClass = _classFromModule(moduleName, path, className)
        self.python = effectClass(self)
        setattr(slicer, moduleName, self.python)  # qSlicerScriptedUtils::setModuleAttribute("slicer", moduleName, self)
        return True

    def self(self):
        return self.python

    # ---- the images and edits an effect works with, on the real vtkSlicerSegmentEditorLogic ----
    # In Slicer 5.10 the effect's volumes are the segment editor logic's: qSlicerSegmentEditorAbstractEffect.cxx
    # (defaultModifierLabelmap, sourceVolumeImageData, selectedSegmentLabelmap) emits updateVolumeSignal, which
    # qMRMLSegmentEditorWidget::updateVolume hands to vtkSlicerSegmentEditorLogic::UpdateVolume; that resets the
    # modifier or updates the aligned source / selected segment. modifySelectedSegmentByLabelmap calls
    # vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap(segmentation, selected segment, modifier, mode,
    # extent, perSegment(), bypassMasking) (the effect's ModificationMode enum is static_cast to the logic's).

    def bindEditorLogic(self, editorLogic):
        self.editorLogic = editorLogic

    def defaultModifierLabelmap(self):
        return self.editorLogic.GetModifierLabelmap() if self.editorLogic.ResetModifierLabelmapToDefault() else None

    def sourceVolumeImageData(self):
        return self.editorLogic.GetAlignedSourceVolume() if self.editorLogic.UpdateAlignedSourceVolume() else None

    def selectedSegmentLabelmap(self):
        return self.editorLogic.GetSelectedSegmentLabelmap() if self.editorLogic.UpdateSelectedSegmentLabelmap() else None

    def saveStateForUndo(self):
        self.editorLogic.SaveStateForUndo()

    def modifySelectedSegmentByLabelmap(self, modifier, mode, bypassMasking=False):
        self.editorLogic.ModifySegmentByLabelmap(self.editorLogic.GetSegmentationNode(), self.editorLogic.GetCurrentSegmentID(),
                                                 modifier, mode, self.perSegment, bypassMasking)

    def setParameter(self, name, value):
        self.parameters[name] = value

    def setParameterDefault(self, name, value):
        self.parameters.setdefault(name, value)

    def doubleParameter(self, name):
        return float(self.parameters[name])
