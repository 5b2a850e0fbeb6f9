"""One registration panel, Qt-free: what happens when its controls are used, for every front-end.

:class:`PanelController` owns a panel's behaviour: its settings (checked against
:data:`~RLRegistrationMRML.parameters.SETTINGS`, policy and quality defaults), starting, continuing and
cancelling runs through the scene logic, the ``panel_state`` state machine, polling the worker, errors
(one line for the panel's error display, the details for the log), forgetting a failed session, the offer
to run again on the CPU when the GPU ran out of memory, the progress and status lines, replay (slider,
play, step back) and a scene that closes. The Slicer panel (``RLRegistration.py``: a ``QTimer`` calls
:meth:`PanelController.poll`) and the browser app (``RLRegistrationWeb``: its event loop does) only bind
their controls to it, so both behave alike.

Every method that a user's action calls returns True on success; on failure it returns False, changes
nothing else and leaves the reason in :attr:`PanelController.error` (and the details in
:attr:`PanelController.errorDetails`).
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from dataclasses import dataclass, field, replace

from RLRegistrationLib.errors import RLRegistrationError
from RLRegistrationLib.frontends.panel_state import PanelState, PanelStateMachine, UiFlags, progress_text
from RLRegistrationLib.registration.quality import QUALITY_PRESETS
from RLRegistrationLib.registration.run_spec import schedule_steps

from .panel_choices import panelChoices
from .panel_messages import (
    CONTINUING,
    CPU_RETRY_QUESTION,
    PREPARING,
    REPLACE_QUESTION,
    finishedStatus,
    oneLine,
)
from .parameters import RUN_SETTINGS, SETTINGS_BY_NAME, checkSetting

# a second click on the one Apply/Cancel button within this time of the first is not a Cancel
CANCEL_DEBOUNCE_S = 1.0


@dataclass
class PollResult:
    """What one :meth:`PanelController.poll` brought: ``changed`` (the panel must be redrawn), the step
    reports, whether the run ``finished`` or ``failed``, and when the messages were ``received`` and
    ``shown`` in the nodes (monotonic seconds; ``posted``: when the worker posted the newest step)."""

    changed: bool = False
    reports: list = field(default_factory=list)
    finished: bool = False
    failed: bool = False
    received: float = 0.0
    shown: float = 0.0
    posted: float | None = None


class PanelController:
    """The behaviour of one registration panel on ``logic`` (a ``RegistrationSceneLogic``) and ``params``
    (the Slicer parameter node or a ``RegistrationParameters``; replaceable with :meth:`setParameters`)."""

    def __init__(self, logic, params=None, log: logging.Logger | None = None) -> None:
        self.logic = logic
        self.params = params
        self.log = log or logging.getLogger("RLRegistration")
        self.state = PanelStateMachine()
        self.policies: dict = {}
        self.devices: list[tuple[str, str, bool]] = []
        self.choicesNeedTorch = False
        self.error = ""
        self.errorDetails = ""
        self.status = ""
        self.progress = ""
        self.lastReport = None
        self.cpuRetryOffered = False
        self.runStarted: float | None = None
        self.notes: list[str] = []  # what the run chose and decided (plan, do no harm), one line each
        # steps and regularization as the panel last set them (a policy, a quality, a plan): a value the
        # user did not change is left to the run's plan (``RunSpec`` None)
        self._written: dict[str, object] = {}

    # ------------------------------------------------------------------ messages
    def fail(self, message: str, details: str = "") -> bool:
        """Show ``message`` in the panel's error display (details go to the log); returns False."""
        self.error = message
        self.errorDetails = details
        if details:
            self.log.error("%s\n%s", message, details)
        else:
            self.log.warning("%s", message)
        return False

    def clearError(self) -> None:
        self.error = self.errorDetails = ""

    # ------------------------------------------------------------------ choices and settings
    def loadChoices(self) -> None:
        """The policies (model cards) and devices the panel offers (``panel_choices.panelChoices``)."""
        self.policies, self.devices, self.choicesNeedTorch = panelChoices(self.log)

    def policyChoice(self, name: str | None = None):
        """The offered policy ``name`` (default: the chosen one), or None."""
        return self.policies.get(self.params.policy if name is None else name)

    def setParameters(self, params) -> None:
        self.params = params
        self._written = {}
        self.refreshInputs()

    def _defaults(self, policy: str, quality: str) -> tuple[int, float | None]:
        """(steps, regularization) the panel shows for ``policy`` and ``quality`` (``quality`` "auto":
        the policy's; the run's plan then chooses)."""
        choice = self.policyChoice(policy)
        measured = int(choice.default_steps) if choice is not None else SETTINGS_BY_NAME["steps"].default
        regularization = ((choice.option_defaults or {}) if choice is not None else {}).get("regularization")
        if regularization is None:
            regularization = SETTINGS_BY_NAME["regularization"].default
        if quality not in QUALITY_PRESETS:
            return measured, regularization
        steps, regularization = QUALITY_PRESETS[quality].panel_settings(measured, regularization)
        return schedule_steps(policy, quality) or steps, regularization

    def _write(self, name: str, value) -> None:
        """Set ``name`` (steps, regularization) as the panel's default, not the user's choice."""
        self._ensureWritten()
        setattr(self.params, name, value)
        self._written[name] = value

    def _ensureWritten(self) -> None:
        if not self._written:
            steps, regularization = self._defaults(self.params.policy, self.params.quality)
            self._written = {"steps": steps, "regularization": regularization}

    def asked(self, name: str) -> bool:
        """Whether the user changed ``name`` (steps, regularization) from what the panel set (or, before
        the panel set anything, from the defaults of the policy and quality chosen)."""
        self._ensureWritten()
        value = getattr(self.params, name)
        written = self._written.get(name)
        return written is None or not math.isclose(float(value), float(written), rel_tol=1e-9)

    def refreshInputs(self) -> bool:
        """Register is possible when a fixed and another moving volume are chosen; returns that."""
        params = self.params
        ready = bool(
            params is not None
            and params.fixedVolume
            and params.movingVolume
            and params.fixedVolume.GetID() != params.movingVolume.GetID()
        )
        self.state.set_inputs_ready(ready)
        return ready

    def updateSettings(self, **values) -> bool:
        """Set options (``SETTINGS`` names); each value is checked against its range or choices. A new
        policy brings the steps, iterations and regularization it was measured with, a quality preset its
        own steps and regularization. Run options cannot change while a run goes on."""
        self.clearError()
        for name, value in values.items():
            if value is None:
                continue
            if name in RUN_SETTINGS and self.state.busy:
                return self.fail("The options cannot change while a registration runs.")
            try:
                value = checkSetting(name, value)
                if name == "policy":
                    self._choosePolicy(value)
                elif name == "quality":
                    self._chooseQuality(value)
                elif name == "device":
                    if self.devices and value not in {v for v, _, available in self.devices if available}:
                        raise ValueError(f"device '{value}' is not available here")
                    self.params.device = value
                else:
                    setattr(self.params, name, value)
            except ValueError as error:
                return self.fail(str(error))
        return True

    def _choosePolicy(self, name: str) -> None:
        choice = self.policyChoice(name)
        if self.policies and choice is None:
            raise ValueError(f"unknown policy '{name}' (choose from {', '.join(self.policies)})")
        if name == self.params.policy or choice is None:
            self.params.policy = name
            return
        # the settings the policy was measured with (e.g. learned + TTO steps of a chain and the
        # regularization weight its lambda map was trained for)
        self._write("steps", int(choice.default_steps))
        defaults = choice.option_defaults or {}
        if defaults.get("iterations") is not None:
            self.params.iterations = int(defaults["iterations"])
        if defaults.get("regularization") is not None:
            self._write("regularization", float(defaults["regularization"]))
        if not choice.supports_sampling:
            self.params.samples = 1
        self.params.policy = name

    def _chooseQuality(self, quality: str) -> None:
        if quality == self.params.quality:
            return
        steps, regularization = self._defaults(self.params.policy, quality)
        self._write("steps", int(steps))
        if regularization is not None:
            self._write("regularization", float(regularization))
        self.params.quality = quality

    # ------------------------------------------------------------------ run
    def apply(self) -> bool:
        """The panel's one button: register (idle, done, failed) or cancel (running). A second click within
        ``CANCEL_DEBOUNCE_S`` of the start (a double click on Apply) is not a Cancel: it does nothing."""
        if self.state.state == PanelState.RUNNING:
            if self.runStarted is not None and time.monotonic() - self.runStarted < CANCEL_DEBOUNCE_S:
                return True
            return self.cancel()
        return self.start()

    def replaceQuestion(self) -> str:
        """What a panel asks before a new run replaces a finished one ("" when nothing would be lost)."""
        if self.state.state != PanelState.DONE or self.logic.session is None:
            return ""
        return REPLACE_QUESTION.format(steps=self.state.steps_done)

    def start(self, continueRun: bool = False) -> bool:
        """A new run, or more steps of the finished one (``continueRun``: the Steps box's number). A new
        run takes the Steps box's number only when the user changed it; otherwise the run's plan decides
        (the quality preset's steps, and none where the session keeps the linear result), and the box
        then shows the plan's number."""
        self.clearError()
        if self.state.busy:
            return self.fail("Cancelling: wait for the step in progress to end.")
        if continueRun and (self.state.state != PanelState.DONE or self.logic.session is None):
            return self.fail("Continue is possible after a run has finished.")
        if not continueRun and not self.refreshInputs():
            try:  # its message says what is missing (or that fixed and moving are one volume)
                self.logic.checkInputs(self.params)
            except ValueError as error:
                return self.fail(str(error))
            return self.fail("Select the fixed and the moving volume.")
        try:
            if continueRun:
                steps = int(self.params.steps)
                first = self.state.steps_done
                self.logic.continueRegistration(self.params, steps)
                self.state.continue_(steps)
            else:
                asked = self.asked("steps")
                self.logic.startRegistration(
                    self.params, int(self.params.steps) if asked else None, self.asked("regularization")
                )
                steps = int(self.logic.plan.steps)
                if not asked:
                    self._write("steps", steps)
                self.state.start(steps)
        except Exception as error:  # noqa: BLE001 - every refusal is shown; nothing was created
            if self.logic.session is None and self.state.state in (PanelState.DONE, PanelState.FAILED):
                self.state.reset()  # a failed start discarded the previous session
            expected = isinstance(error, (RLRegistrationError, ValueError, RuntimeError))
            details = "" if expected else traceback.format_exc()
            return self.fail(f"Failed to start the registration: {oneLine(error)}", details)
        self.cpuRetryOffered = False
        self.lastReport = None
        self.runStarted = time.monotonic()
        self.progress = CONTINUING.format(step=first) if continueRun else PREPARING
        self.status = f"Running on {self.logic.deviceDescription}"
        if not continueRun:
            self.notes = self.logic.runNotes()
        for note in self.notes:
            self.log.info("%s", note)
        self.log.info(
            "registration started: %d steps of %s on %s",
            steps,
            self.params.policy,
            self.logic.deviceDescription,
        )
        return True

    def cancel(self) -> bool:
        """Stop after the step in progress."""
        self.clearError()
        if self.state.state != PanelState.RUNNING:
            return self.fail("Nothing to cancel.")
        self.state.cancel()
        self.logic.cancel()
        self.status = "Cancelling: stopping after the step in progress..."
        return True

    def retryOnCpu(self) -> bool:
        """After the GPU ran out of memory: the same registration on the CPU."""
        if not self.cpuRetryOffered:
            return self.fail("There is nothing to run again on the CPU.")
        self.cpuRetryOffered = False
        self.params.device = "cpu"
        return self.start()

    def poll(self) -> PollResult:
        """Drain the worker's messages (call often, on the scene's thread) and update the panel."""
        result = PollResult()
        if self.logic.worker is None or not self.state.busy:
            return result
        result.received = time.monotonic()
        try:
            update = self.logic.processMessages(self.params)
        except Exception as error:  # noqa: BLE001 - a display failure (e.g. a deleted node) stops the run
            self.logic.cancel(wait=False)
            self._runFailed(f"Registration display failed: {oneLine(error)}", traceback.format_exc())
            result.changed = result.failed = True
            return result
        result.shown = time.monotonic()
        if not (update.reports or update.finished or update.error):
            return result
        result.changed = True
        result.reports = update.reports
        result.posted = update.framePosted
        for report in update.reports:
            self.state.step(report.index)
            self.lastReport = report
            if report.index == 0:  # prepared: the session's decisions are known
                self._addNotes(self.logic.runNotes())
        if update.reports:
            report = self.lastReport
            self.progress = progress_text(
                report.index,
                self.state.run_target,
                report.step_seconds,
                report.similarity,
                report.dice,
                getattr(report, "uncertainty_mean_mm", None),
            )
        if update.error:
            self._runFailed(f"Registration failed: {update.error}", update.details, update.outOfMemory)
            result.failed = True
        elif update.finished:
            result.finished = True
            keep = not update.cancelled and bool(self.logic.deformableBlocked())
            self.state.finished(update.stepsDone, keep=keep)
            if self.state.state == PanelState.IDLE:
                self.logic.discardCreatedNodes(self.params)
                self.logic.forgetSession()
                self.status = "Cancelled before the first step: nothing was changed."
                self.progress = ""
            else:
                self._keepResult(update.cancelled)
            self.log.info(
                "registration %s after %d steps",
                "cancelled" if update.cancelled else "finished",
                update.stepsDone,
            )
        return result

    def _addNotes(self, notes: list[str]) -> None:
        for note in notes:
            if note not in self.notes:
                self.notes.append(note)
                self.log.info("%s", note)

    def _keepResult(self, cancelled: bool) -> None:
        """A run ended with a result: the nodes show (and export) the step ``session.final_result``
        chooses, and the status says which, and why."""
        try:
            verdict = self.logic.keepFinalResult(self.params)
        except Exception as error:  # noqa: BLE001 - the run's own result stays shown
            self.fail(f"Could not check the result: {oneLine(error)}", traceback.format_exc())
            verdict = None
        self.logic.createdNodeIDs = []  # a kept result: its nodes are results, not leftovers
        kept = self.logic.resultStep
        if kept is not None and kept != self.state.displayed_step:
            self.state.replay(kept)
        blocked = self.logic.deformableBlocked()
        if verdict is not None:
            self._addNotes([verdict.summary()])
        self.status = finishedStatus(
            self.logic.summary(cancelled=cancelled), blocked, verdict, self.state.steps_done
        )

    def _runFailed(self, message: str, details: str, outOfMemory: bool = False) -> None:
        """The run (or the display of a step) failed: its new nodes and its session are forgotten."""
        self.state.error(message)
        self.logic.discardCreatedNodes(self.params)
        self.logic.forgetSession()
        self.cpuRetryOffered = bool(outOfMemory) and self.params.device != "cpu"
        self.status = "The GPU ran out of memory." if self.cpuRetryOffered else "Registration failed."
        self.fail(message, details)

    def cpuRetryQuestion(self) -> str:
        return CPU_RETRY_QUESTION.format(error=self.error.removeprefix("Registration failed: "))

    # ------------------------------------------------------------------ replay
    def stepBack(self) -> bool:
        """Undo the last step of a finished run."""
        if self.state.state != PanelState.DONE or self.state.playing:
            return self.fail("Step back is possible after a run has finished (and not while playing).")
        try:
            self.logic.stepBack(self.params)
            self.state.step_back()
        except Exception as error:  # noqa: BLE001
            return self.fail(f"Failed to step back: {oneLine(error)}", traceback.format_exc())
        self.status = self.logic.summary()
        self.progress = f"Step back: {self.state.steps_done} steps"
        return True

    def showStep(self, step: int) -> bool:
        """Show step ``step`` of a finished run (the slider)."""
        if self.state.state != PanelState.DONE:
            return self.fail("Replay is possible after a run has finished.")
        try:
            step = int(step)
        except (TypeError, ValueError):
            return self.fail(f"not a step number: {step!r}")
        if step == self.state.displayed_step and self.logic.displayedStep == step:
            return True
        try:
            self.logic.showStep(self.params, self.state.replay(step))
        except Exception as error:  # noqa: BLE001
            return self.fail(f"Failed to show step {step}: {oneLine(error)}", traceback.format_exc())
        return True

    def play(self) -> bool:
        """Replay from the first step (or from the one shown); :meth:`tick` shows the next ones."""
        if self.state.state != PanelState.DONE or self.state.steps_done < 1:
            return self.fail("Play is possible after a run has finished.")
        self.state.play()
        return self._show(self.state.displayed_step)

    def pause(self) -> None:
        self.state.pause()

    def tick(self) -> bool:
        """The play timer: the next step (playing stops at the last one); False when nothing was shown."""
        step = self.state.tick()
        return step is not None and self._show(step)

    def _show(self, step: int) -> bool:
        try:
            self.logic.showStep(self.params, step)
        except Exception as error:  # noqa: BLE001
            self.state.pause()
            return self.fail(f"Failed to show step {step}: {oneLine(error)}", traceback.format_exc())
        return True

    # ------------------------------------------------------------------ display and scene
    def updateDisplay(self) -> bool:
        """Slice view layers and field display after a display option changed (when there is a result)."""
        if self.params.fixedVolume is None or self.logic.session is None:
            return True
        try:
            self.logic.updateDisplay(self.params)
        except Exception as error:  # noqa: BLE001
            return self.fail(f"Failed to update the display: {oneLine(error)}", traceback.format_exc())
        return True

    def forgetRun(self) -> None:
        """The inputs changed: the session (and its replay) no longer applies."""
        if self.state.state in (PanelState.DONE, PanelState.FAILED):
            self.state.reset()
        self.logic.forgetSession()
        self.cpuRetryOffered = False
        self.progress = ""

    def sceneClosing(self) -> None:
        """The scene is closing: stop the run and forget the session (its nodes go with the scene)."""
        if self.logic.isRunning():
            self.logic.cancel(wait=False)
        if self.state.state == PanelState.RUNNING:
            self.state.cancel()
        if self.state.busy:
            self.state.finished(0)
        self.logic.forgetSession()
        self.state.reset()
        self.cpuRetryOffered = False
        self.lastReport = None
        self.progress = ""

    def flags(self) -> UiFlags:
        """What the panel's controls show (``panel_state`` flags; nothing to replay or export without a
        session)."""
        flags = self.state.flags()
        if self.logic.session is not None:
            return flags
        return replace(
            flags,
            continue_enabled=False,
            step_back_enabled=False,
            slider_enabled=False,
            play_enabled=False,
            export_enabled=False,
        )
