"""The Slicer module's Logic against Slicer's real core (``slicer-core`` + Slicer's own Python layer), what
goes into a run: the parameter node (its defaults, the settings table it is made from, the ranges and
choices ``parameterNodeWrapper`` enforces), volumes converted to images voxel for voxel at the file's
physical points, and the runs the Logic refuses before it starts, leaving the scene as it was (the same
volume as fixed and moving, an output that is an input, a non-linear parent, segmentations without a
common name, a label map off its volume's grid, images that do not overlap, an empty mask, quality "fine"
with a learned policy alone). Skipped, with the reason, where ``../shared/slicer-python`` or
``slicer-core`` is missing (a user's clone); CI has both.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_logic_support import (
    SAMPLE,
    fast_parameters,
    load_pair,
    node_ids,
    requires_slicer,
    segmentation_from_labels,
)

pytestmark = requires_slicer


# ---------------------------------------------------------------------------------------------- inputs


def test_parameter_node_is_created_with_its_defaults(module, scene):
    import slicer

    params = module.RLRegistrationLogic().getParameterNode()
    assert params.fixedLabels is None and params.movingLabels is None and params.outputLinearTransform is None
    assert (params.policy, params.steps, params.iterations, params.initialization) == ("tto", 6, 5, "affine")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    params.fixedLabels = segmentation
    params.fixedLabels = None  # the union with None can be written back
    assert params.fixedLabels is None


def test_parameter_dataclass_has_the_parameter_node_fields(module, scene):
    """The browser app's RegistrationParameters and Slicer's parameter node are made from one table."""
    import dataclasses

    from RLRegistrationMRML.parameters import RegistrationParameters

    node_fields = set(module.RLRegistrationParameterNode.__annotations__)
    assert {f.name for f in dataclasses.fields(RegistrationParameters)} == node_fields
    defaults = RegistrationParameters()
    node = module.RLRegistrationLogic().getParameterNode()
    for name in ("policy", "steps", "iterations", "samples", "regularization", "device", "initialization"):
        assert getattr(defaults, name) == getattr(node, name), name


def test_the_parameter_node_takes_the_tables_classes_ranges_and_choices(module, scene):
    """``parameterNodeWrapper`` reads the class made from ``SETTINGS``: node classes, ``WithinRange`` of the
    numbers (the spin boxes' ranges), ``Choice`` of the choices; it refuses what the table refuses."""
    import typing

    from slicer.parameterNodeWrapper import Choice, WithinRange

    from RLRegistrationMRML.parameters import SETTINGS

    hints = typing.get_type_hints(module.RLRegistrationParameterNode, include_extras=True)
    assert list(hints) == [setting.name for setting in SETTINGS]
    node = module.RLRegistrationLogic().getParameterNode()
    for setting in SETTINGS:
        hint = hints[setting.name]
        if setting.isNode:
            classes = typing.get_args(hint) or (hint,)
            assert {c.__name__ for c in classes if c is not type(None)} == set(setting.nodeClasses)
            assert (type(None) in classes) == (len(setting.nodeClasses) > 1)
            assert getattr(node, setting.name) is None
            continue
        assert getattr(node, setting.name) == setting.default, setting.name
        extras = getattr(hint, "__metadata__", ())
        ranges = [(e.minimum, e.maximum) for e in extras if isinstance(e, WithinRange)]
        choices = [list(e.choices) for e in extras if isinstance(e, Choice)]
        assert ranges == ([tuple(setting.limits)] if setting.limits else []), setting.name
        assert choices == ([list(setting.choices)] if setting.choices else []), setting.name
    for name, value in (("steps", 0), ("regularization", 100.5), ("quality", "ultra")):
        with pytest.raises(ValueError):
            setattr(node, name, value)
    node.regularization = 100.0  # the command line's limit, the panel's too


def test_volume_to_image_is_exact_on_volumes_mrml_reindexed(module, scene, tmp_path):
    """An oblique, axis-flipped NIfTI loaded by Slicer's Volumes logic gives back the file's voxels at the
    file's physical points (MRML re-orders the IJK axes when it loads such a file)."""
    import slicer

    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.integers(0, 1000, (7, 9, 11)).astype(np.int16))
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = rotation @ np.diag([-1.0, 1.0, -1.0])  # flipped axes: the reader re-indexes
    image.SetDirection(tuple(direction.ravel()))
    image.SetSpacing((1.5, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 5.0))
    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(image, str(path))
    reference = sitk.ReadImage(str(path))
    node = slicer.util.loadVolume(str(path))
    back = module.RLRegistrationLogic.volumeToImage(node)
    resampled = sitk.Resample(back, reference, sitk.Transform(), sitk.sitkNearestNeighbor, -1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(reference))


