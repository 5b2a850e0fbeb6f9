"""The Slicer panel's state machine, in plain Python (no Qt, no Slicer, no torch): tested directly.

States::

    idle --start--> running --step(i)--> running --finished--> done (>= 1 step, or a kept result) | idle
                       |  \\--error--> failed                  done --continue--> running
                       \\--cancel--> cancelling --finished--> done | idle
                                         \\--error--> failed   done --step_back / replay(i)--> done

The widget feeds events in and reads ``flags()`` to set the buttons: it never decides enabled states
itself, so what the user can click in each state is defined (and tested) here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class PanelState(str, Enum):
    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"


class PanelStateError(RuntimeError):
    """An event that is not allowed in the current state (a bug in the caller, not a user error)."""


@dataclass(frozen=True)
class UiFlags:
    """What the panel shows for a state."""

    apply_text: str  # "Apply", "Cancel" or "Cancelling..." (one button: the Slicer panel's)
    apply_enabled: bool
    inputs_enabled: bool  # input/output selectors and registration options
    continue_enabled: bool
    step_back_enabled: bool
    slider_enabled: bool
    slider_minimum: int
    slider_maximum: int
    slider_value: int
    play_enabled: bool
    playing: bool
    export_enabled: bool  # apply to moving volume, harden, save .h5
    progress_visible: bool
    # two buttons (the browser's): Register never turns into Cancel under a second click
    register_enabled: bool = False
    cancel_enabled: bool = False


class PanelStateMachine:
    """Panel state. ``steps_done`` mirrors the session's ``step_count``; ``displayed_step`` is what the
    slice views show (the latest step while running, any step 0..steps_done while replaying)."""

    def __init__(self) -> None:
        self.state = PanelState.IDLE
        self.inputs_ready = False
        self.steps_done = 0
        self.run_first_step = 0  # steps_done when the current run started (continue starts > 0)
        self.run_target = 0  # steps_done expected at the end of the current run
        self.displayed_step = 0
        self.playing = False
        self.error_message = ""
        self.has_session = False  # a session exists whose steps can be continued / replayed

    # ----------------------------------------------------------------- events
    def set_inputs_ready(self, ready: bool) -> None:
        """Fixed and moving volumes are selected (Apply possible)."""
        self.inputs_ready = bool(ready)

    def start(self, steps: int) -> None:
        """A new registration from scratch (discards the previous session's steps)."""
        self._require({PanelState.IDLE, PanelState.DONE, PanelState.FAILED}, "start")
        if not self.inputs_ready:
            raise PanelStateError("start: select the fixed and moving volumes first")
        steps = self._positive(steps, "start")
        self.steps_done = 0
        self.run_first_step = 0
        self.run_target = steps
        self.displayed_step = 0
        self.has_session = True
        self._enter_running()

    def continue_(self, steps: int) -> None:
        """More steps from the current state of a finished run."""
        self._require({PanelState.DONE}, "continue")
        steps = self._positive(steps, "continue")
        self.run_first_step = self.steps_done
        self.run_target = self.steps_done + steps
        self._enter_running()

    def step(self, index: int) -> None:
        """The worker reports step ``index`` (total steps of the session, 0 = after pre-alignment)."""
        self._require({PanelState.RUNNING, PanelState.CANCELLING}, "step")
        index = int(index)
        if index < 0:
            raise PanelStateError(f"step: negative index {index}")
        self.steps_done = index
        self.displayed_step = index

    def cancel(self) -> None:
        """The user pressed Cancel: the worker stops after the step in progress."""
        self._require({PanelState.RUNNING}, "cancel")
        self.state = PanelState.CANCELLING

    def finished(self, steps_done: int | None = None, keep: bool = False) -> None:
        """The worker ended (normally or cancelled). With no step at all the panel returns to idle, unless
        ``keep``: the run's result is its pre-alignment (a session that decided against deformable steps)."""
        self._require({PanelState.RUNNING, PanelState.CANCELLING}, "finished")
        if steps_done is not None:
            self.steps_done = int(steps_done)
        self.displayed_step = self.steps_done
        if self.steps_done > 0 or keep:
            self.state = PanelState.DONE
        else:
            self.state = PanelState.IDLE
            self.has_session = False

    def error(self, message: str) -> None:
        """The worker (or the display of a result) failed."""
        self._require({PanelState.RUNNING, PanelState.CANCELLING, PanelState.DONE}, "error")
        self.error_message = str(message)
        self.state = PanelState.FAILED
        self.playing = False
        self.has_session = False

    def step_back(self) -> int:
        """Undo the last step; returns the new number of steps."""
        self._require({PanelState.DONE}, "step back")
        if self.steps_done <= 0:
            raise PanelStateError("step back: no step to undo")
        self.steps_done -= 1
        self.displayed_step = self.steps_done
        self.playing = False
        return self.steps_done

    def replay(self, step: int) -> int:
        """Show step ``step`` (clamped to 0..steps_done); returns the step shown."""
        self._require({PanelState.DONE}, "replay")
        self.displayed_step = min(max(int(step), 0), self.steps_done)
        return self.displayed_step

    def play(self) -> None:
        self._require({PanelState.DONE}, "play")
        self.playing = True
        if self.displayed_step >= self.steps_done:
            self.displayed_step = 0

    def pause(self) -> None:
        self.playing = False

    def tick(self) -> int | None:
        """Play timer: advance one step; returns the step to show, or None (and stops) at the end."""
        if not self.playing or self.state != PanelState.DONE:
            self.playing = False
            return None
        if self.displayed_step >= self.steps_done:
            self.playing = False
            return None
        self.displayed_step += 1
        if self.displayed_step >= self.steps_done:
            self.playing = False
        return self.displayed_step

    def reset(self) -> None:
        """Scene closed or inputs changed: forget the session."""
        self._require({PanelState.IDLE, PanelState.DONE, PanelState.FAILED}, "reset")
        self.state = PanelState.IDLE
        self.steps_done = self.displayed_step = self.run_first_step = self.run_target = 0
        self.playing = False
        self.has_session = False
        self.error_message = ""

    # ----------------------------------------------------------------- derived
    @property
    def busy(self) -> bool:
        return self.state in (PanelState.RUNNING, PanelState.CANCELLING)

    def flags(self) -> UiFlags:
        state = self.state
        done = state == PanelState.DONE
        if state == PanelState.RUNNING:
            apply_text, apply_enabled = "Cancel", True
        elif state == PanelState.CANCELLING:
            apply_text, apply_enabled = "Cancelling...", False
        else:
            apply_text, apply_enabled = "Apply", self.inputs_ready
        return UiFlags(
            apply_text=apply_text,
            apply_enabled=apply_enabled,
            inputs_enabled=not self.busy,
            continue_enabled=done,
            step_back_enabled=done and self.steps_done > 0 and not self.playing,
            slider_enabled=done and self.steps_done > 0,
            slider_minimum=0,
            slider_maximum=self.steps_done,
            slider_value=self.displayed_step,
            play_enabled=done and self.steps_done > 0,
            playing=self.playing,
            export_enabled=done,
            progress_visible=self.busy,
            register_enabled=not self.busy and self.inputs_ready,
            cancel_enabled=state == PanelState.RUNNING,
        )

    def progress(self) -> tuple[int, int]:
        """(value, maximum) of the progress bar for the current run."""
        total = max(1, self.run_target - self.run_first_step)
        return min(max(self.steps_done - self.run_first_step, 0), total), total

    # ----------------------------------------------------------------- helpers
    def _enter_running(self) -> None:
        self.state = PanelState.RUNNING
        self.playing = False
        self.error_message = ""

    def _require(self, allowed: set[PanelState], event: str) -> None:
        if self.state not in allowed:
            names = ", ".join(sorted(s.value for s in allowed))
            raise PanelStateError(f"{event}: not allowed while {self.state.value} (only when {names})")

    @staticmethod
    def _positive(steps: int, event: str) -> int:
        steps = int(steps)
        if steps < 1:
            raise PanelStateError(f"{event}: the number of steps must be at least 1, got {steps}")
        return steps


def progress_text(
    index: int,
    total: int,
    step_seconds: float,
    similarity: float,
    dice: float | None = None,
    uncertainty_mm: float | None = None,
) -> str:
    """One line for the progress bar, e.g. ``Step 3/10 · 412 ms/step · NCC 0.512 · Dice 0.734`` (and
    ``· Uncertainty 0.42 mm``, the mean spread, when the policy samples trajectories). Steps are numbered
    as the session counts them (a Continue from step 6 to 11 says ``Step 7/11``); step 0 is the
    pre-alignment (``Pre-alignment · 2.6 s · NCC 0.430``)."""
    if int(index) == 0:
        parts = ["Pre-alignment", f"{float(step_seconds):.1f} s"]
    else:
        parts = [f"Step {int(index)}/{int(total)}", f"{1000.0 * float(step_seconds):.0f} ms/step"]
    if similarity is not None and math.isfinite(similarity):
        parts.append(f"NCC {similarity:.3f}")
    if dice is not None and math.isfinite(dice):
        parts.append(f"Dice {dice:.3f}")
    if uncertainty_mm is not None and math.isfinite(uncertainty_mm):
        parts.append(f"Uncertainty {uncertainty_mm:.2f} mm")
    return " · ".join(parts)


OVERLAYS = ("warped", "weight_map", "uncertainty", "magnitude")


def foreground_layer(
    show_weight_map: bool,
    show_magnitude: bool,
    has_weight_map: bool,
    has_magnitude: bool,
    has_warped: bool,
    show_uncertainty: bool = False,
    has_uncertainty: bool = False,
) -> str | None:
    """Which output goes into the slice views' foreground layer (fixed stays in the background).

    Overlays asked for win in the order weight map, uncertainty, magnitude; without any the warped volume
    is shown over the fixed one; None clears the foreground.
    """
    if show_weight_map and has_weight_map:
        return "weight_map"
    if show_uncertainty and has_uncertainty:
        return "uncertainty"
    if show_magnitude and has_magnitude:
        return "magnitude"
    if has_warped:
        return "warped"
    return None
