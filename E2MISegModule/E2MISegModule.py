"""E2MISeg Slicer shell: module description, a thin widget and the self-test entry.

The logic lives in E2MISegModuleLib (it runs on slicer-core without the application and is tested there).
"""
import os
import time

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from E2MISegModuleLib.SlicerVersion import slicerIsSupported, unsupportedSlicerMessage  # imports nothing else

if not slicerIsSupported(slicer.app.majorVersion, slicer.app.minorVersion):  # before the imports that need it
    raise ImportError(unsupportedSlicerMessage(slicer.app.majorVersion, slicer.app.minorVersion))

from E2MISegModuleLib.EdgeWidget import EdgeWidget  # noqa: E402
from E2MISegModuleLib.Logic import E2MISegLogic  # noqa: E402


class E2MISegModule(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("E2MISeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.contributors = ["E2MISeg developers"]
        self.parent.helpText = _("""
Segment a volume with an E2MISeg (3D), EHANet (2D) or S²aNet (2.5D) model: pick the volume and the model,
click <b>Segment</b>, then correct edges in Segment Editor. Re-running updates only the model's own segments.
<p>Python console:</p>
<pre>logic = slicer.util.getModuleLogic("E2MISegModule")
seg = logic.process(volumeNode, model="e2miseg-hippocampus", quality="fast")</pre>
<p>Without the application (slicer-core): <code>E2MISegModuleLib.E2MISegLogic(scene).process(...)</code>.</p>""")
        self.parent.acknowledgementText = _("""
Networks from the E2MISeg, EHANet and S²aNet papers. Each model carries its own licence, shown when it is
selected; the bundled hippocampus model is trained on the Medical Segmentation Decathlon (CC-BY-SA 4.0).""")


class E2MISegModuleLogic(E2MISegLogic, ScriptedLoadableModuleLogic):
    """``E2MISegLogic`` on the application scene, plus the parameter node. E2MISegLogic comes first: Slicer's
    ScriptedLoadableModuleLogic.__init__ calls super().__init__() (Base/Python/slicer/ScriptedLoadableModule.py,
    v5.10.0, v5.12.0), which must reach object, not E2MISegLogic.__init__ (that needs the scene)."""

    def __init__(self):
        E2MISegLogic.__init__(self, slicer.mrmlScene, slicer.modules.segmentations.logic())
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        from E2MISegModuleLib.Parameters import E2MISegParameterNode

        return E2MISegParameterNode(super().getParameterNode())


class E2MISegModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.task = None
        self.shownDevice = None
        self.dependenciesMissing = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/E2MISegModule.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = E2MISegModuleLogic()
        self.logic.logCallback = self.appendLog
        self.edges = EdgeWidget(self.ui, self.logic, self.resourcePath("requirements.txt"))  # the Edges section
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.onPoll)
        self.ui.progressBar.hide()
        self.ui.segmentButton.clicked.connect(self.onSegmentButton)
        self.ui.modelSelector.currentIndexChanged.connect(self.onModelChanged)
        self.ui.importModelButton.clicked.connect(self.onImportModel)
        self.ui.show3DButton.toggled.connect(self.onShow3D)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.populateModels()

    def cleanup(self):
        self.cancelRun()
        self.removeObservers()
        self.edges.cleanup()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    # ---- models and devices ----------------------------------------------------------------

    def populateModels(self):
        wanted = self._parameterNode.model if self._parameterNode else ""
        wasBlocked = self.ui.modelSelector.blockSignals(True)  # clearing must not forget the chosen model
        self.ui.modelSelector.clear()
        names = []
        try:
            names = self.logic.availableModels()
            self.dependenciesMissing = False
        except ImportError:  # the model store reads checkpoints with torch: installed on the first Segment click
            self.dependenciesMissing = True
        except Exception as exc:  # a broken store must not stop the module from opening
            self.appendLog(_("Cannot list models: {error}").format(error=exc))
        for name in names:
            self.ui.modelSelector.addItem(name)
        self.ui.modelSelector.currentIndex = names.index(wanted) if wanted in names else (0 if names else -1)
        self.ui.modelSelector.blockSignals(wasBlocked)
        self.onModelChanged()

    def currentCard(self):
        name = self.ui.modelSelector.currentText
        return self.logic.modelCard(name)[1] if name else None

    def onModelChanged(self, index=None):
        name = self.ui.modelSelector.currentText
        if self._parameterNode and self._parameterNode.model != name:
            self._parameterNode.model = name
        self.ui.modelDescriptionLabel.text = _("Click Segment to install PyTorch and the Python packages E2MISeg "
                                               "needs; you are asked first.") if self.dependenciesMissing else ""
        channels = 1
        if name:
            try:
                card = self.currentCard()
            except Exception as exc:
                self.ui.modelDescriptionLabel.text = _("This model cannot be used: {error}").format(error=exc)
            else:
                channels = len(card["channels"])
                from E2MISegModuleLib.Parameters import showSettings

                showSettings(self._parameterNode, self.logic.modelDefaults(name))  # the model's own defaults
                self.ui.modelDescriptionLabel.text = _("{description}\nSegments: {labels}\nInputs: {channels}\n"
                                                       "Licence: {licence}").format(
                    description=card.get("description", ""), labels=", ".join(l["name"] for l in card["labels"]),
                    channels=", ".join(c["name"] for c in card["channels"]), licence=card["license"])
        for number in (1, 2, 3):
            getattr(self.ui, f"extraVolume{number}Label").visible = number < channels
            getattr(self.ui, f"extraVolume{number}Selector").visible = number < channels
        self.updateGUI()

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import an E2MISeg model"), "",
                                              _("E2MISeg model (*.safetensors)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the model. Choose an E2MISeg .safetensors file "
                                               "exported with e2miseg-train export."), waitCursor=True):
            name = self.logic.importModel(path)
            self._parameterNode.model = name
            self.populateModels()

    def updateDeviceLabel(self):
        self.shownDevice = self._parameterNode.device.value if self._parameterNode else "auto"
        try:
            self.ui.deviceLabel.text = _("running on {device}").format(
                device=self.logic.deviceDescription(self.shownDevice))
        except ImportError:
            self.ui.deviceLabel.text = _("PyTorch is not installed yet; Segment offers to install it")
        except Exception as exc:  # the chosen device does not exist on this computer
            self.ui.deviceLabel.text = _("not available: {reason}").format(reason=exc)

    # ---- running ---------------------------------------------------------------------------

    def updateGUI(self, caller=None, event=None):
        running = self.task is not None
        if self._parameterNode and self._parameterNode.device.value != self.shownDevice:
            self.updateDeviceLabel()
        ready = bool(self._parameterNode and self._parameterNode.inputVolume
                     and (self.ui.modelSelector.currentText or self.dependenciesMissing))
        self.ui.segmentButton.enabled = running or ready
        self.ui.segmentButton.text = _("Cancel") if running else _("Segment")
        self.ui.segmentButton.toolTip = _("Stop the run; the scene stays as it was.") if running else \
            _("Run the model on the input volume.") if ready else _("Select an input volume and a model first.")
        for widget in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = not running
        self.edges.updateGUI(self._parameterNode, running)

    def inputVolumes(self):
        card = self.currentCard()
        volumes = [self._parameterNode.inputVolume]
        volumes += [getattr(self._parameterNode, f"extraVolume{n}") for n in range(1, len(card["channels"]))]
        return volumes

    def onSegmentButton(self):
        if self.task is not None:
            self.cancelRun()
            return
        with slicer.util.tryWithErrorDisplay(_("Segmentation could not start."), waitCursor=True):
            from E2MISegModuleLib.Install import ensureDependencies

            ensureDependencies(self.resourcePath("requirements.txt"))
            if self.dependenciesMissing:
                self.populateModels()  # now that torch is there; the user checks the model and clicks again
                return
            self.updateDeviceLabel()
            params = self._parameterNode
            self.ui.logTextEdit.clear()
            self.task = self.logic.process(
                self.inputVolumes(), model=params.model, outputSegmentation=params.outputSegmentation,
                device=params.device.value, quality=params.quality.value, refineEdges=params.refineEdges,
                edgeStrength=params.edgeStrength, keepLargest=params.keepLargest, minIslandMm3=params.minIslandMm3,
                progressCallback=self.onProgress, waitForCompletion=False, **self.edges.runOptions())
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting...")
            self.timer.start()
            self.updateGUI()

    def onProgress(self, event):
        from E2MISegModuleLib.Parameters import progressText

        self.ui.progressBar.value = int(round(100 * event["fraction"]))
        self.ui.statusLabel.text = progressText(event)

    def onPoll(self):
        if self.task is None or not self.task.poll():
            return
        task, self.task = self.task, None
        self.timer.stop()
        self.ui.progressBar.hide()
        self.updateGUI()
        from e2miseg.errors import Cancelled

        if task.error is not None:
            cancelled = isinstance(task.error, Cancelled)
            self.ui.statusLabel.text = _("Cancelled. The scene was not changed.") if cancelled else \
                _("Failed. The scene was not changed.")
            if not cancelled:  # the engine's message names the fix (crop, fast, CPU, ...)
                slicer.util.errorDisplay(_("Segmentation failed.") + f"\n\n{task.error}")
            return
        if task.warning:  # empty, or volumes far outside the model's validation range: said, not a modal error
            self.ui.statusLabel.text = _("Done, but check the result: {warning}").format(
                warning=task.warning.removeprefix("warning: "))
        else:
            self.ui.statusLabel.text = _("Done. Correct the result in Segment Editor if needed.")
        # after exit() (the user opened another module) the result still goes into the module's parameter node
        parameterNode = self._parameterNode or self.logic.getParameterNode()
        parameterNode.outputSegmentation = task.segmentationNode
        self.edges.onSegmentationDone(task)
        self.showIn3D(task.segmentationNode, self.ui.show3DButton.checked)

    def cancelRun(self):
        if self.task is not None:
            self.task.cancel()  # kills the process tree; poll() then reports Cancelled, the scene unchanged
            while not self.task.poll():
                time.sleep(0.02)
            self.onPoll()

    def onShow3D(self, show):
        self.showIn3D(self._parameterNode.outputSegmentation if self._parameterNode else None, show)

    def showIn3D(self, segmentation, show):
        if segmentation is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not show the segmentation in 3D."), waitCursor=True):
            if show:
                segmentation.CreateClosedSurfaceRepresentation()
            else:
                segmentation.RemoveClosedSurfaceRepresentation()

    def appendLog(self, message):
        self.ui.logTextEdit.appendPlainText(message)


class E2MISegModuleTest(ScriptedLoadableModuleTest):
    """Runs the bundled model on the bundled sample inside Slicer (CPU, quality fast: seconds)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_BundledModelOnSample()

    def test_BundledModelOnSample(self):
        from E2MISegModuleLib.SelfTest import runBundledModelOnSample

        runBundledModelOnSample(self, os.path.join(os.path.dirname(__file__), "Resources"), E2MISegModuleLogic())
