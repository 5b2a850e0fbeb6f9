"""The result out of the session: apply it to the moving volume, harden it, save and load ``.h5`` files.

:class:`SceneExport` (part of :class:`~RLRegistrationMRML.scene_logic.RegistrationSceneLogic`) works on the
full-resolution result of the displayed step: "apply" puts the moving volume under the result (its previous
parent, part of the result, is remembered for the next run), "harden" resamples its voxels, "save" writes
the library's ITK ``.h5`` (fixed point -> moving point, LPS). :func:`pointsFromWorld` maps points through a
node's transforms, as Slicer shows them.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from .parameters import PREVIOUS_PARENT_ATTRIBUTE


class SceneExport:
    """Apply, harden, save (a part of ``RegistrationSceneLogic``)."""

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
