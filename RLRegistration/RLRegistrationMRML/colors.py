"""The colour tables of the overlays, also where Slicer's colour files are not installed.

Inside Slicer, ``vtkMRMLColorTableNodeFileViridis.txt`` (and Plasma, Inferno) are always in the scene.
Outside it (the ``slicer-core`` wheel ships no colour files; trame-slicer neither) :func:`ensure_color_table`
adds a colour table node under the same ID, with the 256 colours of matplotlib's colormap of that name
(Slicer's files are the same matplotlib colormaps), so every front-end shows the same colours.
"""

from __future__ import annotations

import slicer

FILE_COLOR_PREFIX = "vtkMRMLColorTableNodeFile"


def ensure_color_table(scene, colorNodeID: str) -> str:
    """Make sure ``colorNodeID`` (``vtkMRMLColorTableNodeFile<Name>.txt``) exists in ``scene``; returns it."""
    if scene.GetNodeByID(colorNodeID) is not None or not colorNodeID.startswith(FILE_COLOR_PREFIX):
        return colorNodeID
    name = colorNodeID[len(FILE_COLOR_PREFIX) :].removesuffix(".txt")
    from matplotlib import colormaps

    colormap = colormaps[name.lower()]
    node = slicer.vtkMRMLColorTableNode()
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    node.SetNamesInitialised(True)
    for i in range(256):
        r, g, b, a = colormap(i / 255.0)
        node.SetColor(i, f"{name} {i}", r, g, b, a)
    node.SetName(name)
    node.SetAttribute("Category", "Continuous")
    node.SetSingletonTag(colorNodeID[len("vtkMRMLColorTableNode") :])
    node.SetHideFromEditors(False)
    scene.AddNode(node)
    return colorNodeID
