"""The pair's kind from Slicer's subject hierarchy: two volumes of one patient item, of one study item.

DICOM volumes loaded in Slicer sit under a patient item and a study item of the scene's
``vtkMRMLSubjectHierarchyNode`` (the DICOM module makes them; a user can make them in the Data module). When
both volumes are under the same patient item the panel tells the run (``run_spec.build_session``'s
``pair``): one study item is one session, two study items of one patient are a follow-up. Anything else
(no patient item, two patient items) says nothing: the images decide after the pre-alignment
(``registration.pair_kind``), since volumes loaded from files carry no patient.
"""

from __future__ import annotations

import slicer


def _ancestor(shNode, item: int, level: str) -> int:
    """The item's ancestor at ``level`` ("Patient", "Study"), or the invalid item ID."""
    return shNode.GetItemAncestorAtLevel(item, level) if item else 0


def pairFromSubjectHierarchy(scene, fixedNode, movingNode) -> tuple[str, str] | None:
    """(kind, reason) when both nodes are under one patient item: "same-session" under one study item,
    else "same-patient"; None otherwise (the images decide)."""
    if scene is None or fixedNode is None or movingNode is None:
        return None
    if not scene.GetNumberOfNodesByClass("vtkMRMLSubjectHierarchyNode"):
        return None  # no hierarchy: nothing to ask (and none is created for asking)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    fixedItem, movingItem = shNode.GetItemByDataNode(fixedNode), shNode.GetItemByDataNode(movingNode)
    patient = _ancestor(shNode, fixedItem, constants.GetDICOMLevelPatient())
    if not patient or patient != _ancestor(shNode, movingItem, constants.GetDICOMLevelPatient()):
        return None
    name = shNode.GetItemName(patient)
    study = _ancestor(shNode, fixedItem, constants.GetDICOMLevelStudy())
    if study and study == _ancestor(shNode, movingItem, constants.GetDICOMLevelStudy()):
        return (
            "same-session",
            f"one study '{shNode.GetItemName(study)}' of patient '{name}' in the subject hierarchy",
        )
    return "same-patient", f"two studies of patient '{name}' in the subject hierarchy"
