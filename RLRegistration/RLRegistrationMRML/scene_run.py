"""Running a registration: the session built from the panel's ``RunSpec``, its worker thread, its messages.

:class:`SceneRun` (part of :class:`~RLRegistrationMRML.scene_logic.RegistrationSceneLogic`) builds the
session with ``run_spec.build_session`` (as the command line does), runs it on the worker thread of
``RLRegistrationLib.registration.worker`` and drains the worker's messages on the thread that owns the
scene (:meth:`SceneRun.processMessages`), showing the newest step; cancel, continue, the scene closing mid
run, and a blocking run for scripts and tests.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

import slicer

from .parameters import SESSION_INITIALIZATION
from .subject_hierarchy import pairFromSubjectHierarchy

# the command line's hint in the library's notes, as the panels say it
CLI_STEPS_HINT = "(--steps N runs N steps)"
PANEL_STEPS_HINT = "(change Steps, or click Continue, to run them)"


def runSpec(params, steps: int | None = None, regularization: bool = True):
    """The ``RunSpec`` of a panel's parameters (the Slicer parameter node or ``RegistrationParameters``):
    ``steps`` None runs the plan's steps (the quality preset's, else the policy's), ``regularization``
    False leaves the regularization to the plan (the panel shows the default the user did not change);
    iterations and regularization only for policies that take them, samples only for policies that sample,
    the panel's "parent" initialization as the session's "none" (the parent transform is its initial
    transform)."""
    from RLRegistrationLib.policies.registry import policy_option_defaults, policy_supports_sampling
    from RLRegistrationLib.registration.run_spec import RunSpec

    takes = policy_option_defaults(params.policy)
    return RunSpec(
        policy=params.policy,
        quality=getattr(params, "quality", "auto"),
        pair=getattr(params, "pair", "auto"),
        steps=steps,
        iterations=params.iterations if "iterations" in takes else None,
        regularization=params.regularization if regularization and "regularization" in takes else None,
        initialization=SESSION_INITIALIZATION[params.initialization],
        device=params.device,
        samples=params.samples if policy_supports_sampling(params.policy) else 1,
    )


class RunUpdate:
    """What one poll of the worker brought (see :meth:`SceneRun.processMessages`)."""

    def __init__(self):
        self.reports = []
        self.finished = False
        self.cancelled = False
        self.stepsDone = 0
        self.error = ""
        self.outOfMemory = False
        self.details = ""
        self.framePosted = None  # monotonic time the worker posted the frame shown (None: no frame)


class SceneRun:
    """The run of a registration (a part of ``RegistrationSceneLogic``)."""

    def isRunning(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def startRegistration(self, params, steps: int | None = None, regularization: bool = True) -> None:
        """Check the inputs, build a new session from the parameters (main thread, ``run_spec.build_session``
        as every front-end does) and start the worker. ``steps`` None: the plan's (``self.plan.steps``);
        ``regularization`` False: the plan's (see :func:`runSpec`). With the pair "auto", two volumes of one
        patient item of the subject hierarchy tell the session the pair's kind. A refused start creates no
        node."""
        from RLRegistrationLib.devices import describe_device, resolve_device
        from RLRegistrationLib.registration.run_spec import build_session

        if self.isRunning():
            raise RuntimeError("A registration is already running.")
        self.checkInputs(params)
        spec = runSpec(params, steps, regularization)
        self.forgetSession()
        inputs = self.readInputs(params)
        self.deviceDescription = describe_device(resolve_device(spec.device))
        pair = None
        if spec.pair == "auto":
            pair = pairFromSubjectHierarchy(self.scene, params.fixedVolume, params.movingVolume)
        self.session, self.plan = build_session(spec, **inputs, pair=pair)
        self.createdNodeIDs = []
        self._startWorker(self.plan.steps)

    def continueRegistration(self, params, steps: int) -> None:
        """``steps`` more steps of the session. Asked for explicitly, they run even where the session
        decided against a deformable refinement (``decisions.deformable_blocked``, e.g. one session)."""
        if self.session is None:
            raise RuntimeError("There is no registration to continue: click Apply first.")
        if self.isRunning():
            raise RuntimeError("A registration is already running.")
        self.session.decisions.deformable_blocked = ""
        self.createdNodeIDs = []
        self._startWorker(steps)

    def _startWorker(self, steps) -> None:
        from RLRegistrationLib.registration import worker

        self.fullResolutionStep = None
        self._pendingFinal = None
        self._layersPending = True
        self._observeSceneClose()
        self.worker = worker.RegistrationWorker(self.session, steps, moving=self.movingImage)
        self.worker.start()

    def _observeSceneClose(self) -> None:
        """A scene closed mid-run stops the worker and forgets the session (its nodes are gone).

        The scene holds only a weak reference to this logic: a bound method would make a cycle (logic ->
        scene -> observer -> logic) that only the garbage collector breaks, and a scene finalized there
        closes itself and called back into a half-collected logic (a segmentation fault in a test run)."""
        if not self._closeObservers:
            scene = self.scene
            method = weakref.WeakMethod(self._onSceneStartClose)

            def onStartClose(caller, event) -> None:
                alive = method()
                if alive is not None:
                    alive(caller, event)

            tag = scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, onStartClose)
            self._closeObservers.append((scene, tag))

    def _onSceneStartClose(self, caller=None, event=None) -> None:
        self.cancel(wait=False)
        self.forgetSession()
        self.createdNodeIDs = []

    def stopObservingScene(self) -> None:
        """Stop watching the scene (the front-end is going away)."""
        for scene, tag in self._closeObservers:
            scene.RemoveObserver(tag)
        self._closeObservers = []

    def cancel(self, wait: bool = False, timeout: float = 120.0) -> None:
        """Ask the worker to stop after the step in progress (optionally wait for it)."""
        if self.worker is not None:
            self.worker.cancel()
            if wait:
                self.worker.join(timeout=timeout)

    def forgetSession(self) -> None:
        if self.worker is not None and self.worker.is_alive():
            self.worker.cancel()
        self.worker = None
        self.session = None
        self.fullResolutionStep = None
        self.displayedStep = None
        self.weightMapRangeText = "—"
        self.uncertaintyRangeText = "—"
        self.magnitudeRangeText = "—"
        self.forgetDisplayedField()
        self.resultStep = None

    def runNotes(self) -> list[str]:
        """What the run chose and decided, one line each: the plan's notes (quality auto, the pair asked)
        and, once the session is prepared, its do-no-harm decisions (pre-alignment kept or dropped, the
        pair's kind, a deformable refinement not run)."""
        if self.session is None:
            return []
        notes = list(self.plan.notes) if self.plan is not None else []
        if self.session.prepared:
            notes += [n.replace(CLI_STEPS_HINT, PANEL_STEPS_HINT) for n in self.session.decisions.notes]
        return [note for i, note in enumerate(notes) if note not in notes[:i]]

    def deformableBlocked(self) -> str:
        """Why the session runs no deformable step by default ("" when it does)."""
        return self.session.decisions.deformable_blocked if self.session is not None else ""

    def keepFinalResult(self, params):
        """After a run: the step the result is, as ``session.final_result`` chooses it (the last step, or
        the pre-alignment's, step 0, when the deformable steps did not improve the images' gradient
        alignment, ``registration.harm_check``), shown in the nodes at full resolution so that export,
        apply and harden give it. Returns the deformable refinement's verdict (None without a step)."""
        from RLRegistrationLib.registration import worker

        session = self.session
        verdict = session.harm_verdict() if session.step_count > 0 else None
        # final_result's rule: the pre-alignment when the deformable steps were dropped
        self.resultStep = 0 if verdict is not None and not verdict.accepted else session.step_count
        if self.displayedStep != self.resultStep or self.fullResolutionStep != self.resultStep:
            self.showFinal(params, worker.final_outputs(session, self.resultStep, self.movingImage))
        return verdict

    def processMessages(self, params) -> RunUpdate:
        """Drain the worker's queue; show the newest step (only the newest: the views need no backlog)."""
        update = RunUpdate()
        if self.worker is None:
            return update
        latestFrame = None
        for message in self.worker.poll():
            if message.kind in ("prepared", "step"):
                update.reports.append(message.report)
                latestFrame = message.frame
                update.framePosted = message.posted
            elif message.kind == "final":
                self._pendingFinal = message.final
            elif message.kind == "finished":
                update.finished = True
                update.cancelled = message.cancelled
                update.stepsDone = message.steps_done
            elif message.kind == "error":
                update.error = message.error
                update.outOfMemory = message.out_of_memory
                update.details = message.details
                update.stepsDone = message.steps_done
        if latestFrame is not None and not update.error:
            self.showFrame(params, latestFrame)
        if update.finished and self._pendingFinal is not None:
            self.showFinal(params, self._pendingFinal)
            self._pendingFinal = None
        if update.finished and update.stepsDone > 0:
            self.createdNodeIDs = []  # complete results now, even after a cancel
        return update

    def runBlocking(
        self,
        params,
        steps: int,
        continueRun: bool = False,
        timeoutSeconds: float = 1800,
        processEvents: Callable[[], None] | None = None,
    ):
        """Register (or continue) and wait; returns the step reports. ``processEvents`` keeps a GUI live.
        As after a panel's run, the nodes then hold the result ``session.final_result`` chooses
        (:meth:`keepFinalResult`)."""
        if continueRun:
            self.continueRegistration(params, steps)
        else:
            self.startRegistration(params, steps)
        reports = []
        start = time.time()
        while True:
            update = self.processMessages(params)
            reports.extend(update.reports)
            if update.error:
                self.discardCreatedNodes(params)
                raise RuntimeError(update.error + "\n" + update.details)
            if update.finished:
                if self.session is not None and self.session.step_count > 0:
                    self.keepFinalResult(params)
                return reports
            if self.worker is None:  # the scene was closed during the run
                raise RuntimeError("The scene was closed during the registration.")
            if time.time() - start > timeoutSeconds:
                self.cancel(wait=True)
                raise RuntimeError("Registration timed out.")
            if processEvents is not None:
                processEvents()
            time.sleep(0.05)

    def summary(self, cancelled: bool = False) -> str:
        """One line on the run: steps, NCC, Dice (and after the pre-alignment), uncertainty, mapping."""
        if self.session is None or not self.session.reports:
            return ""
        report = self.session.reports[-1]
        text = f"{self.session.step_count} steps, NCC {report.similarity:.3f}"
        if report.dice is not None:
            text += f", Dice {report.dice:.3f} (after pre-alignment {self.session.reports[0].dice:.3f})"
        if getattr(report, "uncertainty_mean_mm", None) is not None:
            text += (
                f", uncertainty {report.uncertainty_mean_mm:.2f} mm (mean), "
                f"{report.uncertainty_max_mm:.2f} mm (max)"
            )
        from RLRegistrationLib.fields.intensity_mapping import mapping_summary

        mapping = mapping_summary(report.diagnostics)
        if mapping:
            text += f"; {mapping}"
        if cancelled:
            text = (
                "Cancelled after "
                + text
                + ". Outputs show the working-resolution preview; full resolution is computed on export."
            )
        return text
