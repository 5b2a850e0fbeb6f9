"""Everything a registration does to a Slicer scene, Qt-free: one implementation for every front-end.

:class:`RegistrationSceneLogic` reads the inputs from MRML nodes (volumes, label maps, segmentations, the
moving volume's parent transforms), runs a :class:`~RLRegistrationLib.session.RegistrationSession` on the
worker thread of :mod:`RLRegistrationLib.slicer_bridge`, and keeps the output nodes up to date on the
calling (main) thread: the transform hierarchy of the result, the warped volume, the overlays and their
colours, the slice view layers and the field display; apply / harden / save; cleanup on cancel, on error
and when the scene closes. It needs Slicer's MRML classes (inside Slicer, or the ``slicer-core`` wheel
outside it) and never Qt: the Slicer panel (``RLRegistration.py``) and the browser app drive it.

**Transform hierarchy.** The result ``T(x) = A(x + u(x))`` (fixed point -> moving point, DESIGN.md §3) is
two nodes, both tagged with the fixed and moving volumes::

    output parent (optional) <- outputTransform (grid: x + u(x)) <- outputLinearTransform (linear: A)
                                                                      <- moving volume (after "apply")

A node's "transform from parent" maps parent coordinates to its own, so a world point ``x`` reaches the
moving volume's coordinates as ``A(x + u(x))``. The grid node, nearest to the world, is what the field
display shows: the deformable refinement alone, not the pre-alignment. Harden and the ``.h5`` give the same
``T``. The pre-alignment includes the moving volume's own parent transform when it initialized the run.

``params`` is the Slicer panel's parameter node or a :class:`~RLRegistrationMRML.parameters.RegistrationParameters`.
Errors a user can cause raise ``ValueError``/``RuntimeError`` with a message meant for the panel.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import slicer
import slicer.util
import vtk
from slicer import vtkMRMLDisplayableNode

from RLRegistrationLib.registration.quality import QUALITY_PRESETS

from .colors import ensure_color_table
from .parameters import OVERLAY_VOLUMES, PREVIOUS_PARENT_ATTRIBUTE, SESSION_INITIALIZATION


def _nodeName(role: str, node) -> str:
    return f"{role} '{node.GetName()}'" if node is not None else role


def runSpec(params, steps: int | None = None):
    """The ``RunSpec`` of a panel's parameters (the Slicer parameter node or ``RegistrationParameters``):
    iterations and regularization only for policies that take them, samples only for policies that sample,
    the panel's "parent" initialization as the session's "none" (the parent transform is its initial
    transform)."""
    from RLRegistrationLib.policies.registry import policy_option_defaults, policy_supports_sampling
    from RLRegistrationLib.registration.run_spec import RunSpec

    takes = policy_option_defaults(params.policy)
    return RunSpec(
        policy=params.policy,
        quality=getattr(params, "quality", "standard"),
        steps=steps,
        iterations=params.iterations if "iterations" in takes else None,
        regularization=params.regularization if "regularization" in takes else None,
        initialization=SESSION_INITIALIZATION[params.initialization],
        device=params.device,
        samples=params.samples if policy_supports_sampling(params.policy) else 1,
    )


class RunUpdate:
    """What one poll of the worker brought (see :meth:`RegistrationSceneLogic.processMessages`)."""

    def __init__(self):
        self.reports = []
        self.finished = False
        self.cancelled = False
        self.stepsDone = 0
        self.error = ""
        self.outOfMemory = False
        self.details = ""
        self.framePosted = None  # monotonic time the worker posted the frame shown (None: no frame)


class RegistrationSceneLogic:
    """Runs registrations on a worker thread and keeps the output nodes of ``scene`` up to date.

    All methods run on the thread that owns the scene (Slicer's main thread). ``runBlocking(params, steps)``
    registers and returns the step reports, for scripts and tests.
    """

    def __init__(self, scene=None) -> None:
        self._scene = scene
        self.session = None
        self.plan = None
        self.worker = None
        self.movingImage = None
        self.createdNodeIDs = []
        self.fullResolutionStep = None
        self.displayedStep = None
        self.deviceDescription = ""
        self._fixedImage = None
        self._pendingFinal = None
        self._layersPending = False
        self._closeObservers = []
        self.weightMapRangeText = "—"
        self.uncertaintyRangeText = "—"
        self.magnitudeRangeText = "—"

    @property
    def scene(self):
        """The scene the logic works on (Slicer's own scene unless one was given)."""
        return self._scene if self._scene is not None else slicer.mrmlScene

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def volumeToImage(volumeNode):
        """The node's voxels and geometry (its own coordinates, parent transforms not applied) as SimpleITK.

        Goes through the node's IJK-to-RAS matrix, so volumes that MRML re-indexed on loading stay exact.
        """
        from RLRegistrationLib.io import slicer_arrays

        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        return slicer_arrays.image_from_slicer_arrays(
            slicer.util.arrayFromVolume(volumeNode), slicer.util.arrayFromVTKMatrix(ijkToRas)
        )

    def labelImages(self, params):
        """(fixed labels, moving labels) as SimpleITK images on their volumes' grids, or (None, None)."""
        from RLRegistrationLib.frontends import display
        from RLRegistrationLib.io import slicer_arrays

        fixedLabels = params.fixedLabels
        movingLabels = params.movingLabels
        if not fixedLabels or not movingLabels:
            return None, None
        fixedIsSegmentation = fixedLabels.IsA("vtkMRMLSegmentationNode")
        if fixedIsSegmentation != movingLabels.IsA("vtkMRMLSegmentationNode"):
            raise ValueError("Select two label maps or two segmentations for Dice, not one of each.")
        names = None
        if fixedIsSegmentation:
            names = display.match_segment_names(
                self._segmentNames(fixedLabels), self._segmentNames(movingLabels)
            )
            if not names:
                raise ValueError(
                    f"The segmentations '{fixedLabels.GetName()}' and '{movingLabels.GetName()}' have no "
                    "segment name in common: Dice cannot be computed."
                )
        fixed = self._labelsToImage(fixedLabels, params.fixedVolume, names)
        moving = self._labelsToImage(movingLabels, params.movingVolume, names)
        return (
            slicer_arrays.labels_on_image_grid(fixed, self._fixedImage),
            slicer_arrays.labels_on_image_grid(moving, self.movingImage),
        )

    @staticmethod
    def _segmentNames(segmentationNode):
        segmentation = segmentationNode.GetSegmentation()
        return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]

    def _labelsToImage(self, labelsNode, referenceVolume, segmentNames):
        """A label map volume (on its volume's geometry); a segmentation exported on the volume's grid."""
        if labelsNode.IsA("vtkMRMLSegmentationNode"):
            return self._segmentationToImage(labelsNode, referenceVolume, segmentNames)
        self._checkSameGeometry(labelsNode, referenceVolume)
        return self.volumeToImage(labelsNode)

    @staticmethod
    def _checkSameGeometry(labelsNode, volumeNode) -> None:
        """A label map must lie on its volume's voxel grid (else its Dice would describe other voxels)."""
        matrices = []
        for node in (labelsNode, volumeNode):
            matrix = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(matrix)
            matrices.append(slicer.util.arrayFromVTKMatrix(matrix))
        labelsShape = slicer.util.arrayFromVolume(labelsNode).shape
        volumeShape = slicer.util.arrayFromVolume(volumeNode).shape
        if labelsShape != volumeShape or not np.allclose(matrices[0], matrices[1], atol=1e-4):
            raise ValueError(
                f"The label map '{labelsNode.GetName()}' has another geometry than its volume "
                f"'{volumeNode.GetName()}' (voxels {labelsShape[::-1]} vs {volumeShape[::-1]}, or another "
                "origin, spacing or direction): resample it onto the volume first."
            )

    def _segmentationToImage(self, labelsNode, referenceVolume, segmentNames):
        segmentation = labelsNode.GetSegmentation()
        segmentIds = vtk.vtkStringArray()
        for name in segmentNames:  # label value i + 1 for the i-th common name, in both segmentations
            segmentIds.InsertNextValue(segmentation.GetSegmentIdBySegmentName(name))
        labelmap = self.scene.AddNewNodeByClass(
            "vtkMRMLLabelMapVolumeNode", "RLRegistration temporary labels"
        )
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                labelsNode, segmentIds, labelmap, referenceVolume
            ):
                raise RuntimeError(f"Could not export segmentation '{labelsNode.GetName()}' to a label map.")
            return self.volumeToImage(labelmap)
        finally:
            self.scene.RemoveNode(labelmap)

    def _ownTransformIDs(self, params) -> set:
        return {node.GetID() for node in (params.outputTransform, params.outputLinearTransform) if node}

    def parentToWorld(self, node, params):
        """4x4 RAS "to world" matrix of ``node``'s parent transforms, or None when it has none.

        When the node sits under this module's own result (applied earlier), the parent it had before is
        used: the previous result is being replaced, not composed with itself.
        """
        parent = node.GetParentTransformNode()
        if parent is not None and parent.GetID() in self._ownTransformIDs(params):
            previousID = node.GetAttribute(PREVIOUS_PARENT_ATTRIBUTE)
            if previousID is None:  # not applied by this module: assume the output transform's own parent
                parent = params.outputTransform.GetParentTransformNode() if params.outputTransform else None
            else:  # "" = it had no parent
                parent = self.scene.GetNodeByID(previousID) if previousID else None
        if parent is None:
            return None
        if not parent.IsTransformToWorldLinear():
            raise ValueError(
                f"'{node.GetName()}' is under a non-linear transform ('{parent.GetName()}'). Harden it or "
                "choose initialization 'None'."
            )
        matrix = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def maskImages(self, params):
        """(fixed mask, moving mask) as SimpleITK label images (non-zero = inside), each None when not set.

        A label map is taken as it is (the core resamples one on another grid onto its image, saying so); a
        segmentation is exported, all its segments, onto its volume's grid."""
        images = []
        for maskNode, volumeNode in (
            (params.fixedMask, params.fixedVolume),
            (params.movingMask, params.movingVolume),
        ):
            if maskNode is None:
                images.append(None)
            elif maskNode.IsA("vtkMRMLSegmentationNode"):
                images.append(self._segmentationToImage(maskNode, volumeNode, self._segmentNames(maskNode)))
            else:
                images.append(self.volumeToImage(maskNode))
        return tuple(images)

    def initialTransform(self, params):
        """(initial fixed -> moving transform in LPS or None, run a pre-alignment stage?) for the chosen mode."""
        from RLRegistrationLib.io import slicer_arrays

        if params.initialization == "none":
            return None, False
        movingToWorld = self.parentToWorld(params.movingVolume, params)
        fixedToWorld = self.parentToWorld(params.fixedVolume, params)
        initial = slicer_arrays.initial_transform_from_parents(movingToWorld, fixedToWorld)
        return initial, params.initialization in ("affine", "rigid")

    def resultParentTransform(self, params):
        """Where the output nodes go: the chosen parent, else the fixed volume's parent (same world)."""
        parent = params.outputParentTransform or params.fixedVolume.GetParentTransformNode()
        if parent is not None and parent.GetID() in self._ownTransformIDs(params):
            raise ValueError("The output transform cannot be its own parent.")
        return parent

    def checkInputs(self, params) -> None:
        """Raise ValueError naming the problem when the inputs cannot be registered (nothing is created)."""
        if not params.fixedVolume or not params.movingVolume:
            raise ValueError("Select the fixed and the moving volume.")
        if params.fixedVolume.GetID() == params.movingVolume.GetID():
            raise ValueError("The fixed and the moving volume must be different volumes.")
        inputs = (
            params.fixedVolume,
            params.movingVolume,
            params.fixedLabels,
            params.movingLabels,
            params.fixedMask,
            params.movingMask,
        )
        inputIDs = {node.GetID() for node in inputs if node is not None}
        for label, node in (
            ("warped volume", params.warpedVolume),
            ("weight map", params.weightMapVolume),
            ("uncertainty", params.uncertaintyVolume),
            ("displacement magnitude volume", params.magnitudeVolume),
        ):
            if node is not None and node.GetID() in inputIDs:
                raise ValueError(f"The {label} output must not be one of the inputs ('{node.GetName()}').")
        if params.outputTransform is not None and params.outputLinearTransform is not None:
            if params.outputTransform.GetID() == params.outputLinearTransform.GetID():
                raise ValueError("The deformable and the linear output transform must be different nodes.")
        quality = getattr(params, "quality", "standard")
        if quality not in QUALITY_PRESETS:
            raise ValueError(f"Unknown quality '{quality}' (choose from {', '.join(QUALITY_PRESETS)}).")
        if QUALITY_PRESETS[quality].tto_levels_mm and params.policy != "tto":
            raise ValueError(
                f"Quality '{quality}' sets the tto schedule: choose the policy 'tto' or quality 'standard'."
            )
        self.resultParentTransform(params)

    # ------------------------------------------------------------------ running
    def isRunning(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def startRegistration(self, params, steps: int) -> None:
        """Build a new session from the parameters (main thread, ``run_spec.build_session`` as every
        front-end does) and start the worker."""
        from RLRegistrationLib.devices import describe_device, resolve_device
        from RLRegistrationLib.io import imaging
        from RLRegistrationLib.registration.run_spec import build_session
        from RLRegistrationLib.registration.session import InputNames

        if self.isRunning():
            raise RuntimeError("A registration is already running.")
        self.checkInputs(params)
        spec = runSpec(params, steps)
        self.forgetSession()
        self._fixedImage = self.volumeToImage(params.fixedVolume)
        self.movingImage = self.volumeToImage(params.movingVolume)
        names = InputNames(
            fixed=f"fixed volume '{params.fixedVolume.GetName()}'",
            moving=f"moving volume '{params.movingVolume.GetName()}'",
            fixed_labels=_nodeName("fixed labels", params.fixedLabels),
            moving_labels=_nodeName("moving labels", params.movingLabels),
            fixed_mask=_nodeName("fixed mask", params.fixedMask),
            moving_mask=_nodeName("moving mask", params.movingMask),
        )
        imaging.validate_image(self._fixedImage, names.fixed)
        imaging.validate_image(self.movingImage, names.moving)
        fixedLabels, movingLabels = self.labelImages(params)
        fixedMask, movingMask = self.maskImages(params)
        initial, _ = self.initialTransform(params)
        self.deviceDescription = describe_device(resolve_device(spec.device))
        self.session, self.plan = build_session(
            spec,
            self._fixedImage,
            self.movingImage,
            fixed_labels=fixedLabels,
            moving_labels=movingLabels,
            fixed_mask=fixedMask,
            moving_mask=movingMask,
            initial_transform=initial,
            names=names,
        )
        self.createdNodeIDs = []
        self._startWorker(steps)

    def continueRegistration(self, params, steps: int) -> None:
        if self.session is None:
            raise RuntimeError("There is no registration to continue: click Apply first.")
        if self.isRunning():
            raise RuntimeError("A registration is already running.")
        self.createdNodeIDs = []
        self._startWorker(steps)

    def _startWorker(self, steps) -> None:
        from RLRegistrationLib.registration import worker

        self.fullResolutionStep = None
        self._pendingFinal = None
        self._layersPending = True
        self._observeSceneClose()
        self.worker = worker.RegistrationWorker(self.session, steps, moving=self.movingImage)
        self.worker.start()

    def _observeSceneClose(self) -> None:
        """A scene closed mid-run stops the worker and forgets the session (its nodes are gone)."""
        if not self._closeObservers:
            scene = self.scene
            tag = scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._onSceneStartClose)
            self._closeObservers.append((scene, tag))

    def _onSceneStartClose(self, caller=None, event=None) -> None:
        self.cancel(wait=False)
        self.forgetSession()
        self.createdNodeIDs = []

    def stopObservingScene(self) -> None:
        """Stop watching the scene (the front-end is going away)."""
        for scene, tag in self._closeObservers:
            scene.RemoveObserver(tag)
        self._closeObservers = []

    def cancel(self, wait: bool = False, timeout: float = 120.0) -> None:
        """Ask the worker to stop after the step in progress (optionally wait for it)."""
        if self.worker is not None:
            self.worker.cancel()
            if wait:
                self.worker.join(timeout=timeout)

    def forgetSession(self) -> None:
        if self.worker is not None and self.worker.is_alive():
            self.worker.cancel()
        self.worker = None
        self.session = None
        self.fullResolutionStep = None
        self.displayedStep = None
        self.weightMapRangeText = "—"
        self.uncertaintyRangeText = "—"
        self.magnitudeRangeText = "—"

    def processMessages(self, params) -> RunUpdate:
        """Drain the worker's queue; show the newest step (only the newest: the views need no backlog)."""
        update = RunUpdate()
        if self.worker is None:
            return update
        latestFrame = None
        for message in self.worker.poll():
            if message.kind in ("prepared", "step"):
                update.reports.append(message.report)
                latestFrame = message.frame
                update.framePosted = message.posted
            elif message.kind == "final":
                self._pendingFinal = message.final
            elif message.kind == "finished":
                update.finished = True
                update.cancelled = message.cancelled
                update.stepsDone = message.steps_done
            elif message.kind == "error":
                update.error = message.error
                update.outOfMemory = message.out_of_memory
                update.details = message.details
                update.stepsDone = message.steps_done
        if latestFrame is not None and not update.error:
            self.showFrame(params, latestFrame)
        if update.finished and self._pendingFinal is not None:
            self.showFinal(params, self._pendingFinal)
            self._pendingFinal = None
        if update.finished and update.stepsDone > 0:
            self.createdNodeIDs = []  # complete results now, even after a cancel
        return update

    def runBlocking(
        self,
        params,
        steps: int,
        continueRun: bool = False,
        timeoutSeconds: float = 1800,
        processEvents: Callable[[], None] | None = None,
    ):
        """Register (or continue) and wait; returns the step reports. ``processEvents`` keeps a GUI live."""
        if continueRun:
            self.continueRegistration(params, steps)
        else:
            self.startRegistration(params, steps)
        reports = []
        start = time.time()
        while True:
            update = self.processMessages(params)
            reports.extend(update.reports)
            if update.error:
                self.discardCreatedNodes(params)
                raise RuntimeError(update.error + "\n" + update.details)
            if update.finished:
                return reports
            if self.worker is None:  # the scene was closed during the run
                raise RuntimeError("The scene was closed during the registration.")
            if time.time() - start > timeoutSeconds:
                self.cancel(wait=True)
                raise RuntimeError("Registration timed out.")
            if processEvents is not None:
                processEvents()
            time.sleep(0.05)

    def summary(self, cancelled: bool = False) -> str:
        if self.session is None or not self.session.reports:
            return ""
        report = self.session.reports[-1]
        text = f"{self.session.step_count} steps, NCC {report.similarity:.3f}"
        if report.dice is not None:
            text += f", Dice {report.dice:.3f} (after pre-alignment {self.session.reports[0].dice:.3f})"
        if getattr(report, "uncertainty_mean_mm", None) is not None:
            text += (
                f", uncertainty {report.uncertainty_mean_mm:.2f} mm (mean), "
                f"{report.uncertainty_max_mm:.2f} mm (max)"
            )
        from RLRegistrationLib.fields.intensity_mapping import mapping_summary

        mapping = mapping_summary(report.diagnostics)
        if mapping:
            text += f"; {mapping}"
        if cancelled:
            text = (
                "Cancelled after "
                + text
                + ". Outputs show the working-resolution preview; full resolution is computed on export."
            )
        return text

    # ------------------------------------------------------------------ output nodes
    def _newNode(self, params, className, name, attribute):
        scene = self.scene
        node = scene.AddNewNodeByClass(className, scene.GetUniqueNameByString(name))
        node.CreateDefaultDisplayNodes()
        self.createdNodeIDs.append(node.GetID())
        setattr(params, attribute, node)
        return node

    def _baseName(self, params) -> str:
        return f"{params.movingVolume.GetName()} to {params.fixedVolume.GetName()}"

    def _tagWithInputs(self, transformNode, params) -> None:
        transformNode.SetNodeReferenceID(
            transformNode.GetMovingNodeReferenceRole(), params.movingVolume.GetID()
        )
        transformNode.SetNodeReferenceID(
            transformNode.GetFixedNodeReferenceRole(), params.fixedVolume.GetID()
        )

    def outputTransformNode(self, params):
        """The grid node of the deformation (created when empty), under the result's parent."""
        transformNode = params.outputTransform
        if transformNode is None:
            transformNode = self._newNode(
                params, "vtkMRMLGridTransformNode", self._baseName(params) + " (RL)", "outputTransform"
            )
        self._tagWithInputs(transformNode, params)
        parent = self.resultParentTransform(params)
        transformNode.SetAndObserveTransformNodeID(parent.GetID() if parent else None)
        return transformNode

    def outputLinearTransformNode(self, params):
        """The linear node of the pre-alignment (created when empty), under the grid node."""
        gridNode = self.outputTransformNode(params)
        linearNode = params.outputLinearTransform
        if linearNode is None:
            linearNode = self._newNode(
                params,
                "vtkMRMLLinearTransformNode",
                self._baseName(params) + " (RL pre-alignment)",
                "outputLinearTransform",
            )
            linearNode.GetDisplayNode().SetVisibility(False)  # the field display is the grid node's
        self._tagWithInputs(linearNode, params)
        linearNode.SetAndObserveTransformNodeID(gridNode.GetID())
        return linearNode

    def overlayNode(self, params, overlay: str, create: bool = True):
        """The output volume of an overlay (``OVERLAY_VOLUMES``), created when empty if the overlay creates
        its node and ``create``; None otherwise."""
        spec = OVERLAY_VOLUMES[overlay]
        volumeNode = getattr(params, spec["attribute"])
        if volumeNode is None and create and spec["name"] is not None:
            volumeNode = self._newNode(
                params, "vtkMRMLScalarVolumeNode", self._baseName(params) + spec["name"], spec["attribute"]
            )
        return volumeNode

    def updateOverlay(self, params, overlay: str, array, ijkToRas, parent=None) -> None:
        """Voxels, geometry and colours of an overlay volume, and the text of its range label."""
        from RLRegistrationLib.frontends import display

        spec = OVERLAY_VOLUMES[overlay]
        text = display.format_range(array)
        setattr(self, spec["rangeText"], text + spec["unit"] if text != "—" else text)
        volumeNode = self.overlayNode(params, overlay, create=array is not None)
        if volumeNode is None or array is None:
            return
        firstTime = volumeNode.GetImageData() is None
        self.updateVolume(volumeNode, array, ijkToRas, parent)
        window = spec["window"]
        if window == "data":  # [0, max] of this step: the colours follow the growing spread
            valueRange = display.value_range(array)
            window = (0.0, max(valueRange[1] if valueRange else 0.0, 1e-3))
        if firstTime or spec["window"] == "data":
            self.setColors(volumeNode, spec["colors"], window)

    @staticmethod
    def setColors(volumeNode, colorNodeID: str, valueRange=None) -> None:
        """Colour table (and a fixed window, e.g. [0, 1] for the weight map) of an overlay volume."""
        ensure_color_table(volumeNode.GetScene(), colorNodeID)
        volumeNode.CreateDefaultDisplayNodes()
        displayNode = volumeNode.GetDisplayNode()
        displayNode.SetAndObserveColorNodeID(colorNodeID)
        if valueRange is not None:
            displayNode.SetAutoWindowLevel(False)
            displayNode.SetWindowLevelMinMax(valueRange[0], valueRange[1])

    @staticmethod
    def updateGridTransform(transformNode, arrays) -> None:
        """Put RAS arrays into the node: in place when the grid geometry is unchanged (no node churn)."""
        from RLRegistrationLib.io import slicer_arrays
        from RLRegistrationMRML import transform_grids

        transform = transformNode.GetTransformFromParent()
        if transform is not None and transform.IsA("vtkOrientedGridTransform"):
            grid = transform.GetDisplacementGrid()
            directionMatrix = transform.GetGridDirectionMatrix()
            direction = (
                slicer.util.arrayFromVTKMatrix(directionMatrix) if directionMatrix is not None else None
            )
            if grid is not None and slicer_arrays.grid_geometry_matches(
                grid.GetDimensions(), grid.GetOrigin(), grid.GetSpacing(), direction, arrays
            ):
                slicer.util.arrayFromGridTransform(transformNode)[:] = arrays.vectors
                slicer.util.arrayFromGridTransformModified(transformNode)
                transform.Modified()
                return
        gridTransform = slicer.vtkOrientedGridTransform()
        gridTransform.SetDisplacementGridData(transform_grids.vtk_displacement_grid(arrays))
        gridTransform.SetGridDirectionMatrix(
            slicer.util.vtkMatrixFromArray(slicer_arrays.homogeneous(arrays.direction))
        )
        gridTransform.SetInterpolationModeToLinear()
        transformNode.SetAndObserveTransformFromParent(gridTransform)

    @staticmethod
    def updateVolume(volumeNode, array, ijkToRas, parent=None) -> None:
        """Voxels and geometry of a volume node, reusing its image data when the shape is unchanged."""
        imageData = volumeNode.GetImageData()
        if (
            imageData is not None
            and tuple(reversed(imageData.GetDimensions())) == array.shape
            and imageData.GetNumberOfScalarComponents() == 1
            and slicer.util.arrayFromVolume(volumeNode).dtype == array.dtype
        ):
            slicer.util.arrayFromVolume(volumeNode)[:] = array
            slicer.util.arrayFromVolumeModified(volumeNode)
        else:
            slicer.util.updateVolumeFromArray(volumeNode, array)
        if volumeNode.GetDisplayNode() is None:
            volumeNode.CreateDefaultDisplayNodes()
        volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
        volumeNode.SetAndObserveTransformNodeID(parent.GetID() if parent else None)

    def _showOutputs(self, params, outputs, weightMapIjkToRas) -> None:
        """Transform chain, warped volume and overlays of a StepFrame or FinalOutputs."""
        parent = self.resultParentTransform(params)
        self.updateGridTransform(self.outputTransformNode(params), outputs.field)
        linearNode = self.outputLinearTransformNode(params)
        linearNode.SetMatrixTransformFromParent(slicer.util.vtkMatrixFromArray(outputs.affine_ras))
        if params.warpedVolume is not None and outputs.warped is not None:
            self.updateVolume(params.warpedVolume, outputs.warped, outputs.ijk_to_ras, parent)
        self.updateOverlay(params, "magnitude", outputs.magnitude, outputs.ijk_to_ras, parent)
        self.updateOverlay(params, "weight_map", outputs.weight_map, weightMapIjkToRas, parent)
        self.updateOverlay(params, "uncertainty", outputs.uncertainty, outputs.ijk_to_ras, parent)
        if self._layersPending:  # once per run: the user may change the layers while it runs
            self._layersPending = False
            self.updateDisplay(params)

    def showFrame(self, params, frame) -> None:
        """Show a working-grid step (live during the run, and for replay)."""
        self._showOutputs(params, frame, frame.ijk_to_ras)
        self.displayedStep = frame.index
        self.fullResolutionStep = None

    def showFinal(self, params, final) -> None:
        """Show the full-resolution result of a step (end of run, or before export)."""
        self._showOutputs(params, final, final.weight_map_ijk_to_ras)
        self.displayedStep = final.index
        self.fullResolutionStep = final.index
        self.createdNodeIDs = []  # the run is complete: its nodes are results, not leftovers

    def showStep(self, params, step: int) -> None:
        from RLRegistrationLib.registration import worker

        if self.session is None:
            raise RuntimeError("There is no registration to show.")
        self.showFrame(
            params,
            worker.step_frame(self.session, step, self.worker.moving_window if self.worker else None),
        )

    def stepBack(self, params) -> int:
        if self.session is None or self.isRunning():
            raise RuntimeError("Step back is possible after a run has finished.")
        steps = self.session.step_back()
        self.showStep(params, steps)
        return steps

    def ensureFullResolution(self, params) -> None:
        """Before export: make the output nodes hold the full-resolution result of the displayed step."""
        from RLRegistrationLib.registration import worker

        if self.session is None:
            raise RuntimeError("There is no result yet: click Apply first.")
        if self.isRunning():
            raise RuntimeError("Wait for the registration to finish (or cancel it).")
        step = self.session.step_count if self.displayedStep is None else self.displayedStep
        if self.fullResolutionStep != step:
            self.showFinal(params, worker.final_outputs(self.session, step, self.movingImage))

    def discardCreatedNodes(self, params) -> None:
        """Remove nodes that this run created and never completed (cancel before the first step, error)."""
        scene = self.scene
        for nodeID in self.createdNodeIDs:
            node = scene.GetNodeByID(nodeID)
            if node is not None:
                self.removeWithDisplayNodes(node)
        self.createdNodeIDs = []
        if params is not None:
            for attribute in (
                "outputTransform",
                "outputLinearTransform",
                "weightMapVolume",
                "uncertaintyVolume",
            ):
                node = getattr(params, attribute)
                if node is not None and scene.GetNodeByID(node.GetID()) is None:
                    setattr(params, attribute, None)

    def removeWithDisplayNodes(self, node: vtkMRMLDisplayableNode) -> None:
        """Remove a node of the scene; MRML leaves a removed node's display nodes behind, so them too."""
        scene = self.scene
        for i in reversed(range(node.GetNumberOfDisplayNodes())):
            displayNode = node.GetNthDisplayNode(i)
            if displayNode is not None:
                scene.RemoveNode(displayNode)
        scene.RemoveNode(node)

    # ------------------------------------------------------------------ display
    def updateDisplay(self, params) -> None:
        """Slice view layers (fixed in the background, one overlay in the foreground) and field display."""
        from RLRegistrationLib.frontends.panel_state import foreground_layer

        transformNode = params.outputTransform
        if transformNode is not None:
            transformNode.CreateDefaultDisplayNodes()
            displayNode = transformNode.GetDisplayNode()
            mode = params.fieldDisplay
            visible = mode != "Hidden"
            displayNode.SetVisibility(visible)
            displayNode.SetVisibility2D(visible)
            displayNode.SetVisibility3D(False)
            if visible:
                modes = {
                    "Glyph": slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH,
                    "Grid": slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID,
                    "Contour": slicer.vtkMRMLTransformDisplayNode.VIS_MODE_CONTOUR,
                }
                displayNode.SetVisualizationMode(modes[mode])
            if params.fixedVolume is not None:
                displayNode.SetAndObserveRegionNode(params.fixedVolume)
        layer = foreground_layer(
            params.showWeightMap,
            params.showMagnitude,
            self._hasVoxels(params.weightMapVolume),
            self._hasVoxels(params.magnitudeVolume),
            self._hasVoxels(params.warpedVolume),
            show_uncertainty=params.showUncertainty,
            has_uncertainty=self._hasVoxels(params.uncertaintyVolume),
        )
        foreground = {
            "weight_map": params.weightMapVolume,
            "uncertainty": params.uncertaintyVolume,
            "magnitude": params.magnitudeVolume,
            "warped": params.warpedVolume,
        }.get(layer)
        self.setSliceLayers(
            params.fixedVolume, foreground, params.overlayOpacity if foreground is not None else 0.0
        )

    @staticmethod
    def _hasVoxels(volumeNode) -> bool:
        return volumeNode is not None and volumeNode.GetImageData() is not None

    def setSliceLayers(self, background, foreground, foregroundOpacity: float) -> None:
        """Background and foreground volume of every slice view of the scene (its slice composite nodes)."""
        scene = self.scene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
            composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
            composite.SetForegroundOpacity(foregroundOpacity)

    # ------------------------------------------------------------------ export
    def result(self, params=None):
        """The library's RegistrationResult of the displayed step (full resolution)."""
        if params is not None:
            self.ensureFullResolution(params)
        if self.session is None:
            raise RuntimeError("There is no result yet: click Apply first.")
        step = self.session.step_count if self.displayedStep is None else self.displayedStep
        return self.session.result(step)

    def applyToMoving(self, params) -> None:
        """Put the moving volume under the result (its previous parent is inside the result; it is
        remembered so that a new run starts from it again)."""
        self.ensureFullResolution(params)
        moving = params.movingVolume
        linearNode = params.outputLinearTransform
        previous = moving.GetParentTransformNode()
        if previous is None or previous.GetID() not in self._ownTransformIDs(params):
            moving.SetAttribute(PREVIOUS_PARENT_ATTRIBUTE, previous.GetID() if previous is not None else "")
        moving.SetAndObserveTransformNodeID(linearNode.GetID())

    def unusedParentWouldBeReplaced(self, params) -> bool:
        """True when "apply to moving" replaces a parent transform the run did not use (initialization
        'None'): the panel asks before doing it."""
        previous = params.movingVolume.GetParentTransformNode() if params.movingVolume else None
        return (
            previous is not None
            and previous.GetID() not in self._ownTransformIDs(params)
            and params.initialization == "none"
        )

    def harden(self, params) -> None:
        """Apply the result to the moving volume and harden it (voxels resampled onto the fixed geometry)."""
        self.applyToMoving(params)
        moving = params.movingVolume
        moving.HardenTransform()
        moving.RemoveAttribute(PREVIOUS_PARENT_ATTRIBUTE)

    def saveTransform(self, params, path: str) -> None:
        """Write the result (affine + displacement, fixed point -> moving point, LPS) as an ITK .h5 file."""
        from RLRegistrationLib.io.export import write_transform

        write_transform(self.result(params).transform, path, overwrite=True)

    def loadTransform(self, path: str, linear: bool = True):
        """Load an ITK transform file into the scene (the Transforms logic picks the node class).

        Slicer reads a displacement field with *cubic* interpolation; ``linear`` (default) sets it back to
        linear, the interpolation the field was computed and written with (ITK's own).
        """
        logic = slicer.vtkSlicerTransformLogic()
        node = logic.AddTransform(str(path), self.scene)
        if node is None:
            raise RuntimeError(f"Could not read the transform file {path}.")
        if linear:
            useLinearInterpolation(node)
        return node


def pointsFromWorld(transformNode, pointsRas) -> np.ndarray:
    """World (RAS) points mapped into the coordinates of a node placed under ``transformNode``: the
    resampling map of everything between the world and it (all its parents included), (n, 3) mm."""
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, transformNode, transform)
    return np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in np.asarray(pointsRas)])


def useLinearInterpolation(transformNode) -> None:
    """Set linear interpolation on every grid transform inside a transform node (both directions)."""
    for transform in (transformNode.GetTransformFromParent(), transformNode.GetTransformToParent()):
        for grid in _gridTransforms(transform):
            grid.SetInterpolationModeToLinear()
    transformNode.Modified()


def _gridTransforms(transform) -> list:
    """The grid transforms inside a VTK transform (itself, or the parts of a general transform)."""
    if transform is None:
        return []
    if transform.IsA("vtkGridTransform"):
        return [transform]
    if transform.IsA("vtkGeneralTransform"):
        parts = [
            transform.GetConcatenatedTransform(i)
            for i in range(transform.GetNumberOfConcatenatedTransforms())
        ]
        return [grid for part in parts for grid in _gridTransforms(part)]
    return []
