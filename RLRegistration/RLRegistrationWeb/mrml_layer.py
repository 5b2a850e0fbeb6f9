"""The one place where the web app reaches the shared MRML layer (``RLRegistrationMRML``).

The Slicer panel and the browser drive the same :class:`RegistrationSceneLogic`: the web app has no MRML
node logic of its own. What is here is only what a front-end chooses: which nodes hold the inputs
(volumes read from files) and which output volumes it wants (the Slicer panel lets the user pick them; the
browser creates them once per input pair).
"""

from __future__ import annotations

from typing import Any


def scene_logic_types() -> tuple[type, type, Any]:
    """(RegistrationSceneLogic, RegistrationParameters, the parameters module) of the MRML layer."""
    from RLRegistrationMRML import parameters
    from RLRegistrationMRML.parameters import RegistrationParameters
    from RLRegistrationMRML.scene_logic import RegistrationSceneLogic

    return RegistrationSceneLogic, RegistrationParameters, parameters


def create_scene_logic(scene) -> Any:
    """The shared scene logic working on ``scene`` (trame-slicer's scene, not ``slicer.mrmlScene``)."""
    scene_logic, _, _ = scene_logic_types()
    return scene_logic(scene)


def new_parameters(**values) -> Any:
    """A :class:`RegistrationParameters` (the panel's values without Slicer's parameter node)."""
    _, parameters_type, _ = scene_logic_types()
    return parameters_type(**values)


def ensure_output_volumes(scene, params, base_name: str) -> list[str]:
    """Warped and |u| output volumes of the browser panel (the MRML layer fills them at every step);
    returns the attributes whose node was created now.

    Created once per input pair (as the Slicer panel's "create new volume" does) and reused by later runs,
    so the slice views keep showing the same nodes.
    """
    created = []
    for attribute, suffix in (("warpedVolume", " warped"), ("magnitudeVolume", " |u| (mm)")):
        node = getattr(params, attribute)
        if node is None or scene.GetNodeByID(node.GetID()) is None:
            node = scene.AddNewNodeByClass(
                "vtkMRMLScalarVolumeNode", scene.GetUniqueNameByString(base_name + suffix)
            )
            setattr(params, attribute, node)
            created.append(attribute)
    return created


def discard_output_volumes(logic, params, attributes: list[str]) -> None:
    """Remove the output volumes :func:`ensure_output_volumes` created for a run that did not start."""
    remove_nodes(logic, [getattr(params, attribute) for attribute in attributes])
    for attribute in attributes:
        setattr(params, attribute, None)


def remove_nodes(logic, nodes) -> None:
    """Remove nodes with their display nodes (the scene logic's removal); None and nodes already gone are
    skipped."""
    for node in nodes:
        if node is not None and logic.scene.GetNodeByID(node.GetID()) is not None:
            logic.removeWithDisplayNodes(node)


def volume_node_from_image(scene, image, name: str, labels: bool = False):
    """An input volume node holding ``image`` voxel for voxel (the MRML layer's ``volume_node_from_image``)."""
    from RLRegistrationMRML.volume_nodes import volume_node_from_image as make_node

    return make_node(scene, image, name, labels)
