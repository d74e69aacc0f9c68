"""A test double of Slicer's application layer, on top of the real MRML of the slicer-core wheel.

slicer-core has MRML, the Segmentations logic and slicer.util, but no application: no qt, no
ScriptedLoadableModule base classes, no parameter node wrapper, no module factory and no Segment Editor
effect loader. ``SlicerApplication`` puts doubles of exactly those into place for the duration of a
``with`` block, then removes them again (so later tests see no ``qt``):

>>> with SlicerApplication(version=(5, 10)) as app:
...     module = app.loadScriptedModule(".../E2MISegModule.py")
...     widget = module.widgetRepresentation()      # setup(), as Slicer does on first show
...     app.emitStartupCompleted()

Each mechanic cites the Slicer source file (tag v5.10.0) it reproduces; see app.py, scripted.py, parameters.py.
"""
from __future__ import annotations

import sys
import types

import slicer

from . import app as appModule
from . import parameters, qtwidgets, scripted

# Modules a test run through the double may leave behind that import the qt double: dropped on exit
_APPLICATION_MODULES = ("qt", "ctk", "SegmentEditorEffects", "qSlicerSegmentationsEditorEffectsPythonQt", "PyTorchUtils",
                        "slicer.i18n", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "E2MISegModule",
                        "SegmentEditorE2MISegEdgeRefine", "SegmentEditorE2MISegEdgeRefineLib",
                        "E2MISegModuleLib.EdgeWidget", "E2MISegModuleLib.Parameters", "E2MISegModuleLib.Install",
                        "E2MISegModuleLib.SelfTest")
_SLICER_ATTRIBUTES = ("app", "mrmlScene", "modules", "i18n", "ScriptedLoadableModule", "parameterNodeWrapper",
                      "qSlicerScriptedLoadableModule", "qSlicerScriptedLoadableModuleWidget",
                      "qSlicerSegmentEditorEffectFactory", "qSlicerSegmentEditorAbstractEffect", "qMRMLSegmentEditorWidget",
                      "SegmentEditorE2MISegEdgeRefineLib")


class QTimer(qtwidgets.QObject):
    """qt.QTimer without an event loop: the test calls ``fire()`` where Qt would call the timeout slots."""

    SIGNALS = ("timeout",)
    alive = []  # what the event loop would serve: slicer.app.processEvents() fires the active ones

    def __init__(self):
        super().__init__("timer")
        self.interval = 0
        self.active = False
        QTimer.alive.append(self)

    def setInterval(self, msec):
        self.interval = msec

    def start(self, msec=None):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active

    def fire(self):
        if self.active:
            self.timeout.emit()


class _Settings:
    def contains(self, key):
        return False

    def value(self, key, default=None):
        return default


def _qtModule():
    qt = types.ModuleType("qt")
    for name, cls in qtwidgets.WIDGET_CLASSES.items():
        setattr(qt, name, cls)
    qt.QVBoxLayout = qt.QFormLayout = qtwidgets.QVBoxLayout
    qt.QFile, qt.QUiLoader, qt.QTimer = qtwidgets.QFile, qtwidgets.QUiLoader, QTimer
    qt.QSettings = _Settings
    qt.Qt = types.SimpleNamespace(WaitCursor=3)
    qt.QIcon = lambda path="": types.SimpleNamespace(path=path)
    qt.QFileDialog = types.SimpleNamespace(getOpenFileName=lambda *args: "")
    return qt


def _ctkModule():
    ctk = types.ModuleType("ctk")
    ctk.ctkCollapsibleButton = qtwidgets.ctkCollapsibleButton
    ctk.ctkSliderWidget = qtwidgets.QDoubleSpinBox
    return ctk


def _i18nModule():
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    return i18n


def _effectsModules():
    effects = types.ModuleType("SegmentEditorEffects")

    class AbstractScriptedSegmentEditorEffect:
        # Modules/Loadable/Segmentations/EditorEffects/Python/SegmentEditorEffects/AbstractScriptedSegmentEditorEffect.py
        # (v5.10.0): __init__ keeps the C++ effect as self.scriptedEffect; register() hands it to the factory
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

        def register(self):
            slicer.qSlicerSegmentEditorEffectFactory.instance().registerEffect(self.scriptedEffect)

    effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    pythonQt = types.ModuleType("qSlicerSegmentationsEditorEffectsPythonQt")
    pythonQt.qSlicerSegmentEditorScriptedEffect = appModule.ScriptedEffect
    return effects, pythonQt


