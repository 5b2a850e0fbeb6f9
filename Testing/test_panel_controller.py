"""The shared panel controller (``RLRegistrationMRML.panel_controller``) and its settings table
(``RLRegistrationMRML.parameters``) on Slicer's real core: what the Slicer panel and the browser app do
when their controls are used. Each run test drives the controller with the Slicer module's parameter node
and with the plain ``RegistrationParameters`` the browser app uses.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicer_runtime  # noqa: E402

from RLRegistrationLib.io.sample_pair import SAMPLE_FILES  # noqa: E402
from RLRegistrationLib.options import RANGES  # noqa: E402
from RLRegistrationMRML.panel_controller import CANCEL_DEBOUNCE_S  # noqa: E402
from RLRegistrationMRML.panel_messages import finishedStatus  # noqa: E402
from RLRegistrationMRML.parameters import SETTINGS, RegistrationParameters, checkSetting  # noqa: E402

REASON = slicer_runtime.unavailable_reason()
slicer_only = pytest.mark.skipif(REASON is not None, reason=REASON or "")


# ---------------------------------------------------------------------------------------------- the table


def test_the_settings_table_takes_its_ranges_from_the_run_options():
    by_name = {s.name: s for s in SETTINGS}
    for name in ("iterations", "samples", "regularization"):
        assert by_name[name].limits == RANGES[name]
    assert by_name["steps"].limits == (1, RANGES["steps"][1])  # a panel's run makes at least one step
    assert checkSetting("steps", "12") == 12 and checkSetting("regularization", 100) == 100.0
    for name, value, message in (
        ("steps", 0, "steps must be between 1 and 500, got 0"),
        ("regularization", 100.5, "regularization must be between 0 and 100"),
        ("iterations", "many", "iterations: 'many' is not a number"),
        ("samples", float("nan"), "samples must be between 1 and 16"),
        ("quality", "ultra", "unknown quality 'ultra'"),
        ("device", "tpu", "unknown device 'tpu'"),
        ("showWeightMap", "yes", "showWeightMap must be true or false"),
        ("colour", 1, "unknown option 'colour'"),
        ("fixedVolume", "x", "fixedVolume holds a node"),
    ):
        with pytest.raises(ValueError, match=message):
            checkSetting(name, value)


def test_registration_parameters_are_made_from_the_table():
    import dataclasses

    fields = dataclasses.fields(RegistrationParameters)
    assert [f.name for f in fields] == [s.name for s in SETTINGS]
    types = {f.name: f.type for f in fields}
    assert types["fixedVolume"] == "vtkMRMLScalarVolumeNode | None"
    assert types["fixedLabels"] == "vtkMRMLLabelMapVolumeNode | vtkMRMLSegmentationNode | None"
    assert types["steps"] == "int" and types["overlayOpacity"] == "float"
    defaults = RegistrationParameters()
    assert all(getattr(defaults, s.name) == s.default for s in SETTINGS)


# ---------------------------------------------------------------------------------------------- on MRML


@pytest.fixture(params=["parameter node", "dataclass"])
def panel(request, module, scene):
    """A controller on the module's Logic, its params the Slicer parameter node or the web's dataclass,
    with the sample pair read voxel for voxel and fast settings."""
    from RLRegistrationLib.io.imaging import read_image
    from RLRegistrationMRML.panel_controller import PanelController
    from RLRegistrationMRML.volume_nodes import volume_node_from_image

    logic = module.RLRegistrationLogic()
    params = logic.getParameterNode() if request.param == "parameter node" else RegistrationParameters()
    controller = PanelController(logic, params)
    controller.loadChoices()
    workers, startWorker = [], logic._startWorker

    def recordWorker(steps):  # every worker is joined at the end (a thread left running aborts Python)
        startWorker(steps)
        workers.append(logic.worker)

    logic._startWorker = recordWorker
    for role in ("fixed", "moving"):
        node = volume_node_from_image(scene, read_image(SAMPLE_FILES[role], role), role)
        setattr(params, f"{role}Volume", node)
    assert controller.updateSettings(iterations=1, device="cpu", steps=2), controller.error
    controller.refreshInputs()
    yield controller
    for worker in workers:
        worker.cancel()
        assert worker.join(120)
    logic.forgetSession()


def poll_until_idle(controller, timeout: float = 300):
    results = []
    deadline = time.monotonic() + timeout
    while controller.state.busy and time.monotonic() < deadline:
        results.append(controller.poll())
        time.sleep(0.02)
    assert not controller.state.busy, "the run did not end"
    return results


def node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


@slicer_only
def test_a_run_continue_step_back_and_replay_through_the_controller(panel):
    assert panel.apply()
    assert panel.state.state.value == "running" and panel.flags().apply_text == "Cancel"
    assert panel.progress.startswith("Preparing") and panel.status.startswith("Running on")
    results = poll_until_idle(panel)
    assert any(r.finished for r in results) and not any(r.failed for r in results)
    assert panel.state.state.value == "done" and panel.state.steps_done == 2
    assert panel.progress.startswith("Step 2/2") and panel.status.startswith("2 steps, NCC")
    assert panel.flags().export_enabled and panel.params.outputTransform is not None
    assert panel.updateSettings(steps=1) and panel.start(continueRun=True)  # continue: the Steps box
    poll_until_idle(panel)
    assert panel.state.steps_done == 3
    assert panel.stepBack() and panel.state.steps_done == 2 and panel.logic.session.step_count == 2
    assert panel.showStep(1) and panel.logic.displayedStep == 1
    assert panel.play() and panel.logic.displayedStep == 1
    assert panel.tick() and panel.logic.displayedStep == 2 and not panel.state.playing
    assert not panel.tick()  # the end: nothing more to show
    assert not panel.error


@slicer_only
def test_policy_and_quality_bring_their_measured_settings_and_bad_values_change_nothing(panel):
    params = panel.params
    assert panel.updateSettings(quality="fine") and (params.quality, params.steps) == ("fine", 4)
    assert panel.updateSettings(quality="followup") and params.regularization == 6.0
    tto = panel.policies["tto"]
    assert panel.updateSettings(quality="standard") and params.steps == tto.default_steps
    before = {s.name: getattr(params, s.name) for s in SETTINGS if s.run}
    for values in ({"steps": 0}, {"policy": "no-such-policy"}, {"quality": "ultra"}, {"device": "cuda"}):
        if values.get("device") == "cuda" and any(ok for v, _, ok in panel.devices if v == "cuda"):
            continue  # a machine with a GPU offers it
        assert not panel.updateSettings(**values), values
        assert panel.error and "\n" not in panel.error
    assert {s.name: getattr(params, s.name) for s in SETTINGS if s.run} == before
    learned = [c for c in panel.policies.values() if c.name != "tto" and c.option_defaults]
    if learned:
        choice = learned[0]
        assert panel.updateSettings(policy=choice.name)
        assert params.steps == choice.default_steps
        assert params.samples == 1 or choice.supports_sampling


@slicer_only
def test_a_chain_at_fine_shows_its_learned_steps_and_the_fine_levels_it_keeps(learned_models, panel):
    params = panel.params
    assert panel.updateSettings(policy="spac-brain-synth+tto", quality="standard") and params.steps == 6
    assert panel.updateSettings(quality="fine") and params.steps == 1 + 3  # learned, then 4, 2, 1 mm
    assert panel.updateSettings(quality="auto") and not panel.error


@slicer_only
def test_options_are_locked_while_running_and_cancel_before_the_first_step_leaves_nothing(panel, scene):
    before = node_ids(scene)
    assert panel.apply()
    assert not panel.updateSettings(steps=3) and "while a registration runs" in panel.error
    assert panel.apply()  # a second click at once is a double click on Apply: not a Cancel
    assert panel.state.state.value == "running"
    panel.runStarted -= CANCEL_DEBOUNCE_S  # a second later
    assert panel.apply()  # the button is Cancel now
    assert panel.state.state.value == "cancelling" and panel.status.startswith("Cancelling")
    poll_until_idle(panel)
    if panel.state.state.value == "idle":  # stopped before its first step
        assert panel.status.startswith("Cancelled before the first step")
        assert node_ids(scene) == before and panel.logic.session is None
    else:
        assert panel.status.startswith("Cancelled after")


@slicer_only
def test_a_failed_run_is_forgotten_with_one_line_for_the_panel(panel, scene, monkeypatch):
    from RLRegistrationLib.registration.session import RegistrationSession

    def broken(self, steps):
        raise ValueError("the policy broke\nsecond line")
        yield

    monkeypatch.setattr(RegistrationSession, "run", broken)
    before = node_ids(scene)
    assert panel.apply()
    results = poll_until_idle(panel)
    assert any(r.failed for r in results)
    assert panel.state.state.value == "failed" and panel.logic.session is None
    assert panel.error == "Registration failed: ValueError: second line"
    assert "Traceback" in panel.errorDetails and not panel.cpuRetryOffered
    assert node_ids(scene) == before  # the run's new nodes are gone
    assert not panel.flags().export_enabled


@slicer_only
def test_out_of_gpu_memory_offers_the_cpu_and_runs_there(panel, monkeypatch):
    from RLRegistrationLib.registration.session import RegistrationSession

    run = RegistrationSession.run

    def out_of_memory(self, steps):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield

    assert panel.updateSettings(device="auto")
    monkeypatch.setattr(RegistrationSession, "run", out_of_memory)
    assert panel.apply()
    poll_until_idle(panel)
    assert panel.cpuRetryOffered and panel.status == "The GPU ran out of memory."
    assert "Run the registration on the CPU instead?" in panel.cpuRetryQuestion()
    monkeypatch.setattr(RegistrationSession, "run", run)
    assert panel.retryOnCpu()
    assert panel.params.device == "cpu" and not panel.cpuRetryOffered
    poll_until_idle(panel)
    assert panel.state.state.value == "done"
    assert not panel.retryOnCpu()  # offered once, for the failed run only


@slicer_only
def test_a_failed_display_stops_the_run_and_forgets_its_session(panel, monkeypatch):
    assert panel.apply()

    def deleted_node(params, frame):
        raise RuntimeError("a node was deleted")

    monkeypatch.setattr(panel.logic, "showFrame", deleted_node)
    results = poll_until_idle(panel)
    assert results[-1].failed or any(r.failed for r in results)
    assert panel.error == "Registration display failed: a node was deleted"
    assert panel.state.state.value == "failed" and panel.logic.session is None  # forgotten (both panels)
    assert panel.logic.worker is None


@slicer_only
def test_the_scene_closing_stops_the_run_and_resets_the_panel(panel):
    assert panel.apply()
    panel.sceneClosing()
    assert panel.state.state.value == "idle" and panel.logic.session is None
    assert not panel.flags().continue_enabled


# ---------------------------------------------------------------------------------------------- bad inputs


@slicer_only
def test_fixed_equal_to_moving_is_refused_plainly_before_anything_is_created(panel, scene):
    """The same node, and the same file read twice: one plain line, no node created."""
    from RLRegistrationLib.io.imaging import read_image, read_label_map
    from RLRegistrationMRML.volume_nodes import volume_node_from_image

    params = panel.params
    params.movingVolume = params.fixedVolume
    before = node_ids(scene)
    assert not panel.apply()
    assert panel.error == "The fixed and the moving volume must be different volumes ('fixed' is both)."
    params.movingVolume = volume_node_from_image(scene, read_image(SAMPLE_FILES["fixed"], "f"), "fixed")
    params.movingVolume.SetName("fixed")
    for role in ("fixed", "moving"):  # label maps of another grid than the (wrong) moving volume
        labels = read_label_map(SAMPLE_FILES[f"{role}_labels"], role)
        setattr(params, f"{role}Labels", volume_node_from_image(scene, labels, f"{role} labels", labels=True))
    before = node_ids(scene)
    assert not panel.apply()
    assert panel.error == (
        "Failed to start the registration: The fixed and the moving volume must be different volumes "
        "('fixed' is both)."
    )
    assert node_ids(scene) == before and panel.state.state.value == "idle"


@slicer_only
@pytest.mark.parametrize(
    "kind, message",
    [
        ("nan", "moving volume 'bad': contains 1 NaN or Inf voxels"),
        ("flat", r"moving volume 'bad': a 3D volume is required, size \(9, 8, 1\) has a flat axis"),
        ("empty", "moving volume 'bad': the volume holds no voxels"),
        ("vector", "moving volume 'bad': a scalar volume is required, this one has 3 components"),
    ],
)
def test_a_bad_volume_is_refused_naming_its_node_and_nothing_is_created(panel, scene, kind, message):
    import slicer

    array = np.random.default_rng(0).random((6, 8, 9)).astype(np.float32)
    if kind == "nan":
        array[2, 3, 4] = np.nan
    elif kind == "flat":
        array = array[:1]
    elif kind == "vector":
        array = np.stack([array] * 3, axis=-1)
    className = "vtkMRMLVectorVolumeNode" if kind == "vector" else "vtkMRMLScalarVolumeNode"
    bad = scene.AddNewNodeByClass(className, "bad")
    if kind != "empty":
        slicer.util.updateVolumeFromArray(bad, array)
    panel.params.movingVolume = bad
    before = node_ids(scene)
    assert not panel.apply()
    assert panel.error.startswith("Failed to start the registration: ") and "\n" not in panel.error
    assert __import__("re").search(message, panel.error), panel.error
    assert node_ids(scene) == before and panel.logic.worker is None


def test_finished_status_says_what_was_kept_and_why():
    """The status line of a run that ended with a result, for each outcome of the do-no-harm check."""
    from RLRegistrationLib.registration.harm_check import Verdict

    def make(accepted: bool) -> Verdict:
        return Verdict("deformable refinement", "affine pre-alignment", 0.5, 0.4, accepted)

    blocked = finishedStatus("3 steps", "two scans of one session", None, 0)
    assert blocked.startswith("No deformable refinement: two scans of one session. The result is the pre")
    dropped = finishedStatus("3 steps", "", make(False), 3)
    assert dropped.startswith("3 steps. Deformable refinement dropped") and "0.400 -> 0.500" in dropped
    assert "the slider shows the 3 steps run" in dropped
    assert finishedStatus("3 steps", "", make(True), 3) == (
        "3 steps; deformable refinement kept (gradient alignment 0.400 -> 0.500)"
    )
    assert finishedStatus("3 steps", "", None, 3) == "3 steps"  # the check could not run
