"""The E2MISeg logic: volume nodes in, an editable segmentation node out. No Qt, no dialogs.

>>> logic = E2MISegLogic(slicer.mrmlScene)          # or any vtkMRMLScene (slicer-core)
>>> segmentationNode = logic.process(volumeNode, model="e2miseg-hippocampus", quality="fast")
>>> task = logic.process(volumeNode, model="e2miseg-hippocampus", waitForCompletion=False)
>>> while not task.poll(): ...                      # the widget polls from a qt.QTimer
>>> task.segmentationNode, task.error, task.warning   # warning: one line when the result looks implausible
>>> logic.process(volumeNode, model="e2miseg-hippocampus", uncertainty=True)  # + the network's uncertainty map
>>> logic.edgeLogic.regions                        # its ranked uncertain edges (EdgeRefineLogic)
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import SimpleITK as sitk
import slicer

from e2miseg.errors import E2MISegError, InputImageError
from e2miseg.settings import DEVICES, QUALITIES, Settings
from e2miseg.settings import resolve as resolveSettings

from .InferenceRunner import (InProcessRunner, SubprocessRunner, cliOptionStrings, progressEvent, pythonExecutable,
                              subprocessEnvironment)
from .SegmentationImport import importLabelImage, placeBesideInput, volumeNodeToImage

QUALITY_OPTIONS = QUALITIES
SETTING_NAMES = {spec.name for spec in dataclasses.fields(Settings)}
ProgressCallback = Callable[[dict], None]
UNCERTAINTY_FILE = "uncertainty.nrrd"


def describeSettings(settings: Settings) -> str:
    """'quality normal, keep largest on, islands < 0 mm³, edge refinement off' for the log."""
    edges = f"{settings.edge_method} {settings.edge_strength:g}" if settings.refine_edges else "off"
    return (f"quality {settings.quality}, keep largest {'on' if settings.keep_largest else 'off'}, "
            f"islands < {settings.min_island_mm3:g} mm³ removed, edge refinement {edges}")


class SegmentationTask:
    """One run of the engine. Call ``poll()`` from the main thread until it returns True.

    Afterwards ``segmentationNode`` is the result, or ``error`` says why there is none
    (``e2miseg.errors.Cancelled`` after ``cancel()``); in that case the scene was not changed.
    ``warning`` is one line when the result looks wrong (no segment has a voxel, or a segment's volume is
    far outside the range the model card recorded on validation), else None: the segmentation is still
    created, but such a result must not pass as an ordinary success.
    """

    def __init__(self, logic: "E2MISegLogic", runner, card: dict, inputVolume, outputSegmentation,
                 progressCallback: Optional[ProgressCallback], tempDir: Optional[str], uncertaintyVolume=None):
        self.logic = logic
        self.runner = runner
        self.card = card
        self.inputVolume = inputVolume
        self.outputSegmentation = outputSegmentation
        self.progressCallback = progressCallback
        self.tempDir = tempDir
        self.segmentationNode = None
        # with process(uncertainty=True): the node the engine's map goes into (reused when given)
        self.uncertaintyVolume = uncertaintyVolume
        self.uncertaintyRequested = False
        self.error: Optional[BaseException] = None
        self.warning: Optional[str] = None
        self.finished = False
        self.startTime = time.perf_counter()

    def _report(self, event: dict) -> None:
        if self.progressCallback is None:
            return
        try:
            self.progressCallback(event)
        except Exception as exc:  # a failing callback must not leave the engine running unattended
            self.error = self.error or exc
            self.runner.cancel()

    def poll(self) -> bool:
        """Forward new progress; import the result when the engine is done. True once finished."""
        if self.finished:
            return True
        for event in self.runner.poll():
            self._report(event)
        if not self.runner.finished:
            return False
        try:
            if self.error is None:
                result = self.runner.result()
                result, probabilities = result if isinstance(result, tuple) else (result, None)
                labelImage = result if isinstance(result, sitk.Image) else sitk.ReadImage(str(result))
                warning = self.logic.plausibilityWarning(labelImage, self.card)  # before the scene changes
                self._report(progressEvent("import", 0, 1))
                self.segmentationNode = self.logic._importResult(labelImage, self.card, self.inputVolume,
                                                                 self.outputSegmentation)
                if self.uncertaintyRequested:
                    self.uncertaintyVolume = self.logic._loadRunUncertainty(self, labelImage, probabilities)
                self.warning = warning
                self._report(progressEvent("import", 1, 1))
                self.logic.log(f"Segmented '{self.inputVolume.GetName()}' with {self.card['name']} "
                               f"in {time.perf_counter() - self.startTime:.1f} s")
                if self.warning and not isinstance(self.runner, SubprocessRunner):  # the engine's stderr line is logged already
                    self.logic.log(self.warning)
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished = True
            if self.tempDir:
                shutil.rmtree(self.tempDir, ignore_errors=True)
            if self.logic.activeTask is self:
                self.logic.activeTask = None
        return True

    def cancel(self) -> None:
        """Stop the engine (the whole process tree in subprocess mode); the scene stays as it was."""
        if not self.finished:
            self.runner.cancel()

    def wait(self, interval: float = 0.05):
        """Block until finished; return the segmentation node or raise the run's error."""
        while not self.poll():
            time.sleep(interval)
        if self.error is not None:
            raise self.error
        return self.segmentationNode


