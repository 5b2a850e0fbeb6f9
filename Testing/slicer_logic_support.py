"""What the tests of the Slicer module's Logic share: the sample pair loaded through Slicer's Volumes logic
(``load_pair``), fast run settings on the Logic's parameter node (``fast_parameters``), the IDs of a
scene's nodes, segmentations made from label maps by Slicer's Segmentations logic, and the skip mark
``requires_slicer``."""

from __future__ import annotations

import pytest
import slicer_runtime  # Testing/ is on sys.path, as for conftest

SAMPLE = slicer_runtime.ROOT / "RLRegistration" / "RLRegistrationLib" / "sample_data"
REASON = slicer_runtime.unavailable_reason()
# the tests' pytestmark: skipped, with the reason, where ../shared/slicer-python or slicer-core is missing
requires_slicer = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def load_pair(labels: bool = True):
    import slicer

    nodes = {
        "fixed": slicer.util.loadVolume(str(SAMPLE / "fixed.nii.gz")),
        "moving": slicer.util.loadVolume(str(SAMPLE / "moving.nii.gz")),
    }
    if labels:
        nodes["fixedLabels"] = slicer.util.loadLabelVolume(str(SAMPLE / "fixed_labels.nii.gz"))
        nodes["movingLabels"] = slicer.util.loadLabelVolume(str(SAMPLE / "moving_labels.nii.gz"))
    return nodes


def fast_parameters(logic, nodes, **changes):
    params = logic.getParameterNode()
    params.fixedVolume = nodes["fixed"]
    params.movingVolume = nodes["moving"]
    params.fixedLabels = nodes.get("fixedLabels")
    params.movingLabels = nodes.get("movingLabels")
    params.policy = "tto"
    params.quality = "standard"
    params.iterations = 2
    params.device = "cpu"
    for name, value in changes.items():
        setattr(params, name, value)
    return params


def node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def segmentation_from_labels(labelNode, names: dict[int, str]):
    """A segmentation made by Slicer's Segmentations logic from a label map, segments renamed."""
    import slicer

    segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", labelNode.GetName() + " seg"
    )
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        labelNode, segmentationNode
    )
    segmentation = segmentationNode.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        segment.SetName(names.get(int(segment.GetLabelValue()), f"label {segment.GetLabelValue()}"))
    return segmentationNode
