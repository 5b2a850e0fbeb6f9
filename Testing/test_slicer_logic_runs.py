"""The Slicer module's Logic against Slicer's real core (``slicer-core`` + Slicer's own Python layer), its
runs: one run on the sample pair (continue, step back, the node chain against the ``.h5``, saving and
loading back, apply, harden), segmentations as labels, the output's parent, cancel, a scene closed during
a run, a dropped Logic, the module's own self-test, a rigid pre-alignment with masks, quality "fine" and a
T2 moving volume. Volumes come in through Slicer's Volumes logic, transforms through MRML's storage nodes
and the Transforms logic; every check is a number: point maps at 1000 points against the ``.h5``, voxels
against ``sitk.Resample``, Dice against the label maps. Skipped, with the reason, where
``../shared/slicer-python`` or ``slicer-core`` is missing (a user's clone); CI has both.
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
FLIP = np.array([-1.0, -1.0, 1.0])


def random_points_ras(volume_node, n: int = 1000, seed: int = 0) -> np.ndarray:
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    low, high = np.array(bounds[0::2]), np.array(bounds[1::2])
    return low + (high - low) * np.random.default_rng(seed).random((n, 3))


def through_sitk(transform: sitk.Transform, points_ras: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(p * FLIP)) for p in points_ras]) * FLIP


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


# ---------------------------------------------------------------------------------------------- self-test


def test_the_modules_own_self_test_passes_headless(module, scene):
    """``RLRegistrationTest``, the class Slicer's *Reload and Test* runs: every method that needs no real Qt
    widget (test_RLRegistrationPolicyDefaults drives the panel's combo boxes: it needs the widget)."""
    test = module.RLRegistrationTest()
    test.setUp()
    test.test_RLRegistrationWorkflow()
    test.setUp()
    test.test_RLRegistrationMorphSeekSampling()


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
