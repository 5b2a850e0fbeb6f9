"""Judging an alignment in the slice views (issue 21), Qt-free: the det J overlay, every overlay's range,
and the comparison of the fixed volume with the warped one.

:class:`CompareViews` is a part of :class:`~RLRegistrationMRML.scene_outputs.SceneOutputs` (so of the scene
logic both panels drive):

* **det J**: the local volume change of the displayed deformable refinement ``x + u(x)`` (no unit; 1 = no
  change), computed by the core (``fields.metrics.jacobian_of_arrays``, physical space with the grid's
  direction) when it is shown or read, into the ``jacobianVolume`` node, coloured by a table diverging
  around 1 with folding (det J <= 0) in a signal colour (``frontends.overlay_display``);
* **ranges**: :meth:`CompareViews.setOverlayWindow` sets an overlay's display range (det J's table follows
  it); the default is the data's 1st..99th percentile at every step (``scene_outputs.updateOverlay``);
* **comparison** (``params.compareMode``): "fade" (warped over fixed at the overlay opacity), "checkerboard"
  and "difference" (one volume on the fixed grid, made from the displayed warped image, in the slice views'
  background), "flicker" (the front-end's timer calls :meth:`CompareViews.setFlickerPhase`), "beforeafter"
  (the same timer shows, over the fixed volume, the pre-alignment's warped image, step 0, and the
  displayed step's in turn: what the deformable refinement changed).
"""

from __future__ import annotations

import numpy as np
import slicer
import slicer.util
import vtk

from .parameters import FLICKER_MODES, JACOBIAN_COLOR_TAG, JACOBIAN_COLORS, OVERLAY_VOLUMES

GREY_COLORS = "vtkMRMLColorTableNodeGrey"
COMPARISON_ATTRIBUTE = "RLRegistration.Comparison"


def worldIjkToRas(volumeNode) -> np.ndarray:
    """4x4 from a volume's voxel index (i, j, k) to world RAS (mm): its IJK-to-RAS matrix and its parent
    transforms when they are linear (a non-linear parent is not followed)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    ijkToRas = slicer.util.arrayFromVTKMatrix(matrix)
    parent = volumeNode.GetParentTransformNode()
    if parent is not None and parent.IsTransformToWorldLinear():
        toWorld = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(toWorld)
        ijkToRas = slicer.util.arrayFromVTKMatrix(toWorld) @ ijkToRas
    return ijkToRas


def ensureJacobianColors(scene, window: tuple[float, float]) -> str:
    """det J's colour table in ``scene`` (made once, its colours set for ``window`` (low, high)); its ID."""
    from RLRegistrationLib.frontends.overlay_display import jacobian_colors

    node = scene.GetNodeByID(JACOBIAN_COLORS)
    if node is None:
        node = slicer.vtkMRMLColorTableNode()
        node.SetTypeToUser()
        node.SetName("det J (RLRegistration)")
        node.SetAttribute("Category", "Continuous")
        node.SetSingletonTag(JACOBIAN_COLOR_TAG)
        node.SetHideFromEditors(False)
        scene.AddNode(node)
    wasModifying = node.StartModify()
    node.SetNumberOfColors(256)
    for i, (r, g, b, a) in enumerate(jacobian_colors(window, 256)):
        node.SetColor(i, f"det J {i}", float(r), float(g), float(b), float(a))
    node.EndModify(wasModifying)
    return node.GetID()


