"""A Slicer scene with the logics Slicer's core application sets up, for running outside Slicer.

Inside Slicer, ``qSlicerCoreApplication`` builds all of this; outside it (the ``slicer-core`` wheel: tests,
scripts that render what the panel shows), :func:`create_core_scene` builds the same: the scene, the
application logic, the colour logic with Slicer's default colour nodes (plus file colour tables from a
folder, when given), and the Volumes, Transforms, Segmentations and SubjectHierarchy logics registered with
the application logic, slice and 3D displayable manager factories connected to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import slicer
import vtk


@dataclass
class CoreScene:
    """A scene and the module logics working on it."""

    scene: object  # vtkMRMLScene
    app_logic: object  # vtkSlicerApplicationLogic
    volumes_logic: object
    transforms_logic: object
    segmentations_logic: object
    subject_hierarchy_logic: object
    colors_logic: object


def load_color_files(colors_logic, scene, folder: Path) -> int:
    """Load Slicer colour table files (``<name>.txt``) under the IDs Slicer gives them
    (``vtkMRMLColorTableNodeFile<name>.txt``, singletons); returns how many were loaded."""
    count = 0
    for color_file in sorted(Path(folder).glob("*.txt")):
        loaded = colors_logic.LoadColorFile(str(color_file))
        if loaded is None:
            continue
        scene.RemoveNode(loaded)  # LoadColorFile adds a plain node: re-add it as Slicer's singleton
        node = slicer.vtkMRMLColorTableNode()
        node.Copy(loaded)
        node.SetSingletonTag(colors_logic.GetFileColorNodeSingletonTag(str(color_file)))
        scene.AddNode(node)
        count += 1
    return count


def create_core_scene(color_files: Path | None = None) -> CoreScene:
    """A new scene set up as Slicer's core application sets up its own (see the module docstring)."""
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = app_logic.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    if color_files is not None:
        load_color_files(colors, scene, color_files)
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())
    slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(app_logic)
    slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(app_logic)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)

    def register(logic, name):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        return logic

    app_logic.SetModuleLogic("Colors", colors)  # the Volumes logic looks it up when it loads label maps
    return CoreScene(
        scene=scene,
        app_logic=app_logic,
        volumes_logic=register(slicer.vtkSlicerVolumesLogic(), "Volumes"),
        transforms_logic=register(slicer.vtkSlicerTransformLogic(), "Transforms"),
        segmentations_logic=register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations"),
        subject_hierarchy_logic=register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy"),
        colors_logic=colors,
    )
