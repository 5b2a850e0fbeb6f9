"""The output nodes of a registration and how the slice views show them.

:class:`SceneOutputs` (part of :class:`~RLRegistrationMRML.scene_logic.RegistrationSceneLogic`) keeps the
result in the scene: the transform hierarchy (grid node of the deformation, linear node of the
pre-alignment under it, both tagged with the fixed and moving volumes), the warped volume and the overlays
(weight map, uncertainty, displacement magnitude, det J) with their colours and robust ranges, updated in
place at every step; the full-resolution result of a step; the slice view layers (with the comparison of
:mod:`.compare_views`) and the field display; the cursor read-out (:mod:`.readout`); and the removal of
nodes a run created but never completed (cancel before the first step, error).
"""

from __future__ import annotations

import slicer
import slicer.util
from slicer import vtkMRMLDisplayableNode

from .colors import ensure_color_table
from .compare_views import CompareViews
from .parameters import OVERLAY_VOLUMES
from .readout import ReadOut
from .slice_annotations import showViewMarkers


class SceneOutputs(CompareViews, ReadOut):
    """Output nodes, overlays and display (a part of ``RegistrationSceneLogic``)."""

    _markersShownIn = None  # the scene whose views got their markers (once: the user's choice then wins)

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
        """Voxels, geometry and colours of an overlay volume, and the text of its range label. Its display
        range is the data's 1st..99th percentile of this step (det J's: around 1), so the colours follow
        the step shown; a front-end that lets the user choose a range sets it again after this."""
        from RLRegistrationLib.frontends import display

        spec = OVERLAY_VOLUMES[overlay]
        text = display.format_range(array)
        setattr(self, spec["rangeText"], text + spec["unit"] if text != "—" else text)
        volumeNode = self.overlayNode(params, overlay, create=array is not None)
        if volumeNode is None or array is None:
            return
        self.updateVolume(volumeNode, array, ijkToRas, parent)
        self.setOverlayWindow(params, overlay, self.defaultWindow(overlay, array))

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
            self.updateComparison(params)
        self.updateOverlay(params, "magnitude", outputs.magnitude, outputs.ijk_to_ras, parent)
        self.updateOverlay(params, "weight_map", outputs.weight_map, weightMapIjkToRas, parent)
        self.updateOverlay(params, "uncertainty", outputs.uncertainty, outputs.ijk_to_ras, parent)
        self.rememberDisplayedField(params, outputs.field, outputs.ijk_to_ras, parent)
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
                "jacobianVolume",
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
        if params.showJacobian:
            self.updateJacobian(params)
        layer = foreground_layer(
            params.showWeightMap,
            params.showMagnitude,
            self._hasVoxels(params.weightMapVolume),
            self._hasVoxels(params.magnitudeVolume),
            self._hasVoxels(params.warpedVolume),
            show_uncertainty=params.showUncertainty,
            has_uncertainty=self._hasVoxels(params.uncertaintyVolume),
        )
        if params.showJacobian and self._hasVoxels(params.jacobianVolume):
            layer = "jacobian"
        overlayNode = {
            "weight_map": params.weightMapVolume,
            "uncertainty": params.uncertaintyVolume,
            "magnitude": params.magnitudeVolume,
            "jacobian": params.jacobianVolume,
        }.get(layer)
        self.setSliceLayers(*self.compareLayers(params, overlayNode))

    @staticmethod
    def _hasVoxels(volumeNode) -> bool:
        return volumeNode is not None and volumeNode.GetImageData() is not None

    def setSliceLayers(self, background, foreground, foregroundOpacity: float) -> None:
        """Background and foreground volume of every slice view of the scene (its slice composite nodes);
        the first time, the views' orientation markers and rulers on (``slice_annotations``; the user's
        later choice is left alone)."""
        scene = self.scene
        if self._markersShownIn is not scene:
            if showViewMarkers(scene):
                self._markersShownIn = scene
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
            composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
            composite.SetForegroundOpacity(foregroundOpacity)
