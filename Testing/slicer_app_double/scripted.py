"""Doubles of slicer.ScriptedLoadableModule's base classes, written for these tests (not Slicer's code).

Each behaviour below was checked in Slicer's Base/Python/slicer/ScriptedLoadableModule.py at v5.10.0
(identical at v5.12.0: ``git diff v5.10.0 v5.12.0 -- Base/Python/slicer/ScriptedLoadableModule.py`` is empty).
"""
from __future__ import annotations

import os
import unittest

import slicer


class ScriptedLoadableModule:
    def __init__(self, parent):
        # Slicer: super().__init__() first, then moduleName = class name, parent fields reset to the
        # template's, and the icon taken from Resources/Icons/<moduleName>.svg or .png beside the module file.
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = ["(template contributors)"]
        parent.helpText = "(template help)"
        parent.acknowledgementText = "(template acknowledgement)"
        parent.iconPath = None
        for extension in (".svg", ".png"):
            iconPath = os.path.join(os.path.dirname(parent.path), "Resources/Icons", self.moduleName + extension)
            if os.path.isfile(iconPath):
                parent.iconPath = iconPath
                break

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        # Slicer: super().__init__(); moduleName = class name without "Widget"; self.layout is the parent's
        # layout; setup() is NOT called here when a parent is given (the application calls it).
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[:-6]
        self.developerMode = False
        self.parent = parent
        self.layout = self.parent.layout()

    def resourcePath(self, filename):
        # Slicer: beside slicer.util.modulePath(moduleName), i.e. slicer.modules.<name lower>.path
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def setup(self):
        pass  # Slicer: only the developer section (hidden unless developer mode)

    def cleanup(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        # Slicer calls super().__init__() here: with several bases, the next class in the MRO runs with
        # no arguments. This is the fact behind issue 20's defect 1.
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        # Slicer: the scene's singleton vtkMRMLScriptedModuleNode tagged with moduleName, created on first use
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        self.moduleTestNames = []
        super().__init__(*args, **kwargs)

    def delayDisplay(self, message, msec=100):
        pass
