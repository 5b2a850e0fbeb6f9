"""The Slicer module's Logic against Slicer's real core (``slicer-core`` + Slicer's own Python layer).

Volumes come in through Slicer's Volumes logic, transforms through MRML's storage nodes and the Transforms
logic; ``RLRegistration.py`` is imported as Slicer imports it (real ``parameterNodeWrapper``,
``ScriptedLoadableModule``). Every check is a number: point maps at 1000 points against the ``.h5``,
voxels against ``sitk.Resample``, Dice against the label maps. Skipped, with the reason, where
``../shared/slicer-python`` or ``slicer-core`` is missing (a user's clone); CI has both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicer_runtime  # noqa: E402

REASON = slicer_runtime.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
SAMPLE = slicer_runtime.ROOT / "RLRegistration" / "RLRegistrationLib" / "sample_data"
FLIP = np.array([-1.0, -1.0, 1.0])


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


def random_points_ras(volume_node, n: int = 1000, seed: int = 0) -> np.ndarray:
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    low, high = np.array(bounds[0::2]), np.array(bounds[1::2])
    return low + (high - low) * np.random.default_rng(seed).random((n, 3))


def through_sitk(transform: sitk.Transform, points_ras: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(p * FLIP)) for p in points_ras]) * FLIP


def node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


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


# ---------------------------------------------------------------------------------------------- a full run


@pytest.fixture(scope="module")
def registered(module):
    """One run on the sample pair: labels, the moving volume under a user's shift (initialization), 2 steps,
    then continue 1 and step back 1. Yields what the tests below inspect."""
    import slicer

    slicer.mrmlScene.Clear(0)
    nodes = load_pair()
    initialNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial")
    shift = np.eye(4)
    shift[:3, 3] = [2.0, -1.0, 1.5]
    initialNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    nodes["moving"].SetAndObserveTransformNodeID(initialNode.GetID())
    movingBefore = slicer.util.arrayFromVolume(nodes["moving"]).copy()
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes)
    params.warpedVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    reports = logic.runBlocking(params, 2)
    more = logic.runBlocking(params, 1, continueRun=True)
    stepsLeft = logic.stepBack(params)
    yield {
        "logic": logic,
        "params": params,
        "nodes": nodes,
        "initial": initialNode,
        "shift": shift,
        "movingBefore": movingBefore,
        "reports": reports,
        "more": more,
        "stepsLeft": stepsLeft,
        "result": logic.result(params),
    }
    logic.forgetSession()
    slicer.mrmlScene.Clear(0)


def test_run_continue_and_step_back_improve_dice(registered):
    assert [r.index for r in registered["reports"]] == [0, 1, 2]
    assert [r.index for r in registered["more"]] == [3]
    assert registered["stepsLeft"] == 2
    dice = [r.dice for r in registered["reports"]]
    assert dice[2] > dice[0] + 0.05, dice  # the sample pair: about 0.43 after the affine, 0.55 after 2 steps
    assert registered["logic"].summary().startswith("2 steps")


def test_inputs_are_untouched_and_the_initial_transform_is_in_the_result(registered):
    import slicer

    nodes, params = registered["nodes"], registered["params"]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["moving"]), registered["movingBefore"])
    assert nodes["moving"].GetParentTransformNode().GetID() == registered["initial"].GetID()
    initial, runAffine = registered["logic"].initialTransform(params)
    assert runAffine
    np.testing.assert_allclose(
        np.array(initial.GetTranslation()) * FLIP, -registered["shift"][:3, 3], atol=1e-9
    )
    np.testing.assert_allclose(
        registered["logic"].session.initial_transform.GetTranslation(), initial.GetTranslation()
    )


def test_the_node_chain_is_the_h5_transform_at_1000_points(registered, tmp_path):
    from RLRegistrationMRML.scene_logic import pointsFromWorld

    params, result = registered["params"], registered["result"]
    gridNode, linearNode = params.outputTransform, params.outputLinearTransform
    assert linearNode.GetParentTransformNode().GetID() == gridNode.GetID()
    for node in (gridNode, linearNode):  # tagged like SlicerElastix's results
        assert node.GetNodeReferenceID(node.GetMovingNodeReferenceRole()) == params.movingVolume.GetID()
        assert node.GetNodeReferenceID(node.GetFixedNodeReferenceRole()) == params.fixedVolume.GetID()
    points = random_points_ras(params.fixedVolume)
    path = tmp_path / "result.h5"
    registered["logic"].saveTransform(params, str(path))
    expected = through_sitk(sitk.ReadTransform(str(path)), points)
    chain = pointsFromWorld(linearNode, points)
    print(f"node chain vs .h5 at 1000 points: max {np.abs(chain - expected).max():.2e} mm")
    np.testing.assert_allclose(chain, expected, atol=1e-3)
    # the grid node alone is x + u(x): the displayed field is the deformable refinement, a few mm at most,
    # while the chain moves points by the pre-alignment too
    gridOnly = pointsFromWorld(gridNode, points)
    assert np.abs(gridOnly - points).max() < np.abs(expected - points).max()
    u = result.displacement
    uRas = np.array(
        [np.array(u.EvaluateAtPhysicalPoint(tuple(p * FLIP), sitk.sitkLinear)) * FLIP for p in points]
    )
    inside = np.all(np.abs(uRas) > 0, axis=1) | np.all(uRas == 0, axis=1)
    np.testing.assert_allclose(gridOnly[inside], (points + uRas)[inside], atol=1e-3)


def test_h5_loads_back_linear_through_the_logic_and_cubic_through_slicer(registered, tmp_path):
    import slicer

    from RLRegistrationMRML.scene_logic import pointsFromWorld

    params, logic = registered["params"], registered["logic"]
    path = tmp_path / "result.h5"
    logic.saveTransform(params, str(path))
    points = random_points_ras(params.fixedVolume, seed=1)
    expected = through_sitk(sitk.ReadTransform(str(path)), points)
    np.testing.assert_allclose(pointsFromWorld(logic.loadTransform(str(path)), points), expected, atol=1e-3)
    cubic = np.abs(pointsFromWorld(slicer.util.loadTransform(str(path)), points) - expected).max()
    print(f"Slicer's cubic reload vs .h5 at 1000 points: max {cubic:.3f} mm")
    assert 1e-3 < cubic < 1.0  # Slicer's converter interpolates the field cubically (README says so)


def test_nodes_saved_through_slicer_storage_nodes_load_back_equal(registered, tmp_path):
    import slicer

    from RLRegistrationMRML.scene_logic import pointsFromWorld

    params, logic = registered["params"], registered["logic"]
    points = random_points_ras(params.fixedVolume, seed=2)
    expected = pointsFromWorld(params.outputLinearTransform, points)
    reloaded = []
    for name, node in (("grid", params.outputTransform), ("linear", params.outputLinearTransform)):
        path = tmp_path / f"{name}.h5"
        assert slicer.util.exportNode(node, str(path))
        reloaded.append(logic.loadTransform(str(path)))
    reloaded[1].SetAndObserveTransformNodeID(reloaded[0].GetID())
    np.testing.assert_allclose(pointsFromWorld(reloaded[1], points), expected, atol=1e-3)


def test_apply_to_moving_puts_it_under_the_chain_and_a_new_run_starts_from_the_old_parent(registered):
    from RLRegistrationMRML.parameters import PREVIOUS_PARENT_ATTRIBUTE

    params, logic = registered["params"], registered["logic"]
    moving = params.movingVolume
    logic.applyToMoving(params)
    try:
        assert moving.GetParentTransformNode().GetID() == params.outputLinearTransform.GetID()
        assert moving.GetAttribute(PREVIOUS_PARENT_ATTRIBUTE) == registered["initial"].GetID()
        initial, _ = logic.initialTransform(params)  # not the result composed with itself
        np.testing.assert_allclose(
            np.array(initial.GetTranslation()) * FLIP, -registered["shift"][:3, 3], atol=1e-9
        )
    finally:
        moving.SetAndObserveTransformNodeID(registered["initial"].GetID())


def test_harden_matches_sitk_resample_through_the_h5(module, registered, tmp_path):
    """Last of the run's tests: hardening changes the moving volume's voxels."""
    params, logic = registered["params"], registered["logic"]
    path = tmp_path / "result.h5"
    logic.saveTransform(params, str(path))
    moving = params.movingVolume
    logic.harden(params)
    assert moving.GetParentTransformNode() is None
    hardened = module.RLRegistrationLogic.volumeToImage(moving)
    movingImage = sitk.ReadImage(str(SAMPLE / "moving.nii.gz"), sitk.sitkFloat32)
    expected = sitk.Resample(movingImage, hardened, sitk.ReadTransform(str(path)), sitk.sitkLinear, 0.0)
    got = sitk.GetArrayFromImage(hardened).astype(np.float64)
    want = sitk.GetArrayFromImage(expected).astype(np.float64)
    interior = np.zeros(got.shape, bool)
    interior[2:-2, 2:-2, 2:-2] = True
    difference = np.abs(got - want)[interior]
    print("harden vs sitk.Resample: median / p99 / max", np.percentile(difference, [50, 99, 100]))
    assert difference.max() <= 0.51, np.percentile(difference, [50, 99, 100])  # int16 rounding


# ---------------------------------------------------------------------------------------------- more paths


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


def test_segmentations_give_the_label_maps_dice(module, scene):
    import slicer

    nodes = load_pair()
    values = np.unique(slicer.util.arrayFromVolume(nodes["fixedLabels"]))
    names = {int(v): f"structure {int(v)}" for v in values if v > 0}
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, iterations=1)
    withLabels = logic.runBlocking(params, 1)
    params.fixedLabels = segmentation_from_labels(nodes["fixedLabels"], names)
    params.movingLabels = segmentation_from_labels(nodes["movingLabels"], names)
    withSegmentations = logic.runBlocking(params, 1)
    assert withSegmentations[0].dice == pytest.approx(withLabels[0].dice, abs=1e-6)
    assert withSegmentations[1].dice == pytest.approx(withLabels[1].dice, abs=1e-6)


def test_output_goes_under_the_chosen_parent(module, scene):
    import slicer

    from RLRegistrationMRML.scene_logic import pointsFromWorld

    nodes = load_pair(labels=False)
    parent = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "output parent")
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, iterations=1, outputParentTransform=parent)
    logic.runBlocking(params, 1)
    assert params.outputTransform.GetParentTransformNode().GetID() == parent.GetID()
    shift = np.eye(4)
    shift[:3, 3] = [5.0, 0.0, -3.0]
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    points = random_points_ras(nodes["fixed"], n=100)
    # a point of the parent's world first goes into the parent's coordinates, then through T
    expected = through_sitk(logic.result(params).transform, points - shift[:3, 3])
    np.testing.assert_allclose(pointsFromWorld(params.outputLinearTransform, points), expected, atol=1e-3)


def test_cancel_before_the_first_step_leaves_no_created_node(module, scene):
    nodes = load_pair(labels=False)
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes)
    before = node_ids(scene)
    logic.startRegistration(params, 3)
    logic.cancel(wait=True)
    update = logic.processMessages(params)
    assert update.finished and update.cancelled and update.stepsDone == 0
    logic.discardCreatedNodes(params)  # what the panel does when no step was made
    assert node_ids(scene) == before
    assert params.outputTransform is None and params.outputLinearTransform is None


def test_scene_closed_during_a_run_stops_it(module, scene):
    import time

    nodes = load_pair(labels=False)
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, iterations=1)
    logic.startRegistration(params, 50)
    worker = logic.worker
    deadline = time.time() + 120
    while not logic.processMessages(params).reports and time.time() < deadline:
        time.sleep(0.05)
    scene.Clear(0)
    assert logic.session is None and logic.worker is None
    assert worker.join(60), "the worker must stop after the step in progress"
    assert worker.session.step_count < 50
    update = logic.processMessages(params)  # nothing left to show, no error
    assert not update.reports and not update.error


def test_a_dropped_logic_leaves_its_scene_nothing_to_call_back():
    """The scene watches its logic through a weak reference: a logic the front-end dropped is freed at once
    (no logic -> scene -> observer -> logic cycle for the garbage collector), and closing the scene later
    calls nothing. (The cycle made a scene finalized inside the collector call back into a half-collected
    logic: a segmentation fault in a test run.)"""
    import gc
    import weakref

    from RLRegistrationMRML.core_scene import create_core_scene
    from RLRegistrationMRML.scene_logic import RegistrationSceneLogic

    closes = []

    class Recording(RegistrationSceneLogic):
        def _onSceneStartClose(self, caller=None, event=None) -> None:
            closes.append(event)
            super()._onSceneStartClose(caller, event)

    core = create_core_scene()
    logic = Recording(core.scene)
    logic._observeSceneClose()
    core.scene.Clear(0)
    assert len(closes) == 1  # alive: the scene's close reaches it
    dropped = Recording(core.scene)
    dropped._observeSceneClose()
    gone = weakref.ref(dropped)
    del dropped
    assert gone() is None  # freed by its reference count alone, not kept by the scene
    gc.collect()
    core.scene.Clear(0)  # the dropped logic's observer finds nothing to call
    assert len(closes) == 2


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


# ---------------------------------------------------------------------------------------------- self-test


def test_the_modules_own_self_test_passes_headless(module, scene):
    """``RLRegistrationTest``, the class Slicer's *Reload and Test* runs: every method that needs no real Qt
    widget (test_RLRegistrationPolicyDefaults drives the panel's combo boxes: it needs the widget)."""
    test = module.RLRegistrationTest()
    test.setUp()
    test.test_RLRegistrationWorkflow()
    test.setUp()
    test.test_RLRegistrationMorphSeekSampling()


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


# ---------------------------------------------------------------------------------------------- pre-alignment, masks


def test_rigid_pre_alignment_with_a_label_map_mask_and_a_segmentation_mask(module, scene):
    """Initialization 'rigid' gives a rigid pre-alignment (orthonormal matrix); the fixed mask is a label map,
    the moving mask a segmentation (exported on the moving grid): both reach the session."""
    import slicer

    nodes = load_pair()
    values = np.unique(slicer.util.arrayFromVolume(nodes["movingLabels"]))
    movingMask = segmentation_from_labels(nodes["movingLabels"], {int(v): f"s{int(v)}" for v in values if v})
    logic = module.RLRegistrationLogic()
    params = fast_parameters(
        logic,
        nodes,
        iterations=1,
        initialization="rigid",
        fixedMask=nodes["fixedLabels"],
        movingMask=movingMask,
    )
    reports = logic.runBlocking(params, 1)
    session = logic.session
    assert session.options.initialization == "rigid"
    fixedMask = sitk.GetArrayFromImage(session.fixed_mask)
    movingMaskImage = sitk.GetArrayFromImage(session.moving_mask)
    np.testing.assert_array_equal(fixedMask > 0, slicer.util.arrayFromVolume(nodes["fixedLabels"]) > 0)
    assert (movingMaskImage > 0).sum() == (slicer.util.arrayFromVolume(nodes["movingLabels"]) > 0).sum()
    matrix = np.array(session.affine.GetMatrix()).reshape(3, 3)
    np.testing.assert_allclose(matrix.T @ matrix, np.eye(3), atol=1e-6)
    assert reports[-1].dice > reports[0].dice


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


def test_quality_fine_sets_the_presets_grid_and_schedule(module, scene):
    """The panel's "fine" quality reaches the session: the preset's working spacing (never finer than the
    fixed volume), no voxel cap, its step levels and NCC window; Dice still improves."""
    from RLRegistrationLib.registration.quality import QUALITY_PRESETS

    nodes = load_pair()
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, iterations=1, quality="fine")
    reports = logic.runBlocking(params, 2)
    preset = QUALITY_PRESETS["fine"]
    session = logic.session
    spacing = max(1.0, min(logic._fixedImage.GetSpacing()))
    assert session.options.working_spacing_mm == pytest.approx(spacing)
    assert session.options.max_working_voxels is None
    assert session.policy.config.pyramid == preset.tto_overrides(spacing)["pyramid"]
    assert session.policy.config.ncc_window == 5
    assert reports[-1].dice > reports[0].dice