class CompareViews:
    """det J, overlay ranges and the fixed/warped comparison (a part of ``SceneOutputs``)."""

    flickerShowsWarped = True  # the flicker's phase: warped shown (True) or the fixed volume alone
    jacobianRangeText = "—"
    _comparisonNodeID = None
    _beforeNodeID = None
    _beforeSession = None  # the session whose step 0 the "before" volume holds
    _displayedField = None  # (SlicerGridArrays, ijk_to_ras 4x4, parent node) of the step shown
    _jacobianField = None  # the SlicerGridArrays the det J node was computed from

    # ------------------------------------------------------------------ det J
    def rememberDisplayedField(self, params, field, ijkToRas, parent) -> None:
        """The deformation of the step now shown (its det J is computed when shown or read)."""
        self._displayedField = (field, np.asarray(ijkToRas, dtype=np.float64), parent)
        if params.showJacobian:
            self.updateJacobian(params)

    def updateJacobian(self, params) -> bool:
        """Compute det J of the displayed step into ``params.jacobianVolume`` (created when empty) unless it
        holds it already; False when there is no step to show."""
        from RLRegistrationLib.fields.metrics import jacobian_of_arrays

        if self._displayedField is None:
            return False
        field, ijkToRas, parent = self._displayedField
        node = params.jacobianVolume
        if self._jacobianField is field and node is not None and node.GetImageData() is not None:
            return True
        det = jacobian_of_arrays(field.vectors, field.spacing, field.direction).astype(np.float32)
        self.updateOverlay(params, "jacobian", det, ijkToRas, parent)
        self._jacobianField = field
        return True

    def forgetDisplayedField(self) -> None:
        self._displayedField = None
        self._jacobianField = None
        self.jacobianRangeText = "—"

    # ------------------------------------------------------------------ ranges
    def overlayVolume(self, params, overlay: str):
        """The volume node of ``overlay`` (``OVERLAY_VOLUMES``) when it holds voxels, else None."""
        node = getattr(params, OVERLAY_VOLUMES[overlay]["attribute"])
        return node if node is not None and node.GetImageData() is not None else None

    def defaultWindow(self, overlay: str, array) -> tuple[float, float] | None:
        """An overlay's default range (its unit): the data's 1st..99th percentile, det J's around 1."""
        from RLRegistrationLib.frontends.overlay_display import jacobian_window, robust_range

        return (
            jacobian_window(array)
            if OVERLAY_VOLUMES[overlay]["window"] == "jacobian"
            else robust_range(array)
        )

    def setOverlayWindow(self, params, overlay: str, window: tuple[float, float] | None = None) -> None:
        """Display range (low, high) of an overlay (None: its default from the data); det J's colours
        follow the range (folding keeps its signal colour)."""
        node = self.overlayVolume(params, overlay)
        if node is None:
            return
        if window is None:
            window = self.defaultWindow(overlay, slicer.util.arrayFromVolume(node))
            if window is None:
                return
        low, high = float(window[0]), float(window[1])
        spec = OVERLAY_VOLUMES[overlay]
        colorNodeID = spec["colors"]
        if colorNodeID == JACOBIAN_COLORS:
            ensureJacobianColors(node.GetScene(), (low, high))
        self.setColors(node, colorNodeID, (low, high))

    def overlayWindow(self, params, overlay: str) -> tuple[float, float] | None:
        """The display range (low, high) of an overlay now, or None."""
        node = self.overlayVolume(params, overlay)
        if node is None or node.GetDisplayNode() is None:
            return None
        display = node.GetDisplayNode()
        return display.GetWindowLevelMin(), display.GetWindowLevelMax()

    # ------------------------------------------------------------------ comparison
    def _ownVolume(self, slot: str, name: str, tag: str, create: bool):
        """The scene's volume node whose ID this object keeps in ``slot`` (made, named ``name`` and tagged
        ``tag``, when absent and ``create``), or None."""
        scene = self.scene
        nodeID = getattr(self, slot)
        node = scene.GetNodeByID(nodeID) if nodeID else None
        if node is None and create:
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GetUniqueNameByString(name))
            node.SetAttribute(COMPARISON_ATTRIBUTE, tag)
            node.CreateDefaultDisplayNodes()
            setattr(self, slot, node.GetID())
        return node

    def comparisonNode(self, params, create: bool = True):
        """The volume of the checkerboard / difference comparison (made when needed), or None."""
        name = f"{params.movingVolume.GetName()} to {params.fixedVolume.GetName()} comparison"
        return self._ownVolume("_comparisonNodeID", name, "1", create)

    def warpedOnFixedGrid(self, params) -> np.ndarray:
        """The displayed warped volume's voxels on the fixed volume's grid (linear interpolation where the
        grids differ, e.g. the working grid during a run)."""
        import SimpleITK as sitk

        from RLRegistrationLib.io.slicer_arrays import image_from_slicer_arrays

        fixed, warped = params.fixedVolume, params.warpedVolume
        fixedArray = slicer.util.arrayFromVolume(fixed)
        warpedArray = slicer.util.arrayFromVolume(warped)
        fixedMatrix, warpedMatrix = worldIjkToRas(fixed), worldIjkToRas(warped)
        if fixedArray.shape == warpedArray.shape and np.allclose(fixedMatrix, warpedMatrix, atol=1e-4):
            return np.asarray(warpedArray, dtype=np.float32)
        reference = image_from_slicer_arrays(np.zeros(fixedArray.shape, np.float32), fixedMatrix)
        moving = image_from_slicer_arrays(np.asarray(warpedArray, dtype=np.float32), warpedMatrix)
        outside = float(np.min(warpedArray)) if warpedArray.size else 0.0
        resampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, outside)
        return sitk.GetArrayFromImage(resampled)

    def updateComparison(self, params) -> bool:
        """Checkerboard or |fixed - warped| (both normalized to [0, 1]) of the step shown, into the
        comparison volume on the fixed grid; False when the mode needs none or there is nothing to compare."""
        from RLRegistrationLib.frontends.overlay_display import (
            CHECKER_SQUARE_MM,
            compare_images,
            robust_range,
        )

        mode = params.compareMode
        if mode not in ("checkerboard", "difference"):
            return False
        if not (self._hasVoxels(params.fixedVolume) and self._hasVoxels(params.warpedVolume)):
            return False
        fixedMatrix = worldIjkToRas(params.fixedVolume)
        spacing = np.linalg.norm(fixedMatrix[:3, :3], axis=0)  # i, j, k
        square = tuple(max(1, int(round(CHECKER_SQUARE_MM / s))) for s in spacing[::-1])
        image = compare_images(
            slicer.util.arrayFromVolume(params.fixedVolume), self.warpedOnFixedGrid(params), mode, square
        )
        node = self.comparisonNode(params)
        self.updateVolume(node, image, fixedMatrix)
        high = 1.0 if mode == "checkerboard" else max((robust_range(image) or (0.0, 1.0))[1], 0.05)
        self.setColors(node, GREY_COLORS, (0.0, high))
        return True

    def compareLayers(self, params, overlayNode):
        """(background, foreground, foreground opacity) of the slice views for the comparison mode and
        the overlay shown (``overlayNode``, None: none)."""
        fixed, warped = params.fixedVolume, params.warpedVolume
        mode = params.compareMode
        opacity = params.overlayOpacity
        if mode in ("checkerboard", "difference") and self.updateComparison(params):
            return self.comparisonNode(params), overlayNode, opacity if overlayNode is not None else 0.0
        if overlayNode is not None:
            return fixed, overlayNode, opacity
        if not self._hasVoxels(warped):
            return fixed, None, 0.0
        if mode == "flicker":
            return fixed, warped, 1.0 if self.flickerShowsWarped else 0.0
        if mode == "beforeafter" and self.updateBefore(params):
            return fixed, warped if self.flickerShowsWarped else self.beforeNode(params), opacity
        return fixed, warped, opacity

    def beforeNode(self, params, create: bool = True):
        """The volume of the "before" image (the pre-alignment's warped moving volume), or None."""
        name = f"{params.movingVolume.GetName()} after the pre-alignment"
        return self._ownVolume("_beforeNodeID", name, "before", create)

    def updateBefore(self, params) -> bool:
        """The "before" volume: step 0 (the pre-alignment) of the run, made once per run, in the warped
        volume's window; False without a run or a warped volume."""
        from RLRegistrationLib.registration import worker

        warped = params.warpedVolume
        if self.session is None or not self._hasVoxels(warped):
            return False
        node = self.beforeNode(params)
        if self._beforeSession is not self.session or not self._hasVoxels(node):
            frame = worker.step_frame(self.session, 0, self.worker.moving_window if self.worker else None)
            self.updateVolume(node, frame.warped, frame.ijk_to_ras, self.resultParentTransform(params))
            self._beforeSession = self.session
        display = warped.GetDisplayNode()
        if display is not None:
            self.setColors(node, GREY_COLORS, (display.GetWindowLevelMin(), display.GetWindowLevelMax()))
        return True

    def setFlickerPhase(self, params, showWarped: bool) -> None:
        """Flicker: show the warped volume (True) or the fixed one alone; the front-end's timer calls this
        every ``params.flickerPeriod`` seconds."""
        self.flickerShowsWarped = bool(showWarped)
        if params.compareMode in FLICKER_MODES and params.fixedVolume is not None:
            self.updateDisplay(params)
