"""What a panel's run chose and decided, on Slicer's real MRML: quality "auto" and the pair's kind (from the
settings table, and from the subject hierarchy's patient and study items), steps left to the run's plan
unless the user changed them, the plan's and the session's notes in the panel, and a result that is the
pre-alignment (step 0) when the session keeps the linear result or drops the deformable steps: what the
panel exports then is what ``session.final_result`` returns.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicer_runtime  # noqa: E402

from RLRegistrationLib.io.sample_pair import SAMPLE_FILES  # noqa: E402
from RLRegistrationLib.options import PAIR_KINDS  # noqa: E402
from RLRegistrationMRML.parameters import (  # noqa: E402
    PAIR_MODES,
    QUALITIES,
    SETTINGS_BY_NAME,
    RegistrationParameters,
    checkSetting,
)

REASON = slicer_runtime.unavailable_reason()
slicer_only = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def test_quality_auto_comes_first_and_the_pair_is_a_setting_of_the_table():
    assert QUALITIES[0][0] == "auto" and SETTINGS_BY_NAME["quality"].default == "auto"
    assert tuple(PAIR_MODES) == PAIR_KINDS and SETTINGS_BY_NAME["pair"].default == "auto"
    assert SETTINGS_BY_NAME["pair"].run and checkSetting("pair", "same-patient") == "same-patient"
    with pytest.raises(ValueError, match="unknown pair 'twins'"):
        checkSetting("pair", "twins")


# ---------------------------------------------------------------------------------------------- on MRML


def shifted_fixed(mm: float = 2.0) -> sitk.Image:
    """The sample fixed image moved by ``mm`` along x: one session by the images (head motion)."""
    from RLRegistrationLib.io.imaging import read_image

    image = read_image(SAMPLE_FILES["fixed"], "fixed")
    moved = sitk.Image(image)
    origin = list(image.GetOrigin())
    origin[0] += mm
    moved.SetOrigin(origin)
    return moved


def make_panel(module, scene, moving: sitk.Image | None = None, params=None):
    """A controller on the module's Logic with the sample fixed image and ``moving`` (default: the
    sample's moving image), one iteration per step on the CPU."""
    from RLRegistrationLib.io.imaging import read_image
    from RLRegistrationMRML.panel_controller import PanelController
    from RLRegistrationMRML.volume_nodes import volume_node_from_image

    logic = module.RLRegistrationLogic()
    params = params or RegistrationParameters()
    controller = PanelController(logic, params)
    controller.loadChoices()
    params.fixedVolume = volume_node_from_image(scene, read_image(SAMPLE_FILES["fixed"], "fixed"), "fixed")
    moving = moving if moving is not None else read_image(SAMPLE_FILES["moving"], "moving")
    params.movingVolume = volume_node_from_image(scene, moving, "moving")
    assert controller.updateSettings(iterations=1, device="cpu"), controller.error
    controller.refreshInputs()
    return controller


def run(controller, timeout: float = 600) -> None:
    assert controller.start(), controller.error
    deadline = time.monotonic() + timeout
    while controller.state.busy and time.monotonic() < deadline:
        controller.poll()
        time.sleep(0.02)
    assert not controller.state.busy, "the run did not end"
    assert not controller.error, controller.error


def points_inside(image: sitk.Image, n: int = 300) -> np.ndarray:
    index = np.random.default_rng(0).uniform(0.1, 0.9, (n, 3)) * (np.array(image.GetSize()) - 1)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])


def assert_same_transform(path: Path, expected: sitk.Transform, image: sitk.Image) -> None:
    saved = sitk.ReadTransform(str(path))
    points = points_inside(image)
    got = np.array([saved.TransformPoint(tuple(p)) for p in points])
    want = np.array([expected.TransformPoint(tuple(p)) for p in points])
    assert np.abs(got - want).max() < 1e-3


def put_under(sh, node, parent) -> None:
    """The node's subject hierarchy item under ``parent`` (created, as Slicer's plugins do when a node is
    added; the core alone makes none)."""
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


@slicer_only
def test_the_subject_hierarchy_says_one_session_or_one_patient(module, scene):
    import slicer

    from RLRegistrationMRML.subject_hierarchy import pairFromSubjectHierarchy

    volumes = [scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name) for name in "abcd"]
    assert pairFromSubjectHierarchy(scene, volumes[0], volumes[1]) is None  # loaded from files: no patient
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Anon^Patient")
    other = sh.CreateSubjectItem(sh.GetSceneItemID(), "Other^Patient")
    baseline = sh.CreateStudyItem(patient, "baseline MR")
    followup = sh.CreateStudyItem(patient, "follow-up MR")
    for volume, parent in zip(volumes, (baseline, baseline, followup, other)):
        put_under(sh, volume, parent)
    kind, reason = pairFromSubjectHierarchy(scene, volumes[0], volumes[1])
    assert kind == "same-session" and "baseline MR" in reason and "Anon^Patient" in reason
    assert pairFromSubjectHierarchy(scene, volumes[0], volumes[2])[0] == "same-patient"
    assert pairFromSubjectHierarchy(scene, volumes[0], volumes[3]) is None  # two patients: the images decide


