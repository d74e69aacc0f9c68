"""Qt, CTK and MRML widget doubles: the attributes, signals and slots the E2MISeg widget uses, nothing more.

PythonQt exposes Qt properties as Python attributes (``label.text = ...``, ``button.enabled``) and
signals as objects with ``connect``; the doubles do the same, so the module's own code runs unchanged.
A widget tree is built from the real .ui file by ``QUiLoader`` (``slicer.util.loadUI`` calls it), and
an attribute the .ui's class does not have raises AttributeError instead of passing silently.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree


class Signal:
    def __init__(self):
        self.slots = []
        self.owner = None

    def connect(self, slot):
        self.slots.append(slot)

    def disconnect(self, slot=None):
        self.slots = [] if slot is None else [s for s in self.slots if s != slot]

    def emit(self, *args):
        if self.owner is not None and self.owner._signalsBlocked:
            return
        for slot in list(self.slots):
            slot(*args)


class QObject:
    SIGNALS: tuple = ()

    def __init__(self, name=""):
        object.__setattr__(self, "_signalsBlocked", False)
        self.name = name
        self._properties = {}
        self._children = []
        for signal in self.SIGNALS:
            s = Signal()
            s.owner = self
            object.__setattr__(self, signal, s)

    def __setattr__(self, key, value):
        # PythonQt: assigning a property the widget's class does not have is an error we want to see
        if self.__dict__.get("_frozen") and not key.startswith("_") and not hasattr(self, key):
            raise AttributeError(f"{type(self).__name__} '{self.name}' has no property '{key}'")
        object.__setattr__(self, key, value)

    def property(self, name):
        return self._properties.get(name)

    def setProperty(self, name, value):
        self._properties[name] = value

    def children(self):
        return list(self._children)

    def className(self):
        return type(self).__name__

    def blockSignals(self, block):
        previous = self._signalsBlocked
        object.__setattr__(self, "_signalsBlocked", bool(block))
        return previous

    def findChildren(self, _cls=None):
        found = []
        for child in self._children:
            found.append(child)
            found.extend(child.findChildren(_cls))
        return found


class QWidget(QObject):
    def __init__(self, name=""):
        super().__init__(name)
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self._layout = QVBoxLayout(self)

    def hide(self):
        self.visible = False

    def show(self):
        self.visible = True

    def layout(self):
        return self._layout

    def setLayout(self, layout):
        self._layout = layout

    def isWidgetType(self):
        return True


class QVBoxLayout:
    def __init__(self, parent=None):
        self.parent = parent

    def addWidget(self, widget):
        if self.parent is not None:
            self.parent._children.append(widget)

    def addStretch(self, *args):
        pass


class QLabel(QWidget):
    def __init__(self, name=""):
        super().__init__(name)
        self.text = ""


class QAbstractButton(QWidget):
    SIGNALS = ("clicked", "toggled")

    def __init__(self, name=""):
        super().__init__(name)
        self.text = ""
        self.checkable = False
        object.__setattr__(self, "_checked", False)

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        changed = bool(value) != self._checked
        object.__setattr__(self, "_checked", bool(value))
        if changed:
            self.toggled.emit(bool(value))

    def click(self):
        """A user's click: only an enabled button reacts (QAbstractButton::click)."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.clicked.emit()


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    def __init__(self, name=""):
        super().__init__(name)
        self.checkable = True


class ctkCollapsibleButton(QAbstractButton):
    def __init__(self, name=""):
        super().__init__(name)
        self.collapsed = False


class QComboBox(QWidget):
    SIGNALS = ("currentIndexChanged",)

    def __init__(self, name=""):
        super().__init__(name)
        object.__setattr__(self, "_items", [])
        object.__setattr__(self, "_index", -1)

    def addItem(self, text, data=None):
        self._items.append(text)
        if self._index < 0:
            self.currentIndex = 0

    def clear(self):
        self._items.clear()
        self.currentIndex = -1

    @property
    def count(self):
        return len(self._items)

    def itemText(self, index):
        return self._items[index]

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        index = index if -1 <= index < len(self._items) else -1
        if index != self._index:
            object.__setattr__(self, "_index", index)
            self.currentIndexChanged.emit(index)

    @property
    def currentText(self):
        return self._items[self._index] if self._index >= 0 else ""


class QDoubleSpinBox(QWidget):
    SIGNALS = ("valueChanged",)

    def __init__(self, name=""):
        super().__init__(name)
        self.minimum, self.maximum, self.singleStep, self.decimals, self.suffix = 0.0, 99.99, 1.0, 2, ""
        object.__setattr__(self, "_value", 0.0)

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        value = min(max(float(value), self.minimum), self.maximum)
        if value != self._value:
            object.__setattr__(self, "_value", value)
            self.valueChanged.emit(value)


