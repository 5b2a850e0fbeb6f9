"""Slice views of a scene rendered offscreen by Slicer's own slice logic and displayable managers.

What the panel shows, without Slicer's Qt views: :class:`OffscreenSliceView` is one slice view (a
``vtkMRMLSliceLogic`` with its slice node and composite node, the slice-view displayable managers, among
them ``vtkMRMLTransformsDisplayableManager2D`` for the glyph / grid / contour display of a grid transform)
drawn into an offscreen render window; EGL (Mesa) needs no X server. The slice image is the slice logic's
blended output (background, foreground with its opacity and colour table, label layer), as in Slicer.
Used by ``scripts/render_panel_frames.py`` (README pictures) and by tests that assert on pixels.
"""

from __future__ import annotations

import os

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

SLICE_DISPLAYABLE_MANAGERS = (
    "vtkMRMLTransformsDisplayableManager2D",
    "vtkMRMLModelSliceDisplayableManager",
    "vtkMRMLCrosshairDisplayableManager",
    "vtkMRMLOrientationMarkerDisplayableManager",
    "vtkMRMLRulerDisplayableManager",
)


def use_egl_without_display() -> None:
    """Without an X display, make VTK's render windows EGL ones (Mesa's llvmpipe renders on the CPU)."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


class OffscreenSliceView:
    """One slice view (``name``: Red, Yellow, Green; ``orientation``: Axial, Sagittal, Coronal) of ``scene``.

    Its slice composite node takes the layers the MRML layer sets (``setSliceLayers``); :meth:`render` gives
    the view's pixels. ``appLogic`` is the scene's ``vtkSlicerApplicationLogic``.
    """

    def __init__(self, scene, appLogic, name: str = "Red", orientation: str = "Axial", size=(320, 320)):
        self.size = (int(size[0]), int(size[1]))
        use_egl_without_display()
        self.renderWindow = vtk.vtkRenderWindow()
        self.renderWindow.SetOffScreenRendering(1)
        self.renderWindow.SetSize(*self.size)
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.renderWindow.AddRenderer(self.renderer)
        # displayable managers observe the view's interactor; a generic one needs no window system
        self.interactor = vtk.vtkGenericRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.renderWindow)
        self.interactor.Initialize()

        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(appLogic)
        self.logic.SetMRMLScene(scene)
        self.sliceNode = self.logic.AddSliceNode(name)
        self.sliceNode.SetOrientation(orientation)
        if appLogic.GetSliceLogics() is not None:
            appLogic.GetSliceLogics().AddItem(self.logic)

        # the slice image: the slice logic's blended layers on a background 2D actor (Slicer's light box
        # renderer manager does the same in the desktop application)
        self.imageMapper = vtk.vtkImageMapper()
        self.imageMapper.SetColorWindow(255)
        self.imageMapper.SetColorLevel(127.5)
        self.imageActor = vtk.vtkActor2D()
        self.imageActor.SetMapper(self.imageMapper)
        self.imageActor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.imageActor)

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(appLogic)
        for manager in SLICE_DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.displayableManagers = slicer.vtkMRMLDisplayableManagerGroup()
        self.displayableManagers.Initialize(factory, self.renderer)
        self.displayableManagers.SetMRMLDisplayableNode(self.sliceNode)
        self._fitted = False

    @property
    def compositeNode(self):
        return self.logic.GetSliceCompositeNode()

    def fitToBackground(self) -> None:
        """Show the whole background volume (as Slicer does when a volume is first shown)."""
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()
        self._fitted = True

    def render(self) -> np.ndarray:
        """The view's pixels now, (height, width, 3) uint8, top row first."""
        if not self._fitted:
            self.fitToBackground()
        self.logic.ResizeSliceNode(*self.size)
        self.imageMapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.displayableManagers.RequestRender()
        self.renderWindow.Render()
        capture = vtk.vtkWindowToImageFilter()
        capture.SetInput(self.renderWindow)
        capture.SetInputBufferTypeToRGB()
        capture.ReadFrontBufferOff()
        capture.Update()
        image = capture.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, 3)
        return np.ascontiguousarray(pixels[::-1])

    def close(self) -> None:
        """Release the render window and take the slice logic out of the application logic."""
        self.displayableManagers.SetMRMLDisplayableNode(None)
        sliceLogics = self.logic.GetMRMLApplicationLogic().GetSliceLogics()
        if sliceLogics is not None:
            sliceLogics.RemoveItem(self.logic)
        self.renderWindow.Finalize()
