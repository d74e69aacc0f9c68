"""A double of slicer.parameterNodeWrapper: typed fields stored in a real vtkMRMLScriptedModuleNode, bound
to .ui widgets through their ``SlicerParameterName`` property.

Mechanics checked in Slicer's Base/Python/slicer/parameterNodeWrapper/ at v5.10.0:
- wrapper.py ``_processClass``: fields from ``typing.get_type_hints(cls, include_extras=True)``; the
  default is the class attribute; AddObserver/RemoveObserver/Modified forward to the parameter node.
- wrapper.py ``_connectGui``: with an object (``self.ui``), every attribute whose ``SlicerParameterName``
  property is set is bound; ``_checkParamName`` raises ValueError for a name that is no field.
- wrapper.py ``_connectParametersToGui``: each widget is written from the node at once and on every
  ModifiedEvent of the node; a widget change writes the node.
- wrapper.py ``_disconnectGui``: the GUI's callbacks are dropped; v5.12.0 also removes the node observer
  (v5.10.0 leaves it, but it then writes no widget), so the double removes it as 5.12 does.
- guiConnectors.py ``createGuiConnector``: a widget class that cannot represent the field's type is a
  RuntimeError; QComboBox + enum fills the items with ``label(member)`` (or the name).
"""
from __future__ import annotations

import enum
import typing

import vtk

import slicer


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def _split(hint):
    if typing.get_origin(hint) is typing.Annotated:
        return hint.__origin__, list(hint.__metadata__)
    return hint, []


def _isNodeType(kind):
    return isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode)


class _Field:
    def __init__(self, name, kind, annotations, default):
        self.name, self.kind, self.annotations, self.default = name, kind, annotations, default

    def read(self, node):
        if _isNodeType(self.kind):
            return node.GetNodeReference(self.name)
        if not node.GetParameter(self.name):
            return self.default
        text = node.GetParameter(self.name)
        if self.kind is bool:
            return text == "True"
        if issubclass(self.kind, enum.Enum):
            return self.kind(text)
        return self.kind(text)

    def write(self, node, value):
        if _isNodeType(self.kind):
            if value is not None and not isinstance(value, self.kind):
                raise TypeError(f"{self.name}: expected {self.kind.__name__}, got {type(value).__name__}")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            return
        if issubclass(self.kind, enum.Enum):
            value = self.kind(value).value
        for annotation in self.annotations:
            if isinstance(annotation, WithinRange) and not annotation.minimum <= value <= annotation.maximum:
                raise ValueError(f"{self.name}={value} is outside [{annotation.minimum}, {annotation.maximum}]")
        node.SetParameter(self.name, str(value))


class _Connector:
    """One widget <-> one field, as the matching guiConnectors.py class does."""

    def __init__(self, widget, field):
        self.widget, self.field = widget, field
        cls, kind = type(widget).__name__, field.kind
        if cls == "qMRMLNodeComboBox" and _isNodeType(kind):
            self.signal, self.get, self.set = widget.currentNodeChanged, widget.currentNode, widget.setCurrentNode
        elif cls == "QCheckBox" and kind is bool:
            self.signal = widget.toggled
            self.get, self.set = (lambda: widget.checked), (lambda v: setattr(widget, "checked", v))
        elif cls == "QDoubleSpinBox" and kind is float:
            for annotation in field.annotations:
                if isinstance(annotation, WithinRange):
                    widget.minimum, widget.maximum = annotation.minimum, annotation.maximum
            self.signal = widget.valueChanged
            self.get, self.set = (lambda: widget.value), (lambda v: setattr(widget, "value", v))
        elif cls == "QComboBox" and isinstance(kind, type) and issubclass(kind, enum.Enum):
            labelOf = getattr(kind, "label", lambda member: member.name)
            members = list(kind)
            widget.clear()
            for member in members:
                widget.addItem(labelOf(member))
            self.signal = widget.currentIndexChanged
            self.get = lambda: members[widget.currentIndex]
            self.set = lambda v: setattr(widget, "currentIndex", members.index(v))
        else:
            raise RuntimeError(f"Unable to create GUI connector from datatype '{kind}' to widget type '{cls}'")


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for name, hint in hints.items():
        kind, annotations = _split(hint)
        fields[name] = _Field(name, kind, annotations, getattr(cls, name, None))

    def makeProperty(field):
        return property(lambda self: field.read(self.parameterNode),
                        lambda self, value: field.write(self.parameterNode, value))

    for name, field in fields.items():
        setattr(cls, name, makeProperty(field))

    def __init__(self, parameterNode):
        if not parameterNode.IsA("vtkMRMLScriptedModuleNode"):
            raise TypeError("a parameter node wrapper wraps a vtkMRMLScriptedModuleNode")
        self.parameterNode = parameterNode
        self._guis = {}
        self._nextTag = 0

    def connectGui(self, gui):
        widgets = {}
        for widget in vars(gui).values():
            name = widget.property("SlicerParameterName")
            if name:
                if name not in fields:
                    raise ValueError(f"Cannot find a param with the given name: {name}")
                widgets[name] = widget
        connectors = {name: _Connector(widget, fields[name]) for name, widget in widgets.items()}
        updating = [False]

        def toGui(caller=None, event=None):
            if updating[0]:
                return
            updating[0] = True
            try:
                for name, connector in connectors.items():
                    connector.set(fields[name].read(self.parameterNode))
            finally:
                updating[0] = False

        def fromGui(name, connector):
            def changed(*args):
                if not updating[0]:
                    fields[name].write(self.parameterNode, connector.get())
            return changed

        for name, connector in connectors.items():
            connector.callback = fromGui(name, connector)
            connector.signal.connect(connector.callback)
        toGui()
        observer = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, toGui)
        tag = self._nextTag
        self._nextTag += 1
        self._guis[tag] = (connectors, observer)
        return tag

    def disconnectGui(self, tag):
        connectors, observer = self._guis.pop(tag, ({}, None))
        for connector in connectors.values():
            connector.signal.disconnect(connector.callback)
        if observer is not None:
            self.parameterNode.RemoveObserver(observer)

    cls.__init__ = __init__
    cls.allParameters = fields
    cls.connectGui = connectGui
    cls.disconnectGui = disconnectGui
    cls.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback, priority)
    cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    cls.Modified = lambda self: self.parameterNode.Modified()
    return cls
