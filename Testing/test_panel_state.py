"""The Slicer panel's state machine (RLRegistrationLib.panel_state), without Qt or Slicer."""

from __future__ import annotations

import pytest

from RLRegistrationLib.frontends.panel_state import (
    PanelState,
    PanelStateError,
    PanelStateMachine,
    foreground_layer,
    progress_text,
)


def ready_machine() -> PanelStateMachine:
    machine = PanelStateMachine()
    machine.set_inputs_ready(True)
    return machine


def run_to_done(machine: PanelStateMachine, steps: int = 3) -> PanelStateMachine:
    machine.start(steps)
    machine.step(0)
    for i in range(1, steps + 1):
        machine.step(i)
    machine.finished(steps)
    return machine


def test_idle_flags_depend_on_inputs():
    machine = PanelStateMachine()
    flags = machine.flags()
    assert machine.state == PanelState.IDLE
    assert flags.apply_text == "Apply" and not flags.apply_enabled
    assert flags.inputs_enabled and not flags.continue_enabled and not flags.step_back_enabled
    assert not flags.slider_enabled and not flags.play_enabled and not flags.export_enabled
    assert not flags.progress_visible
    with pytest.raises(PanelStateError, match="select the fixed and moving"):
        machine.start(5)
    machine.set_inputs_ready(True)
    assert machine.flags().apply_enabled


def test_running_apply_becomes_cancel_and_inputs_lock():
    machine = ready_machine()
    machine.start(4)
    flags = machine.flags()
    assert machine.state == PanelState.RUNNING and machine.busy
    assert flags.apply_text == "Cancel" and flags.apply_enabled
    assert not flags.inputs_enabled and not flags.continue_enabled and not flags.step_back_enabled
    assert not flags.slider_enabled and not flags.export_enabled and flags.progress_visible
    machine.step(0)
    machine.step(1)
    machine.step(2)
    assert machine.progress() == (2, 4)
    assert machine.displayed_step == 2
    with pytest.raises(PanelStateError):
        machine.start(3)  # no second run while one is going
    with pytest.raises(PanelStateError):
        machine.step_back()
    with pytest.raises(PanelStateError):
        machine.replay(1)


def test_cancel_goes_through_cancelling_to_done_or_idle():
    machine = ready_machine()
    machine.start(10)
    machine.step(1)
    machine.step(2)
    machine.cancel()
    flags = machine.flags()
    assert machine.state == PanelState.CANCELLING
    assert flags.apply_text == "Cancelling..." and not flags.apply_enabled and not flags.inputs_enabled
    with pytest.raises(PanelStateError):
        machine.cancel()  # only once
    machine.step(3)  # the step in progress still completes
    machine.finished(3)
    assert machine.state == PanelState.DONE and machine.steps_done == 3
    assert machine.flags().slider_maximum == 3

    # cancelled before the first step: nothing to keep, back to idle
    machine = ready_machine()
    machine.start(10)
    machine.cancel()
    machine.finished(0)
    assert machine.state == PanelState.IDLE and not machine.has_session
    assert machine.flags().apply_text == "Apply" and machine.flags().apply_enabled


def test_done_flags_slider_continue_and_step_back():
    machine = run_to_done(ready_machine(), 3)
    flags = machine.flags()
    assert machine.state == PanelState.DONE
    assert flags.apply_text == "Apply" and flags.apply_enabled and flags.inputs_enabled
    assert flags.continue_enabled and flags.step_back_enabled and flags.export_enabled
    assert flags.slider_enabled and (flags.slider_minimum, flags.slider_maximum, flags.slider_value) == (
        0,
        3,
        3,
    )
    assert flags.play_enabled and not flags.progress_visible

    assert machine.step_back() == 2
    assert machine.flags().slider_maximum == 2 and machine.displayed_step == 2

    machine.continue_(2)
    assert machine.state == PanelState.RUNNING and machine.progress() == (0, 2)
    machine.step(3)
    assert machine.progress() == (1, 2)
    machine.step(4)
    machine.finished(4)
    assert machine.flags().slider_maximum == 4 and machine.displayed_step == 4

    for _ in range(4):
        machine.step_back()
    assert machine.steps_done == 0
    flags = machine.flags()
    assert not flags.step_back_enabled and not flags.slider_enabled and flags.continue_enabled
    with pytest.raises(PanelStateError, match="no step to undo"):
        machine.step_back()


def test_replay_and_play():
    machine = run_to_done(ready_machine(), 3)
    assert machine.replay(1) == 1
    assert machine.replay(99) == 3 and machine.replay(-4) == 0
    machine.play()
    assert machine.flags().playing and not machine.flags().step_back_enabled
    assert [machine.tick(), machine.tick(), machine.tick()] == [1, 2, 3]
    assert not machine.playing and machine.tick() is None
    machine.play()  # at the end: restarts from step 0
    assert machine.displayed_step == 0 and machine.tick() == 1
    machine.pause()
    assert machine.tick() is None and machine.displayed_step == 1


def test_error_and_recovery():
    machine = ready_machine()
    machine.start(5)
    machine.step(1)
    machine.error("CUDA out of memory")
    flags = machine.flags()
    assert machine.state == PanelState.FAILED and machine.error_message == "CUDA out of memory"
    assert flags.apply_text == "Apply" and flags.apply_enabled and flags.inputs_enabled
    assert not flags.continue_enabled and not flags.export_enabled and not flags.slider_enabled
    with pytest.raises(PanelStateError):
        machine.continue_(2)
    machine.start(5)  # retry (e.g. on CPU)
    assert machine.state == PanelState.RUNNING and machine.steps_done == 0 and machine.error_message == ""
    machine.finished(5)
    machine.reset()
    assert machine.state == PanelState.IDLE and machine.steps_done == 0


def test_invalid_steps_and_events():
    machine = ready_machine()
    with pytest.raises(PanelStateError, match="at least 1"):
        machine.start(0)
    with pytest.raises(PanelStateError):
        machine.finished(1)
    with pytest.raises(PanelStateError):
        machine.step(1)
    machine.start(1)
    with pytest.raises(PanelStateError):
        machine.step(-1)
    with pytest.raises(PanelStateError):
        machine.reset()


def test_progress_text_and_overlay_choice():
    assert (
        progress_text(3, 10, 0.4123, 0.51234, 0.73456) == "Step 3/10 · 412 ms/step · NCC 0.512 · Dice 0.735"
    )
    assert progress_text(1, 2, 1.0, float("nan"), None) == "Step 1/2 · 1000 ms/step"
    assert foreground_layer(True, True, True, True, True) == "weight_map"
    assert foreground_layer(True, True, False, True, True) == "magnitude"
    assert foreground_layer(False, False, True, True, True) == "warped"
    assert foreground_layer(False, True, True, False, False) is None
    assert (
        progress_text(2, 4, 0.5, 0.5, None, 0.4234)
        == "Step 2/4 · 500 ms/step · NCC 0.500 · Uncertainty 0.42 mm"
    )
    # the uncertainty overlay: after the weight map, before the magnitude; only when there is a map
    both = dict(show_uncertainty=True, has_uncertainty=True)
    assert foreground_layer(False, True, True, True, True, **both) == "uncertainty"
    assert foreground_layer(True, False, True, True, True, **both) == "weight_map"
    assert foreground_layer(False, True, True, True, True, show_uncertainty=True) == "magnitude"
    assert foreground_layer(False, False, True, True, True, show_uncertainty=True) == "warped"