def test_quality_fine_with_a_learned_policy_alone_is_refused(module, scene, learned_models):
    nodes = load_pair(labels=False)
    logic = module.RLRegistrationLogic()
    params = fast_parameters(logic, nodes, quality="fine", policy="morphseek-brain-synth-warmup")
    run_rejected(logic, params, scene, "Quality 'fine' sets the tto schedule")


def test_a_t2_moving_volume_is_registered_with_the_intensity_mapping_and_the_panel_says_so(
    module, scene, tmp_path
):
    """The panel's run on a T1 fixed and a T2-like moving volume (re-synthesized from the moving labels):
    the TTO maps the moving contrast by itself and the status line says so; Dice improves."""
    import slicer

    from RLRegistrationLib.synthesis.contrast import synthesize_volume

    nodes = load_pair()
    t2 = tmp_path / "moving_t2.nii.gz"
    sitk.WriteImage(
        synthesize_volume(sitk.ReadImage(str(SAMPLE / "moving_labels.nii.gz")), contrast="t2", rng=7), str(t2)
    )
    nodes["moving"] = slicer.util.loadVolume(str(t2))
    logic = module.RLRegistrationLogic()
    reports = logic.runBlocking(fast_parameters(logic, nodes, iterations=3), 2)
    assert reports[-1].diagnostics["intensity_mapping"] == 1.0
    assert "intensity mapping on (the pre-aligned images correlate -" in logic.summary()
    assert reports[-1].dice > reports[0].dice
