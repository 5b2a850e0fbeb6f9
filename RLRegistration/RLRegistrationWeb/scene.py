"""The web app's Slicer scene: trame-slicer's :class:`SlicerApp` plus what Slicer's desktop start-up adds.

trame-slicer's ``SlicerApp`` builds the scene, the application logic, the Colors / Volumes / Segmentations /
SubjectHierarchy logics and the view manager, like ``qSlicerCoreApplication``. Two things the registration
panel relies on are not part of it, and are added here, once:

* the Transforms logic (``vtkSlicerTransformLogic``), registered as "Transforms";
* the file colour tables the overlays use (Viridis, Plasma, Inferno), which Slicer loads from its
  ``ColorFiles`` folder at start-up. The wheel ships none, so they are made from matplotlib's colour maps of
  the same name, under the IDs Slicer gives them (``vtkMRMLColorTableNodeFileViridis.txt``, ...).

Files are read with the library's own reader (SimpleITK, validated) and put into volume nodes with their
exact geometry and voxel order (:func:`volume_from_image`). Slicer's file reader re-indexes volumes (it may
flip IJK axes); going through the library keeps the browser's registration identical to ``rlreg register``
on the same files.
"""

from __future__ import annotations

FILE_COLOR_TABLES = ("Viridis", "Plasma", "Inferno")


def create_slicer_app():
    """A trame-slicer :class:`~trame_slicer.core.SlicerApp` with the Transforms logic and colour tables."""
    from slicer import vtkSlicerTransformLogic
    from trame_slicer.core import SlicerApp

    app = SlicerApp()
    if app.app_logic.GetModuleLogic("Transforms") is None:
        app.transforms_logic = app.register_module_logic(vtkSlicerTransformLogic(), logic_name="Transforms")
    add_file_color_tables(app.scene)
    return app


def add_file_color_tables(scene, names: tuple[str, ...] = FILE_COLOR_TABLES) -> list[str]:
    """Add the continuous colour tables Slicer reads from ``ColorFiles/<Name>.txt`` (256 colours each,
    from matplotlib), with Slicer's IDs; tables already in the scene are kept. Returns their IDs."""
    import matplotlib
    from slicer import vtkMRMLColorTableNode

    ids = []
    for name in names:
        node_id = f"vtkMRMLColorTableNodeFile{name}.txt"
        if scene.GetNodeByID(node_id) is None:
            colors = matplotlib.colormaps[name.lower()]
            node = vtkMRMLColorTableNode()
            node.SetTypeToUser()
            node.SetNumberOfColors(256)
            node.SetName(name)
            node.SetSingletonTag(f"File{name}.txt")
            node.SetAttribute("Category", "Continuous")
            for i in range(256):
                r, g, b, _ = colors(i / 255.0)
                node.SetColor(i, str(i), r, g, b, 1.0)
            scene.AddNode(node)
        ids.append(node_id)
    return ids


def volume_from_image(scene, image, name: str, labels: bool = False):
    """A scalar volume (or label map) node holding ``image`` (SimpleITK, LPS) with its own voxel order and
    geometry (RAS IJK-to-RAS matrix), display nodes created."""
    import numpy as np
    import slicer.util

    from RLRegistrationLib.export import slicer_volume_arrays

    ijk_to_ras, array = slicer_volume_arrays(image)
    class_name = "vtkMRMLLabelMapVolumeNode" if labels else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, scene.GetUniqueNameByString(name))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    if labels:
        node.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeLabels")
    return node