# ---------------------------------------------------------------------------------------------- bad input


def run_rejected(logic, params, scene, message: str) -> None:
    before = node_ids(scene)
    with pytest.raises(ValueError, match=message):
        logic.startRegistration(params, 1)
    assert node_ids(scene) == before, "a rejected run must create nothing"
    assert logic.worker is None


def test_fixed_equal_to_moving_is_refused(module, scene):
    nodes = load_pair(labels=False)
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, movingVolume=nodes["fixed"])
    run_rejected(logic, params, scene, "must be different volumes")


def test_an_output_that_is_an_input_is_refused(module, scene):
    nodes = load_pair(labels=False)
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, warpedVolume=nodes["moving"])
    run_rejected(logic, params, scene, "warped volume output must not be one of the inputs")


def test_moving_under_a_non_linear_transform_with_parent_initialization_is_refused(module, scene):
    import slicer

    nodes = load_pair(labels=False)
    bent = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "bent")
    grid = slicer.vtkOrientedGridTransform()
    image = slicer.vtkImageData() if hasattr(slicer, "vtkImageData") else None
    import vtk

    image = vtk.vtkImageData()
    image.SetDimensions(2, 2, 2)
    image.AllocateScalars(vtk.VTK_DOUBLE, 3)
    grid.SetDisplacementGridData(image)
    bent.SetAndObserveTransformFromParent(grid)
    nodes["moving"].SetAndObserveTransformNodeID(bent.GetID())
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, initialization="parent")
    run_rejected(logic, params, scene, "under a non-linear transform")


def test_segmentations_without_a_common_segment_name_are_refused(module, scene):
    nodes = load_pair()
    fixed = segmentation_from_labels(nodes["fixedLabels"], {})
    moving = segmentation_from_labels(nodes["movingLabels"], {})
    for i in range(moving.GetSegmentation().GetNumberOfSegments()):
        moving.GetSegmentation().GetNthSegment(i).SetName(f"other {i}")
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, fixedLabels=fixed, movingLabels=moving)
    run_rejected(logic, params, scene, "no segment name in common")


def test_a_label_map_on_another_grid_than_its_volume_is_refused(module, scene, tmp_path):
    import slicer

    nodes = load_pair()
    labels = sitk.ReadImage(str(SAMPLE / "fixed_labels.nii.gz"))
    shifted = sitk.Image(labels)
    shifted.SetOrigin(tuple(np.array(labels.GetOrigin()) + [4.0, 0.0, 0.0]))
    path = tmp_path / "shifted_labels.nii.gz"
    sitk.WriteImage(shifted, str(path))
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, fixedLabels=slicer.util.loadLabelVolume(str(path)))
    run_rejected(logic, params, scene, "does not lie on the voxel grid of its volume .fixed. .another origin")


def test_images_that_do_not_overlap_are_refused_with_the_cores_message(module, scene):
    """The core's overlap check (``imaging.check_overlap``, run by the session) reaches the Logic as the
    run's error, the message the panel's error display shows; nothing is left in the scene."""
    nodes = load_pair(labels=False)
    origin = list(nodes["moving"].GetOrigin())
    nodes["moving"].SetOrigin(origin[0] + 1000.0, origin[1], origin[2])
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, initialization="none")
    before = node_ids(scene)
    with pytest.raises(RuntimeError, match="does not overlap the fixed image"):
        logic.runBlocking(params, 1)
    assert node_ids(scene) == before


def test_an_empty_mask_is_refused_naming_it(module, scene):
    import slicer

    from RLRegistrationLib.errors import InputError

    nodes = load_pair(labels=False)
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "empty mask")
    slicer.util.updateVolumeFromArray(
        empty, np.zeros(slicer.util.arrayFromVolume(nodes["fixed"]).shape, np.uint8)
    )
    matrix = vtk_matrix_of(nodes["fixed"])
    empty.SetIJKToRASMatrix(matrix)
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, fixedMask=empty)
    before = node_ids(scene)
    with pytest.raises(InputError, match="fixed mask 'empty mask': mask is empty"):
        logic.startRegistration(params, 1)
    assert node_ids(scene) == before


def vtk_matrix_of(volume_node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix


def test_quality_fine_with_a_learned_policy_alone_is_refused(module, scene, learned_models):
    nodes = load_pair(labels=False)
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, quality="fine", policy="morphseek-brain-synth-warmup")
    run_rejected(logic, params, scene, "Quality 'fine' sets the tto schedule")
