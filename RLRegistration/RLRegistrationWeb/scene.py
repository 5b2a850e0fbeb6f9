"""The web app's Slicer scene: trame-slicer's :class:`SlicerApp` plus what Slicer's desktop start-up adds.

trame-slicer's ``SlicerApp`` builds the scene, the application logic, the Colors / Volumes / Segmentations /
SubjectHierarchy logics and the view manager, like ``qSlicerCoreApplication``. Two things the registration
panel relies on are not part of it, and are added here, once:

* the Transforms logic (``vtkSlicerTransformLogic``), registered as "Transforms";
* the file colour tables the overlays use (Viridis, Plasma, Inferno), which Slicer loads from its
  ``ColorFiles`` folder at start-up (``RLRegistrationMRML.colors``: matplotlib's maps under Slicer's IDs).

The mouse starts in Slicer's "Window/level" mode: left-dragging in a slice view sets the window/level (the
page's "Drag sets window/level" switch turns it off).

Files are read with the library's own reader and put into volume nodes voxel for voxel
(``RLRegistrationMRML.volume_nodes``), so the browser's registration equals ``rlreg register``'s.
"""

from __future__ import annotations

from RLRegistrationMRML.colors import ensure_color_table
from RLRegistrationMRML.parameters import MAGNITUDE_COLORS, UNCERTAINTY_COLORS, WEIGHT_MAP_COLORS
from RLRegistrationMRML.slice_annotations import setDragAdjustsWindowLevel

OVERLAY_COLOR_TABLES = (WEIGHT_MAP_COLORS, UNCERTAINTY_COLORS, MAGNITUDE_COLORS)


def create_slicer_app():
    """A trame-slicer :class:`~trame_slicer.core.SlicerApp` with the Transforms logic and colour tables."""
    from slicer import vtkSlicerTransformLogic
    from trame_slicer.core import SlicerApp

    app = SlicerApp()
    if app.app_logic.GetModuleLogic("Transforms") is None:
        app.transforms_logic = app.register_module_logic(vtkSlicerTransformLogic(), logic_name="Transforms")
    for node_id in OVERLAY_COLOR_TABLES:
        ensure_color_table(app.scene, node_id)
    setDragAdjustsWindowLevel(app.scene, True)
    return app