class E2MISegLogic:
    """Runs E2MISeg models on volume nodes of ``scene`` and turns the result into segments.

    Never shows dialogs: errors are raised (``E2MISegError`` subclasses carry a message that names
    the fix), progress goes to ``progressCallback`` and messages to ``logCallback``.
    """

    def __init__(self, scene, segmentationsLogic=None):
        self.scene = scene
        if segmentationsLogic is None:
            # On slicer-core the segment converters are only registered by a logic bound to the scene
            segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
            segmentationsLogic.SetMRMLScene(scene)
        self.segmentationsLogic = segmentationsLogic
        self.logCallback: Callable[[str], None] = logging.info
        self.activeTask: Optional[SegmentationTask] = None
        self._cards: dict[tuple[str, int], tuple[Path, dict]] = {}
        self._loadedModel: Optional[tuple[tuple[str, str], Any]] = None
        self._lastRun: Optional[tuple[Any, bool, Any]] = None
        self._edgeLogic = None
        self._refiner: Optional[tuple[tuple[str, int], Any]] = None

    def modelRefiner(self, model: Union[str, os.PathLike, None]):
        """The learned boundary refiner of ``model`` (None when it has none or no model is given), loaded once
        per file version. A tampered refiner part raises ``CheckpointError`` (one line naming the fix)."""
        if not model:
            return None
        path, card = self.modelCard(model)
        if not card.get("refiner"):
            return None
        key = (str(path.resolve()), path.stat().st_mtime_ns)
        if self._refiner is None or self._refiner[0] != key:
            from e2miseg.refiner_part import read_refiner  # torch: only for models that carry a refiner

            self._refiner = (key, read_refiner(path))
        return self._refiner[1]

    @property
    def edgeLogic(self):
        """Edge refinement, the uncertainty overlay and "next uncertain edge" (``EdgeRefineLogic``) for this scene."""
        if self._edgeLogic is None:
            from .EdgeRefineLogic import EdgeRefineLogic  # needs scipy: only once the engine's packages are there

            self._edgeLogic = EdgeRefineLogic(self.segmentationsLogic)
        return self._edgeLogic

    def log(self, message: str) -> None:
        if self.logCallback is not None:
            self.logCallback(message)

    # ---- models and devices -------------------------------------------------------------

    @staticmethod
    def availableModels() -> list[str]:
        """Names of the models in the store (user folder first, then the ones bundled with the extension)."""
        from e2miseg.store import list_models

        return [model.name for model in list_models()]

    def modelCard(self, model: Union[str, os.PathLike]) -> tuple[Path, dict]:
        """The checkpoint path and model card of a store name or file (checksum verified).

        Reads only the file's header: no weights in Slicer's memory and no torch import for a description.
        """
        from e2miseg.checkpoint import read_card
        from e2miseg.store import resolve

        stored = resolve(model)
        key = (str(stored.path.resolve()), stored.path.stat().st_mtime_ns)
        if key not in self._cards:
            self._cards[key] = (stored.path, read_card(stored.path))
        return self._cards[key]

    def modelDefaults(self, model: Union[str, os.PathLike]) -> Settings:
        """What a run of ``model`` with no options uses (the card's defaults over the engine's): the
        widget shows these in its controls when the model is selected."""
        return self.resolvedSettings(self.modelCard(model)[1], None)

    @staticmethod
    def resolvedSettings(card: dict, explicit: Optional[Settings]) -> Settings:
        """``explicit`` over the card's defaults over the engine's: the engine's own resolver."""
        return resolveSettings(explicit, card)

    @staticmethod
    def importModel(path: Union[str, os.PathLike]) -> str:
        """Copy a checkpoint into the user's model store; return its name."""
        from e2miseg.store import import_model

        return import_model(path).name

    @staticmethod
    def deviceDescription(device: str = "auto") -> str:
        """What ``device`` resolves to on this computer, e.g. 'CPU' or 'CUDA (NVIDIA RTX 4090)'."""
        from e2miseg.inference import resolve_device

        resolved = resolve_device(device)
        if resolved.type == "cuda":
            import torch

            return f"CUDA ({torch.cuda.get_device_name(resolved)})"
        return {"mps": "Apple MPS", "cpu": "CPU"}.get(resolved.type, resolved.type)

    @staticmethod
    def engineAccepts(keyword: str, flag: str, inProcess: bool = False) -> bool:
        """Whether the installed engine takes ``keyword`` (``e2miseg.predict``) / ``flag`` (``e2miseg predict``)."""
        if inProcess:
            from e2miseg import api

            return keyword in inspect.signature(api.predict).parameters or keyword in SETTING_NAMES
        return flag in cliOptionStrings()

    @classmethod
    def engineSupportsEdgeRefinement(cls, inProcess: bool = False) -> bool:
        """Edge refinement is a separate engine stage (issue 6); older engines do not have it."""
        return cls.engineAccepts("refine_edges", "--refine-edges", inProcess)

    # ---- running ------------------------------------------------------------------------

    def process(self, inputVolumes, model: Union[str, os.PathLike], outputSegmentation=None, settings: Optional[Settings] = None,
                progressCallback: Optional[ProgressCallback] = None, waitForCompletion: bool = True, inProcess: bool = False,
                uncertainty: bool = False, uncertaintyVolume=None, **options):
        """Segment ``inputVolumes`` with ``model``; return the segmentation node.

        How it segments is an ``e2miseg.settings.Settings``: pass one as ``settings``, or its fields as
        keywords in camelCase (they win over ``settings``): ``device`` (auto, cpu, cuda, cuda:N, mps),
        ``quality`` (fast, normal, normal+tta), ``keepLargest``, ``minIslandMm3``, ``refineEdges``,
        ``edgeMethod``, ``edgeStrength``, ``step``, ``runtime``, ``precision``. What is not given comes
        from the model card's defaults, then the engine's, decided by the engine exactly as for
        ``e2miseg predict``: with no options the labels are the command line's, voxel for voxel.

        :param inputVolumes: a scalar volume node, or one per model channel (all on one grid).
        :param model: a model store name (see ``availableModels()``) or a ``.safetensors`` file.
        :param outputSegmentation: a segmentation node to update (only the model's own segments are
            replaced; the user's segments and edits elsewhere are kept), or None for a new node
            placed beside the input volume in the subject hierarchy.
        :param uncertainty: also import the boundary uncertainty of the network's probabilities into a
            volume node (``uncertaintyVolume`` when given, else a new one; ``task.uncertaintyVolume``) with
            its own colour table, and its ranked regions into ``self.edgeLogic`` ("next uncertain edge").
        :param progressCallback: called on the calling thread with dicts
            {stage, done, total, eta_s, message, fraction}.
        :param waitForCompletion: False returns a ``SegmentationTask`` at once; call its ``poll()``
            (e.g. from a timer) until True, then read ``segmentationNode`` / ``error``.
        :param inProcess: run ``e2miseg.predict`` in this process on a worker thread instead of a subprocess.
        :raises e2miseg.errors.E2MISegError: bad input, bad model, engine failure; ``Cancelled`` after cancel();
            ``e2miseg.settings.SettingsError`` (also a ``ValueError``) for a setting outside its range.
        """
        if self.activeTask is not None and not self.activeTask.finished:
            raise E2MISegError("a segmentation is already running; wait for it or cancel it first")
        explicit = Settings.from_options(**options).over(settings or Settings())  # range errors before anything runs
        volumes = self._checkInputs(inputVolumes, outputSegmentation)
        modelPath, card = self.modelCard(model)
        if len(volumes) != len(card["channels"]):
            wanted = ", ".join(channel["name"] for channel in card["channels"])
            raise InputImageError(f"model '{card['name']}' needs {len(card['channels'])} input volume(s) ({wanted}) "
                                  f"but {len(volumes)} were given; select one volume per channel")
        wantProbabilities = bool(uncertainty)
        device = explicit.device or "auto"
        resolved = self.resolvedSettings(card, explicit)
        options = explicit  # the engine resolves the rest against the same card: one resolver
        self.log(f"Segmenting '{volumes[0].GetName()}' with {card['name']} {card['version']} "
                 f"(device {device}, {describeSettings(resolved)}, {'in-process' if inProcess else 'subprocess'})")
        # files: the engine's input and output (subprocess) and the uncertainty map (both ways)
        tempDir = tempfile.mkdtemp(prefix="e2miseg-") if not inProcess or wantProbabilities else None
        try:
            if inProcess:
                # the model is loaded on ``device`` by the loader; predict keeps it there
                runner = InProcessRunner([volumeNodeToImage(v) for v in volumes], self._modelLoader(modelPath, device),
                                         {"settings": options.replace(device=None), "return_probabilities": wantProbabilities})
            else:
                runner = SubprocessRunner(self._command(volumes, modelPath, options, Path(tempDir), wantProbabilities),
                                          subprocessEnvironment(), self.log)
        except BaseException:
            shutil.rmtree(tempDir or "", ignore_errors=True)
            raise
        task = SegmentationTask(self, runner, card, volumes[0], outputSegmentation, progressCallback, tempDir,
                                uncertaintyVolume)
        task.uncertaintyRequested = wantProbabilities
        self.activeTask = task
        try:
            runner.start()
        except OSError as exc:
            task.finished = True
            self.activeTask = None
            shutil.rmtree(tempDir or "", ignore_errors=True)
            raise E2MISegError(f"could not start the segmentation engine ({exc}); reinstall the E2MISeg extension") from None
        if not waitForCompletion:
            return task
        try:
            return task.wait()
        except KeyboardInterrupt:
            task.cancel()
            task.wait()
            raise

    def cancel(self) -> None:
        """Cancel the running segmentation, if any (kills the engine's whole process tree)."""
        if self.activeTask is not None:
            self.activeTask.cancel()

    def _checkInputs(self, inputVolumes, outputSegmentation) -> list:
        volumes = list(inputVolumes) if isinstance(inputVolumes, (list, tuple)) else [inputVolumes]
        if not volumes or volumes[0] is None:
            raise InputImageError("no input volume given; select the volume to segment")
        if any(v is None for v in volumes):
            raise InputImageError(f"input channel {[v is None for v in volumes].index(True) + 1} is not selected; "
                                  f"select one volume per model channel")
        for volume in volumes:
            if not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode"):
                raise InputImageError(f"'{volume.GetName()}' is a {volume.GetClassName()}, not an image volume; "
                                      f"select a scalar volume")
            if volume.GetImageData() is None:
                raise InputImageError(f"volume '{volume.GetName()}' has no image data; load an image into it first")
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise E2MISegError(f"'{outputSegmentation.GetName()}' is not a segmentation node; "
                               f"select a segmentation or none to create one")
        return volumes

    def _command(self, volumes: list, modelPath: Path, settings: Settings, tempDir: Path, wantProbabilities: bool) -> list[str]:
        inputs = []
        for index, volume in enumerate(volumes):
            path = tempDir / f"channel{index}.nrrd"
            sitk.WriteImage(volumeNodeToImage(volume), str(path))  # exact geometry, LPS as files expect
            inputs.append(str(path))
        command = [pythonExecutable(), "-m", "e2miseg.cli", "predict", *inputs, "-o", str(tempDir / "labels.nrrd"),
                   "--model", str(modelPath), "--json-progress", *settings.to_cli()]
        if wantProbabilities:
            command += ["--uncertainty", str(tempDir / UNCERTAINTY_FILE)]
        return command

    def _modelLoader(self, modelPath: Path, device: str) -> Callable[[], Any]:
        def load():
            from e2miseg.api import load_model

            key = (str(modelPath), device)
            if self._loadedModel is None or self._loadedModel[0] != key:
                self._loadedModel = None  # one model in memory at a time
                self._loadedModel = (key, load_model(modelPath, device))
            return self._loadedModel[1]

        return load

    # ---- results ------------------------------------------------------------------------

    @staticmethod
    def plausibilityWarning(labelImage: sitk.Image, card: dict) -> Optional[str]:
        """The engine's one-line verdict on a result (``e2miseg.plausibility``): empty, or a label volume far
        outside the card's validation range; None when it looks ordinary. The same check as the CLI's."""
        from e2miseg.plausibility import plausibility_warning

        return plausibility_warning(labelImage, card)

    def _importResult(self, labelImage: sitk.Image, card: dict, inputVolume, outputSegmentation):
        """Label map -> segments. On any failure the scene is put back exactly as it was."""
        if inputVolume.GetScene() is not self.scene:
            raise E2MISegError(f"the input volume '{inputVolume.GetName()}' was removed while segmenting; "
                               f"load it again and run again")
        if outputSegmentation is not None and outputSegmentation.GetScene() is not self.scene:
            raise E2MISegError(f"the segmentation '{outputSegmentation.GetName()}' was removed while segmenting; "
                               f"choose another output (or none) and run again")
        created = outputSegmentation is None
        if created:
            self.scene.SaveStateForUndo()
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{inputVolume.GetName()} {card['name']}")
            backup = None
        else:
            node = outputSegmentation
            node.SetUndoEnabled(True)  # so the scene's undo (when enabled) restores the segments
            self.scene.SaveStateForUndo()
            backup = slicer.vtkSegmentation()
            backup.DeepCopy(node.GetSegmentation())
        try:
            if created:
                node.CreateDefaultDisplayNodes()
                node.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
                node.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            elif not node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()):
                node.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
            importLabelImage(labelImage, card, node, inputVolume)
            if created:
                placeBesideInput(self.scene, node, inputVolume)
        except BaseException:
            self._restore(node, created, backup)
            raise
        self._lastRun = (node, created, backup)
        return node

    def _loadRunUncertainty(self, task: SegmentationTask, labelImage: sitk.Image, probabilities):
        """The run's uncertainty map (written by the engine, or from the in-process probabilities) as a volume node.

        A map that cannot be loaded is logged, not raised: the segments are already in the scene.
        """
        path = Path(task.tempDir) / UNCERTAINTY_FILE
        try:
            if probabilities is not None:
                from e2miseg.edges.uncertainty import write_prediction_uncertainty

                write_prediction_uncertainty(probabilities, labelImage, path)
            node, regions = self.edgeLogic.loadUncertainty(self.scene, str(path), task.uncertaintyVolume)
        except Exception as exc:
            self.log(f"The uncertainty map could not be loaded ({exc}); the segmentation is complete without it.")
            return task.uncertaintyVolume
        node.SetName(f"{task.segmentationNode.GetName()} uncertainty")
        self.log(f"Uncertainty map: {len(regions)} uncertain edge region(s) to review")
        return node

    def _restore(self, node, created: bool, backup) -> None:
        if created:
            shNode = self.scene.GetSubjectHierarchyNode()
            if shNode is not None and shNode.GetItemByDataNode(node):
                shNode.RemoveItem(shNode.GetItemByDataNode(node), False, False)
            for index in range(node.GetNumberOfDisplayNodes()):
                self.scene.RemoveNode(node.GetNthDisplayNode(index))
            self.scene.RemoveNode(node)
        else:
            node.GetSegmentation().DeepCopy(backup)

    def undoLastRun(self) -> bool:
        """Put the last run's segmentation back as it was before (remove it if the run created it)."""
        if self._lastRun is None:
            return False
        node, created, backup = self._lastRun
        self._lastRun = None
        if node.GetScene() is not self.scene:
            return False  # the node was deleted or the scene closed since
        self._restore(node, created, backup)
        return True

    # ---- scripting helpers (work without the Slicer application) ---------------------------

    def loadVolume(self, path: Union[str, os.PathLike], name: Optional[str] = None):
        """Read an image file into a new scalar volume node (inside Slicer, slicer.util.loadVolume does more)."""
        path = Path(path)
        if not path.is_file():
            raise InputImageError(f"{path} does not exist; check the path")
        from e2miseg.io import check_complete

        check_complete(path)  # Slicer's reader fills a truncated NIfTI with garbage instead of failing
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or path.name.split(".")[0])
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            self.scene.RemoveNode(node)
            raise InputImageError(f"{path.name} cannot be read as a volume; the file may be truncated or not an image")
        return node

    def saveSegmentation(self, segmentationNode, path: Union[str, os.PathLike]) -> None:
        """Write a segmentation node to a .seg.nrrd file (names, colours, terminology, geometry)."""
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        if not storage.WriteData(segmentationNode):
            raise E2MISegError(f"could not write {path}; check the folder exists and is writable")