@slicer_only
def test_steps_are_the_plans_unless_changed_and_the_hierarchys_pair_reaches_the_run(module, scene):
    """Quality auto, the Steps box untouched: the plan's steps run (and the box shows them); the pair of
    one study reaches the session; notes say both. Steps changed by the user: asked, they run."""
    import slicer

    controller = make_panel(module, scene)
    params, logic = controller.params, controller.logic
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "P"), "S")
    for volume in (params.fixedVolume, params.movingVolume):
        put_under(sh, volume, study)
    assert params.quality == "auto" and not controller.asked("steps")
    run(controller)
    assert not logic.session.options.steps_asked
    assert logic.session.options.pair == "same-session"
    assert params.steps == logic.plan.steps  # the box shows what the plan runs
    assert any(n.startswith("quality auto ->") for n in controller.notes), controller.notes
    assert any("subject hierarchy" in n for n in controller.notes), controller.notes
    assert controller.state.state.value == "done" and controller.state.steps_done == 0
    assert "No deformable refinement" in controller.status and controller.flags().export_enabled

    controller.forgetRun()
    assert controller.updateSettings(pair="different-subjects", steps=1) and controller.asked("steps")
    run(controller)
    assert logic.session.options.steps_asked and controller.state.steps_done == 1
    assert "deformable refinement" in controller.status


@slicer_only
def test_a_pair_of_one_session_keeps_the_pre_alignment_and_exports_it(module, scene, tmp_path):
    """fixed = the sample image, moving = it moved by 2 mm: one session by the images, no deformable step;
    the result is step 0, which Save exports; Continue runs deformable steps anyway."""
    controller = make_panel(module, scene, moving=shifted_fixed())
    logic = controller.logic
    run(controller)
    assert controller.state.state.value == "done" and controller.state.steps_done == 0
    assert controller.status.startswith("No deformable refinement: two scans of one session")
    assert "Continue runs deformable steps anyway" in controller.status
    assert any(n.startswith("pair: same session") for n in controller.notes), controller.notes
    assert any("--steps" not in n and "click Continue" in n for n in controller.notes), controller.notes
    flags = controller.flags()
    assert flags.export_enabled and flags.continue_enabled and not flags.slider_enabled
    logic.saveTransform(controller.params, str(tmp_path / "kept.h5"))
    expected, _ = logic.session.final_result()
    assert expected.reports[-1].index == 0
    assert_same_transform(tmp_path / "kept.h5", expected.transform, logic._fixedImage)

    assert controller.updateSettings(steps=1) and controller.start(continueRun=True), controller.error
    deadline = time.monotonic() + 600
    while controller.state.busy and time.monotonic() < deadline:
        controller.poll()
        time.sleep(0.02)
    assert logic.session.step_count == 1  # asked for, the step ran


@slicer_only
def test_deformable_steps_that_do_not_help_are_dropped_and_step_0_is_exported(module, scene, tmp_path):
    """The same pair with Steps changed to 2: the steps run, do not improve the gradient alignment and are
    dropped: the panel shows step 0, says so, and Save and Apply give final_result's transform."""
    from RLRegistrationMRML.scene_export import pointsFromWorld

    controller = make_panel(module, scene, moving=shifted_fixed())
    params, logic = controller.params, controller.logic
    assert controller.updateSettings(steps=2)
    run(controller)
    assert controller.state.steps_done == 2 and logic.session.step_count == 2
    assert "Deformable refinement dropped" in controller.status, controller.status
    assert "The result is the pre-alignment (step 0)" in controller.status
    assert any(n.startswith("deformable refinement dropped") for n in controller.notes), controller.notes
    assert controller.state.displayed_step == 0 and logic.displayedStep == 0
    assert logic.fullResolutionStep == 0 and controller.flags().slider_value == 0
    expected, verdicts = logic.session.final_result()
    assert expected.reports[-1].index == 0 and not verdicts[-1].accepted
    logic.saveTransform(params, str(tmp_path / "dropped.h5"))
    assert_same_transform(tmp_path / "dropped.h5", expected.transform, logic._fixedImage)
    logic.applyToMoving(params)
    points = points_inside(logic._fixedImage, 50)
    ras = points * np.array([-1.0, -1.0, 1.0])
    moved = pointsFromWorld(params.movingVolume.GetParentTransformNode(), ras) * np.array([-1.0, -1.0, 1.0])
    want = np.array([expected.transform.TransformPoint(tuple(p)) for p in points])
    assert np.abs(moved - want).max() < 1e-2