def _pyTorchUtilsModule():
    """The PyTorch extension's PyTorchUtils (github.com/fepegar/SlicerPyTorch, PyTorchUtils/PyTorchUtils.py):
    torchInstalled() is True when torch imports; installTorch(askConfirmation, ..., torchVersionRequirement)."""
    module = types.ModuleType("PyTorchUtils")

    class PyTorchUtilsLogic:
        installCalls = []

        @staticmethod
        def torchInstalled():
            import importlib.util

            return importlib.util.find_spec("torch") is not None

        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            PyTorchUtilsLogic.installCalls.append(torchVersionRequirement)
            return None

    module.PyTorchUtilsLogic = PyTorchUtilsLogic
    return module


class SlicerApplication:
    def __init__(self, version=(5, 10), scene=None):
        self.version = version
        self.scene = scene if scene is not None else slicer.vtkMRMLScene()

    def __enter__(self) -> appModule.Application:
        self._savedModules = {name: sys.modules.get(name) for name in _APPLICATION_MODULES}
        self._savedAttributes = {name: getattr(slicer, name, None) for name in _SLICER_ATTRIBUTES}
        self._savedPath = list(sys.path)
        for name in _APPLICATION_MODULES:
            sys.modules.pop(name, None)
        QTimer.alive = []
        app = appModule.Application(self.version, processEvents=lambda: [t.fire() for t in list(QTimer.alive)])
        segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
        segmentationsLogic.SetMRMLScene(self.scene)
        effects, pythonQt = _effectsModules()
        scriptedModule = types.ModuleType("slicer.ScriptedLoadableModule")
        for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                     "ScriptedLoadableModuleTest"):
            setattr(scriptedModule, name, getattr(scripted, name))
        wrapperModule = types.ModuleType("slicer.parameterNodeWrapper")
        wrapperModule.parameterNodeWrapper, wrapperModule.WithinRange = parameters.parameterNodeWrapper, parameters.WithinRange
        sys.modules.update({"qt": _qtModule(), "ctk": _ctkModule(), "slicer.i18n": _i18nModule(),
                            "slicer.ScriptedLoadableModule": scriptedModule, "slicer.parameterNodeWrapper": wrapperModule,
                            "SegmentEditorEffects": effects, "qSlicerSegmentationsEditorEffectsPythonQt": pythonQt,
                            "PyTorchUtils": _pyTorchUtilsModule()})
        slicer.app, slicer.mrmlScene = app, self.scene
        slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(logic=lambda: segmentationsLogic))
        slicer.i18n, slicer.ScriptedLoadableModule = sys.modules["slicer.i18n"], scriptedModule
        slicer.parameterNodeWrapper = wrapperModule
        slicer.qSlicerScriptedLoadableModule = appModule.ScriptedModule
        slicer.qSlicerScriptedLoadableModuleWidget = appModule.ModuleRepresentation
        appModule.EffectFactory._instance = None
        slicer.qSlicerSegmentEditorEffectFactory = appModule.EffectFactory
        slicer.qMRMLSegmentEditorWidget = appModule.SegmentEditorWidget
        editorLogic = slicer.vtkSlicerSegmentEditorLogic
        slicer.qSlicerSegmentEditorAbstractEffect = types.SimpleNamespace(
            ModificationModeSet=editorLogic.ModificationModeSet, ModificationModeAdd=editorLogic.ModificationModeAdd,
            ModificationModeRemove=editorLogic.ModificationModeRemove)
        self.app = app
        return app

    def __exit__(self, *exc):
        # Slicer unloads every module at exit: moduleAboutToBeUnloaded -> ScriptedLoadableModuleWidget.cleanup()
        for module in self.app.moduleManager().modules.values():
            if module._representation is not None:
                module._representation.unload()
        self.scene.RemoveAllObservers()  # also those of a widget whose setup() failed half-way
        for name, module in self._savedModules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in self._savedAttributes.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        sys.path[:] = self._savedPath
        return False
