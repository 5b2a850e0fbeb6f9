"""The inputs of a registration, read from MRML nodes and checked before anything is created.

:class:`SceneInputs` (part of :class:`~RLRegistrationMRML.scene_logic.RegistrationSceneLogic`) turns the
panel's nodes into what ``run_spec.build_session`` takes: the volumes' voxels and geometry as SimpleITK
images (their own coordinates), label maps and segmentations on their volumes' grids, masks, and the
initial transform from the volumes' parent transforms. Every refusal is a ``ValueError`` (or the library's
``InputError``) with one line for the panel that names the node; a refused run creates nothing.
"""

from __future__ import annotations

import numpy as np
import slicer
import slicer.util
import vtk

from RLRegistrationLib.registration.quality import QUALITY_PRESETS
from RLRegistrationLib.registration.run_spec import runs_tto_schedules

from .parameters import PREVIOUS_PARENT_ATTRIBUTE


def nodeName(role: str, node) -> str:
    """How messages name an input: ``fixed volume 'MRHead'`` (the role alone when the node is not set)."""
    return f"{role} '{node.GetName()}'" if node is not None else role


def _ijkToRas(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


class SceneInputs:
    """Reading and checking the inputs (a part of ``RegistrationSceneLogic``; ``self.scene`` is its scene)."""

    @staticmethod
    def volumeToImage(volumeNode, name: str | None = None):
        """The node's voxels and geometry (its own coordinates, parent transforms not applied) as SimpleITK.

        Goes through the node's IJK-to-RAS matrix, so volumes that MRML re-indexed on loading stay exact.
        A volume without voxels, or with vector voxels, is an ``InputError`` naming ``name`` (e.g.
        ``fixed volume 'MRHead'``; the node's name when not given).
        """
        from RLRegistrationLib.errors import InputError
        from RLRegistrationLib.io import slicer_arrays

        name = name or f"volume '{volumeNode.GetName()}'"
        if volumeNode.GetImageData() is None:
            raise InputError(f"{name}: the volume holds no voxels")
        array = slicer.util.arrayFromVolume(volumeNode)
        if array.ndim != 3:
            raise InputError(
                f"{name}: a scalar volume is required, this one has {array.shape[-1]} components per voxel"
            )
        try:
            return slicer_arrays.image_from_slicer_arrays(array, _ijkToRas(volumeNode))
        except InputError as error:
            raise InputError(f"{name}: {error}") from None

    def readInputs(self, params) -> dict:
        """``build_session``'s images and names for the panel's nodes (``fixed``, ``moving``, labels,
        masks, ``initial_transform``, ``names``), every one checked; keeps the fixed and moving images."""
        from RLRegistrationLib.io import imaging
        from RLRegistrationLib.registration.session_options import InputNames

        names = InputNames(
            fixed=nodeName("fixed volume", params.fixedVolume),
            moving=nodeName("moving volume", params.movingVolume),
            fixed_labels=nodeName("fixed labels", params.fixedLabels),
            moving_labels=nodeName("moving labels", params.movingLabels),
            fixed_mask=nodeName("fixed mask", params.fixedMask),
            moving_mask=nodeName("moving mask", params.movingMask),
        )
        fixed = self.volumeToImage(params.fixedVolume, names.fixed)
        moving = self.volumeToImage(params.movingVolume, names.moving)
        imaging.validate_image(fixed, names.fixed)
        imaging.validate_image(moving, names.moving)
        self._fixedImage, self.movingImage = fixed, moving
        fixedLabels, movingLabels = self.labelImages(params)
        fixedMask, movingMask = self.maskImages(params)
        initial, _ = self.initialTransform(params)
        return {
            "fixed": fixed,
            "moving": moving,
            "fixed_labels": fixedLabels,
            "moving_labels": movingLabels,
            "fixed_mask": fixedMask,
            "moving_mask": movingMask,
            "initial_transform": initial,
            "names": names,
        }

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
        fixed = self._labelsToImage(fixedLabels, params.fixedVolume, names, "fixed labels")
        moving = self._labelsToImage(movingLabels, params.movingVolume, names, "moving labels")
        return (
            slicer_arrays.labels_on_image_grid(fixed, self._fixedImage),
            slicer_arrays.labels_on_image_grid(moving, self.movingImage),
        )

    @staticmethod
    def _segmentNames(segmentationNode):
        segmentation = segmentationNode.GetSegmentation()
        return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]

    def _labelsToImage(self, labelsNode, referenceVolume, segmentNames, role: str):
        """A label map volume (on its volume's geometry); a segmentation exported on the volume's grid."""
        if labelsNode.IsA("vtkMRMLSegmentationNode"):
            return self._segmentationToImage(labelsNode, referenceVolume, segmentNames)
        self._checkSameGeometry(labelsNode, referenceVolume)
        return self.volumeToImage(labelsNode, nodeName(role, labelsNode))

    @staticmethod
    def _checkSameGeometry(labelsNode, volumeNode) -> None:
        """A label map must lie on its volume's voxel grid (else its Dice would describe other voxels); the
        message says what differs."""
        labelsShape = slicer.util.arrayFromVolume(labelsNode).shape[::-1]
        volumeShape = slicer.util.arrayFromVolume(volumeNode).shape[::-1]
        if labelsShape != volumeShape:
            difference = f"{labelsShape[0]}x{labelsShape[1]}x{labelsShape[2]} voxels, not "
            difference += f"{volumeShape[0]}x{volumeShape[1]}x{volumeShape[2]}"
        elif not np.allclose(_ijkToRas(labelsNode), _ijkToRas(volumeNode), atol=1e-4):
            difference = "another origin, spacing or axis direction"
        else:
            return
        raise ValueError(
            f"The label map '{labelsNode.GetName()}' does not lie on the voxel grid of its volume "
            f"'{volumeNode.GetName()}' ({difference}): resample it onto the volume first."
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
            return self.volumeToImage(labelmap, f"segmentation '{labelsNode.GetName()}'")
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
        for role, maskNode, volumeNode in (
            ("fixed mask", params.fixedMask, params.fixedVolume),
            ("moving mask", params.movingMask, params.movingVolume),
        ):
            if maskNode is None:
                images.append(None)
            elif maskNode.IsA("vtkMRMLSegmentationNode"):
                images.append(self._segmentationToImage(maskNode, volumeNode, self._segmentNames(maskNode)))
            else:
                images.append(self.volumeToImage(maskNode, nodeName(role, maskNode)))
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
        fixed, moving = params.fixedVolume, params.movingVolume
        if not fixed or not moving:
            raise ValueError("Select the fixed and the moving volume.")
        if fixed.GetID() == moving.GetID() or self.sameImage(fixed, moving):
            which = f"'{fixed.GetName()}' is both"
            if moving.GetName() != fixed.GetName():
                which = f"'{fixed.GetName()}' and '{moving.GetName()}' hold the same image"
            raise ValueError(f"The fixed and the moving volume must be different volumes ({which}).")
        inputs = (fixed, moving, params.fixedLabels, params.movingLabels, params.fixedMask, params.movingMask)
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
        quality = getattr(params, "quality", "auto")
        if quality != "auto" and quality not in QUALITY_PRESETS:
            choices = ", ".join(("auto", *QUALITY_PRESETS))
            raise ValueError(f"Unknown quality '{quality}' (choose from {choices}).")
        if (
            quality != "auto"
            and QUALITY_PRESETS[quality].tto_levels_mm
            and not runs_tto_schedules(params.policy)
        ):
            raise ValueError(
                f"Quality '{quality}' sets the tto schedule: choose the policy 'tto', a chain '<id>+tto' or "
                "quality 'standard'."
            )
        self.resultParentTransform(params)

    @staticmethod
    def sameImage(volumeA, volumeB) -> bool:
        """True when two volume nodes hold the same voxels on the same grid under the same parent transform
        (e.g. one file loaded twice); a copy moved by a transform is another image."""
        if volumeA.GetImageData() is None or volumeB.GetImageData() is None:
            return False
        parents = [volume.GetParentTransformNode() for volume in (volumeA, volumeB)]
        if len({parent.GetID() if parent is not None else None for parent in parents}) > 1:
            return False
        a, b = slicer.util.arrayFromVolume(volumeA), slicer.util.arrayFromVolume(volumeB)
        return (
            a.shape == b.shape
            and np.allclose(_ijkToRas(volumeA), _ijkToRas(volumeB), atol=1e-6)
            and np.array_equal(a, b)
        )
