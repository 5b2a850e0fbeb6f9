"""The web app's Slicer scene: trame-slicer's :class:`SlicerApp` plus what Slicer's desktop start-up adds.

trame-slicer's ``SlicerApp`` builds the scene, the application logic, the Colors / Volumes / Segmentations /
SubjectHierarchy logics and the view manager, like ``qSlicerCoreApplication``. Two things the registration
panel relies on are not part of it, and are added here, once:

* the Transforms logic (``vtkSlicerTransformLogic``), registered as "Transforms";
* the file colour tables the overlays use (Viridis, Plasma, Inferno), which Slicer loads from its
  ``ColorFiles`` folder at start-up. The wheel ships none, so they are made from matplotlib's colour maps of
  the same name, under the IDs Slicer gives them (``vtkMRMLColorTableNodeFileViridis.txt``, ...).

Files are read into the scene with the Volumes logic (``AddArchetypeVolume``), as Slicer's volume reader does.
"""

from __future__ import annotations

from pathlib import Path

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
            node.SetNamesInitialised(True)
            scene.AddNode(node)
        ids.append(node_id)
    return ids


def load_volume(app, path: str | Path, name: str, labels: bool = False):
    """Read an image file into the scene as a scalar volume (or label map) node; None when it cannot be read.

    The caller validates the file with SimpleITK first, so a None here is rare (a format ITK reads and
    MRML's reader does not).
    """
    flags = 1 if labels else 0  # vtkSlicerVolumesLogic: 1 = label map
    return app.volumes_logic.AddArchetypeVolume(str(path), name, flags)