class QProgressBar(QWidget):
    def __init__(self, name=""):
        super().__init__(name)
        self.value = 0


class QPlainTextEdit(QWidget):
    def __init__(self, name=""):
        super().__init__(name)
        self.readOnly = False
        self.lines = []

    def appendPlainText(self, text):
        self.lines.append(str(text))

    def clear(self):
        self.lines = []

    @property
    def plainText(self):
        return "\n".join(self.lines)


class qMRMLWidget(QWidget):
    SIGNALS = ("mrmlSceneChanged",)

    def __init__(self, name=""):
        super().__init__(name)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(qMRMLWidget):
    SIGNALS = ("mrmlSceneChanged", "currentNodeChanged")

    def __init__(self, name=""):
        super().__init__(name)
        self._node = None
        self.nodeTypes = []

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        if node is not None:
            if self._scene is None or node.GetScene() is not self._scene:
                raise AssertionError(f"{self.name}: a node combo box without the node's scene cannot show it")
            if not any(node.IsA(t) for t in self.nodeTypes):
                raise AssertionError(f"{self.name}: {node.GetClassName()} is not one of {self.nodeTypes}")
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)


class qMRMLSegmentsTableView(qMRMLWidget):
    def __init__(self, name=""):
        super().__init__(name)
        self._segmentation = None
        self.selectedIds = []

    def setSegmentationNode(self, node):
        self._segmentation = node

    def segmentationNode(self):
        return self._segmentation

    def selectedSegmentIDs(self):
        return list(self.selectedIds)


WIDGET_CLASSES = {cls.__name__: cls for cls in (QWidget, QLabel, QPushButton, QCheckBox, ctkCollapsibleButton,
                                                QComboBox, QDoubleSpinBox, QProgressBar, QPlainTextEdit, qMRMLWidget,
                                                qMRMLNodeComboBox, qMRMLSegmentsTableView)}


def _value(element):
    """A .ui <property> child as a Python value."""
    if element.tag == "string":
        return element.text or ""
    if element.tag == "bool":
        return element.text == "true"
    if element.tag == "number":
        return int(element.text)
    if element.tag == "double":
        return float(element.text)
    if element.tag == "stringlist":
        return [s.text for s in element.iter("string")]
    return None


# Properties set from the .ui as attributes (PythonQt property names); the rest only as Qt properties
UI_ATTRIBUTES = {"text", "checkable", "collapsed", "enabled", "wordWrap", "readOnly", "minimum", "maximum",
                 "singleStep", "decimals", "suffix", "value"}


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        return os.path.isfile(self.path)

    def open(self, mode):
        return self.exists()


class QUiLoader:
    """Builds the widget tree of a Qt Designer file; an unknown widget class is an error (Qt would fail too)."""

    def load(self, qfile):
        root = ElementTree.parse(qfile.path).getroot().find("widget")
        top = self._build(root)
        byName = {w.name: w for w in [top, *top.findChildren()]}
        for connection in ElementTree.parse(qfile.path).getroot().iter("connection"):
            sender, receiver = byName[connection.find("sender").text], byName[connection.find("receiver").text]
            signal = connection.find("signal").text.split("(")[0]
            slot = connection.find("slot").text.split("(")[0]
            getattr(sender, signal).connect(getattr(receiver, slot))
        return top

    def _build(self, element):
        className = element.get("class")
        if className not in WIDGET_CLASSES:
            raise AssertionError(f"the Qt double has no widget class {className} (used by {element.get('name')})")
        widget = WIDGET_CLASSES[className](element.get("name"))
        for prop in element.findall("property"):
            value = _value(prop[0]) if len(prop) else None
            if prop.get("name") in UI_ATTRIBUTES:
                setattr(widget, prop.get("name"), value)
            else:
                widget.setProperty(prop.get("name"), value)
        if className == "qMRMLNodeComboBox":
            widget.nodeTypes = widget.property("nodeTypes") or []
        for child in self._childWidgets(element):
            widget._children.append(self._build(child))
        widget._frozen = True
        return widget

    @staticmethod
    def _childWidgets(element):
        """Direct widget children, looking through layouts and layout items."""
        found = []
        for child in element:
            if child.tag == "widget":
                found.append(child)
            elif child.tag in ("layout", "item"):
                found.extend(QUiLoader._childWidgets(child))
        return found
