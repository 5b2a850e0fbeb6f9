"""Volume nodes made from the library's images, voxel for voxel.

Slicer's file reader re-indexes volumes (it may flip IJK axes). The registration works in physical space
either way, but its working grid follows the fixed image's index axes, so a re-indexed copy gives a
slightly different result from ``rlreg register`` on the same file. A front-end that reads files itself
(the browser app) uses :func:`volume_node_from_image` to get exactly the image the CLI registers.
"""

from __future__ import annotations

import numpy as np
import slicer
import slicer.util


def volume_node_from_image(scene, image, name: str, labels: bool = False):
    """A scalar volume (or label map) node in ``scene`` holding ``image`` (SimpleITK, LPS) with its own voxel
    order and geometry (RAS IJK-to-RAS matrix); display nodes created."""
    from RLRegistrationLib.io.slicer_arrays import slicer_volume_arrays

    ijk_to_ras, array = slicer_volume_arrays(image)
    class_name = "vtkMRMLLabelMapVolumeNode" if labels else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, scene.GetUniqueNameByString(name))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    if labels:
        node.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeLabels")
    return node
