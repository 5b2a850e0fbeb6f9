"""The browser panel's behaviour, without trame: inputs, run, replay, display options, downloads.

:class:`PanelController` is to the web page what ``RLRegistrationWidget`` is to the Slicer panel: it feeds
events to the shared :class:`~RLRegistrationLib.panel_state.PanelStateMachine` and drives the shared MRML
layer (``RLRegistrationMRML.scene_logic.RegistrationSceneLogic``); the registration runs on the worker
thread of :mod:`RLRegistrationLib.slicer_bridge`, whose messages :meth:`PanelController.poll` drains on the
thread that owns the scene (the web server's event loop). :meth:`PanelController.view` is everything the
page shows, as plain values: the trame layer copies it into the shared state, so every browser tab sees
the same panel.

Every user mistake (a file that is not an image, a path outside the data folder, a click that is not
allowed now) becomes :attr:`PanelController.error` (the page's error banner) and changes nothing else.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from RLRegistrationLib.errors import RLRegistrationError
from RLRegistrationLib.frontends.panel_state import (
    PanelState,
    PanelStateError,
    PanelStateMachine,
    progress_text,
)
from RLRegistrationLib.registration.quality import QUALITY_PRESETS
from RLRegistrationMRML.parameters import INITIALIZATION_MODES, RegistrationParameters

from . import mrml_layer
from .files import DataFolder, PathRefused

log = logging.getLogger("rlreg.web")

INPUT_ROLES = {
    "fixed": ("fixedVolume", "fixed image", False),
    "moving": ("movingVolume", "moving image", False),
    "fixed_labels": ("fixedLabels", "fixed labels", True),
    "moving_labels": ("movingLabels", "moving labels", True),
}
OVERLAY_CHOICES = ("none", "weight_map", "magnitude", "uncertainty")
OVERLAY_ATTRIBUTES = {
    "weight_map": "weightMapVolume",
    "magnitude": "magnitudeVolume",
    "uncertainty": "uncertaintyVolume",
}
OVERLAY_COLORMAPS = {"weight_map": "viridis", "magnitude": "inferno", "uncertainty": "plasma"}
OVERLAY_UNITS = {"weight_map": "", "magnitude": " mm", "uncertainty": " mm"}
PLAY_INTERVAL_S = 0.4


@dataclass
class FrameTiming:
    """When the page's data for a step was ready: ``received`` (message drained, monotonic seconds),
    ``shown`` (MRML nodes updated), and the step's own compute time."""

    step: int
    received: float
    shown: float
    step_seconds: float
    posted: float | None = None  # when the worker finished the step and posted it


@dataclass
class RunSettings:
    """The registration options of the panel (what the Slicer panel's spin boxes hold)."""

    # the defaults of the panel's parameters (the Slicer parameter node's)
    policy: str = RegistrationParameters.policy
    steps: int = RegistrationParameters.steps
    iterations: int = RegistrationParameters.iterations
    samples: int = RegistrationParameters.samples
    regularization: float = RegistrationParameters.regularization
    device: str = RegistrationParameters.device
    initialization: str = RegistrationParameters.initialization
    quality: str = RegistrationParameters.quality
    limits: dict = field(
        default_factory=lambda: {
            "steps": (1, 500),
            "iterations": (1, 500),
            "samples": (1, 16),
            "regularization": (0.0, 20.0),
        }
    )


class PanelController:
    """One registration panel on one scene (shared by every browser tab of the server)."""

    def __init__(self, slicer_app, data: DataFolder, show_volume=None):
        from RLRegistrationLib.devices import device_choices
        from RLRegistrationLib.policies.choices import policy_choices

        self.app = slicer_app
        self.scene = slicer_app.scene
        self.data = data
        self._show_volume = show_volume  # callback(volume_node): fit the views to a new fixed volume
        self.logic = mrml_layer.create_scene_logic(self.scene)
        self.params = mrml_layer.new_parameters()
        self.state = PanelStateMachine()
        self.policies = {choice.name: choice for choice in policy_choices()}
        self.devices = device_choices()
        self.settings = RunSettings()
        self.apply_policy_defaults(self.settings.policy)
        self.inputs: dict[str, str | None] = dict.fromkeys(INPUT_ROLES)
        self.error = ""
        self.status = "Pick the fixed and moving images, then click Register."
        self.progress = ""
        self.last_report = None
        self.overlay = "none"
        self.overlay_range: tuple[float, float] | None = None
        self.output_dir = Path(tempfile.mkdtemp(prefix="rlreg-view-"))
        self.frame_timings: list[FrameTiming] = []
        self.run_started: float | None = None
        self.first_step_seconds: float | None = None
        self._next_tick = 0.0

    # ------------------------------------------------------------------ inputs
    def select_input(self, role: str, name: str | None) -> bool:
        """Load the picked file for ``role`` (fixed, moving, fixed_labels, moving_labels); None clears it.

        A refused path or an unreadable file sets the error banner and changes nothing. Returns success.
        """
        from RLRegistrationLib.io.imaging import read_image, read_label_map

        if role not in INPUT_ROLES:
            return self._fail(f"unknown input '{role}'")
        if self.state.busy:
            return self._fail("The inputs cannot change while a registration runs: cancel it first.")
        attribute, what, labels = INPUT_ROLES[role]
        if not name:
            self._replace_input(role, attribute, None, None)
            return True
        try:
            path = self.data.resolve(name, what)
            image = (read_label_map if labels else read_image)(path, what)  # validated: 3D, scalar, finite
            node = mrml_layer.volume_node_from_image(
                self.scene, image, Path(name).name.split(".")[0], labels=labels
            )
        except PathRefused as error:
            return self._fail(str(error))
        except (RLRegistrationError, OSError) as error:
            return self._fail(_with_name(str(error), name))
        self._replace_input(role, attribute, name, node)
        return True

    def _replace_input(self, role: str, attribute: str, name: str | None, node) -> None:
        old = getattr(self.params, attribute)
        if self.state.state in (PanelState.DONE, PanelState.FAILED):
            self.state.reset()
        self.logic.forgetSession()
        setattr(self.params, attribute, node)
        mrml_layer.remove_nodes(self.logic, [old])
        self.inputs[role] = name
        self.error = ""
        self.progress = ""
        self.state.set_inputs_ready(
            self.params.fixedVolume is not None and self.params.movingVolume is not None
        )
        if role in ("fixed", "moving"):
            self._show_inputs()
        self.status = (
            "Ready: click Register." if self.state.inputs_ready else "Pick the fixed and moving images."
        )

    def _show_inputs(self) -> None:
        """Fixed in the background, moving (before registration) in the foreground at half opacity."""
        fixed, moving = self.params.fixedVolume, self.params.movingVolume
        background = fixed or moving
        self.logic.setSliceLayers(background, moving if fixed is not None else None, 0.5)
        if background is not None and self._show_volume is not None:
            self._show_volume(background)

    # ------------------------------------------------------------------ settings
    def apply_policy_defaults(self, policy: str) -> None:
        """The policy's steps / iterations / regularization (as the Slicer panel does on a policy change)."""
        choice = self.policies.get(policy)
        if choice is None:
            return
        self.settings.policy = policy
        self.settings.steps = int(choice.default_steps)
        defaults = choice.option_defaults or {}
        if defaults.get("iterations") is not None:
            self.settings.iterations = int(defaults["iterations"])
        if defaults.get("regularization") is not None:
            self.settings.regularization = float(defaults["regularization"])
        if not choice.supports_sampling:
            self.settings.samples = 1

    def update_settings(self, **values) -> bool:
        """Set run options from the page (out-of-range or unknown values are refused with the banner)."""
        if self.state.busy:
            return self._fail("The options cannot change while a registration runs.")
        for key, value in values.items():
            if value is None:
                continue
            if key == "policy":
                if value not in self.policies:
                    return self._fail(f"unknown policy '{value}'")
                if value != self.settings.policy:
                    self.apply_policy_defaults(value)
            elif key == "device":
                if value not in {v for v, _, available in self.devices if available}:
                    return self._fail(f"device '{value}' is not available here")
                self.settings.device = value
            elif key == "initialization":
                if value not in INITIALIZATION_MODES:
                    return self._fail(f"unknown initialization '{value}'")
                self.settings.initialization = value
            elif key == "quality":
                if value not in QUALITY_PRESETS:
                    return self._fail(f"unknown quality '{value}'")
                if value != self.settings.quality:
                    choice = self.policies.get(self.settings.policy)
                    measured = int(choice.default_steps) if choice is not None else self.settings.steps
                    defaults = (choice.option_defaults or {}) if choice is not None else {}
                    steps, regularization = QUALITY_PRESETS[value].panel_settings(
                        measured, defaults.get("regularization")
                    )
                    self.settings.steps = steps
                    if regularization is not None:
                        self.settings.regularization = float(regularization)
                self.settings.quality = value
            elif key in self.settings.limits:
                lo, hi = self.settings.limits[key]
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    return self._fail(f"{key}: '{value}' is not a number")
                if not math.isfinite(number) or not lo <= number <= hi:
                    return self._fail(f"{key} must be between {lo} and {hi}, got {value}")
                setattr(self.settings, key, number if key == "regularization" else int(round(number)))
            else:
                return self._fail(f"unknown option '{key}'")
        return True

    def _apply_settings(self) -> None:
        s, p = self.settings, self.params
        p.policy, p.steps, p.iterations, p.regularization = s.policy, s.steps, s.iterations, s.regularization
        p.device, p.initialization, p.quality = s.device, s.initialization, s.quality
        choice = self.policies.get(s.policy)
        p.samples = s.samples if choice is not None and choice.supports_sampling else 1

    # ------------------------------------------------------------------ run
    def register(self) -> bool:
        """Register (idle / done / failed) or Cancel (running): the panel's one button."""
        if self.state.state == PanelState.RUNNING:
            return self.cancel()
        if self.state.busy:
            return self._fail("Cancelling: wait for the step in progress to end.")
        if not self.state.inputs_ready:
            return self._fail("Pick the fixed and the moving image first.")
        self._apply_settings()
        fixed, moving = self.params.fixedVolume, self.params.movingVolume
        mrml_layer.ensure_output_volumes(self.scene, self.params, f"{moving.GetName()} to {fixed.GetName()}")
        return self._start(continue_run=False)

    def continue_run(self) -> bool:
        """More steps from the current result (the Steps box)."""
        if self.state.state != PanelState.DONE:
            return self._fail("Continue is possible after a run has finished.")
        self._apply_settings()
        return self._start(continue_run=True)

    def _start(self, continue_run: bool) -> bool:
        steps = int(self.settings.steps)
        try:
            if continue_run:
                self.logic.continueRegistration(self.params, steps)
                self.state.continue_(steps)
            else:
                self.logic.startRegistration(self.params, steps)
                self.state.start(steps)
        except (RLRegistrationError, ValueError, RuntimeError, PanelStateError) as error:
            if self.logic.session is None and self.state.state in (PanelState.DONE, PanelState.FAILED):
                self.state.reset()
            return self._fail(f"Failed to start the registration: {error}")
        self.error = ""
        self.last_report = None
        self.run_started = time.monotonic()
        self.first_step_seconds = None
        self.frame_timings = []
        self.progress = "Preparing (pre-alignment, working grid)..."
        self.status = f"Running on {self.logic.deviceDescription}"
        log.info(
            "registration started: %d steps of %s on %s",
            steps,
            self.params.policy,
            self.logic.deviceDescription,
        )
        return True

    def cancel(self) -> bool:
        """Stop after the step in progress."""
        if self.state.state != PanelState.RUNNING:
            return self._fail("Nothing to cancel.")
        self.state.cancel()
        self.logic.cancel()
        self.status = "Cancelling: stopping after the step in progress..."
        return True

    def poll(self) -> bool:
        """Drain the worker's messages (call often, on the scene's thread); True when the panel changed."""
        if self.logic.worker is None or not self.state.busy:
            return False
        received = time.monotonic()
        try:
            update = self.logic.processMessages(self.params)
        except Exception as error:  # noqa: BLE001 - a display failure must stop the run cleanly, visibly
            log.exception("display of a step failed")
            self.logic.cancel(wait=False)
            self.state.error(str(error))
            self.logic.discardCreatedNodes(self.params)
            self.logic.forgetSession()
            self.error = f"Registration display failed: {error}"
            return True
        if not (update.reports or update.finished or update.error):
            return False
        shown = time.monotonic()
        for report in update.reports:
            self.state.step(report.index)
            self.last_report = report
        if update.reports:
            report = self.last_report
            posted = update.framePosted or received
            self.frame_timings.append(FrameTiming(report.index, received, shown, report.step_seconds, posted))
            log.info(
                "step %d shown %.2f s after the click, %.0f ms after the step finished (step %.0f ms, "
                "display %.0f ms)",
                report.index,
                shown - (self.run_started or shown),
                1000 * (shown - posted),
                1000 * report.step_seconds,
                1000 * (shown - received),
            )
            if report.index > self.state.run_first_step and self.first_step_seconds is None:
                self.first_step_seconds = shown - (self.run_started or shown)
            value, total = self.state.progress()
            self.progress = progress_text(
                report.index - self.state.run_first_step,
                total,
                report.step_seconds,
                report.similarity,
                report.dice,
                report.uncertainty_mean_mm,
            )
            self._apply_overlay_range()
        if update.error:
            self.state.error(update.error)
            self.logic.discardCreatedNodes(self.params)
            self.logic.forgetSession()
            self.error = f"Registration failed: {update.error}"
            self.status = "Registration failed."
            log.error("registration failed: %s\n%s", update.error, update.details)
        elif update.finished:
            self.state.finished(update.stepsDone)
            if self.state.state == PanelState.IDLE:
                self.logic.discardCreatedNodes(self.params)
                self.logic.forgetSession()
                self.status = "Cancelled before the first step: nothing was changed."
                self.progress = ""
            else:
                self.status = self.logic.summary(cancelled=update.cancelled)
            self._apply_overlay_range()
            log.info(
                "registration %s after %d steps",
                "cancelled" if update.cancelled else "finished",
                update.stepsDone,
            )
        return True

    # ------------------------------------------------------------------ replay
    def step_back(self) -> bool:
        if self.state.state != PanelState.DONE or self.state.playing:
            return self._fail("Step back is possible after a run has finished (and not while playing).")
        try:
            self.logic.stepBack(self.params)
            self.state.step_back()
        except (RuntimeError, PanelStateError, RLRegistrationError) as error:
            return self._fail(f"Failed to step back: {error}")
        self.status = self.logic.summary()
        self.progress = f"Step back: {self.state.steps_done} steps"
        self._apply_overlay_range()
        return True

    def show_step(self, step: int) -> bool:
        if self.state.state != PanelState.DONE:
            return self._fail("Replay is possible after a run has finished.")
        try:
            step = int(step)
        except (TypeError, ValueError):
            return self._fail(f"not a step number: {step!r}")
        if step == self.state.displayed_step and self.logic.displayedStep == step:
            return False
        try:
            shown = self.state.replay(step)
            self.logic.showStep(self.params, shown)
        except (RuntimeError, PanelStateError, RLRegistrationError) as error:
            return self._fail(f"Failed to show step {step}: {error}")
        self._apply_overlay_range()
        return True

    def toggle_play(self) -> bool:
        if self.state.playing:
            self.state.pause()
            return True
        if self.state.state != PanelState.DONE or self.state.steps_done < 1:
            return self._fail("Play is possible after a run has finished.")
        self.state.play()
        self.logic.showStep(self.params, self.state.displayed_step)
        self._next_tick = time.monotonic() + PLAY_INTERVAL_S
        return True

    def tick(self) -> bool:
        """Play timer (call often): the next step every PLAY_INTERVAL_S while playing."""
        if not self.state.playing or time.monotonic() < self._next_tick:
            return False
        self._next_tick = time.monotonic() + PLAY_INTERVAL_S
        step = self.state.tick()
        if step is not None:
            try:
                self.logic.showStep(self.params, step)
            except (RuntimeError, RLRegistrationError) as error:
                self.state.pause()
                return self._fail(f"Failed to show step {step}: {error}")
            self._apply_overlay_range()
        return True

    # ------------------------------------------------------------------ display
    def set_display(
        self, field_display: str | None = None, overlay: str | None = None, opacity: float | None = None
    ) -> bool:
        """Field display (Hidden / Glyph / Grid / Contour), the overlay shown (none / weight_map / magnitude /
        uncertainty; one at a time, as in the Slicer panel) and its opacity."""
        from RLRegistrationMRML.parameters import FIELD_DISPLAY_MODES

        if field_display is not None:
            if field_display not in FIELD_DISPLAY_MODES:
                return self._fail(f"unknown field display '{field_display}'")
            self.params.fieldDisplay = field_display
        if overlay is not None:
            if overlay not in OVERLAY_CHOICES:
                return self._fail(f"unknown overlay '{overlay}'")
            if overlay != self.overlay:
                self.overlay_range = None
            self.overlay = overlay
            self.params.showWeightMap = overlay == "weight_map"
            self.params.showMagnitude = overlay == "magnitude"
            self.params.showUncertainty = overlay == "uncertainty"
        if opacity is not None:
            try:
                opacity = float(opacity)
            except (TypeError, ValueError):
                return self._fail(f"opacity: '{opacity}' is not a number")
            self.params.overlayOpacity = min(max(opacity, 0.0), 1.0)
        if self.params.fixedVolume is not None and self.state.has_session:
            self.logic.updateDisplay(self.params)
        self._apply_overlay_range()
        return True

    def set_overlay_range(self, low: float, high: float) -> bool:
        """Window of the overlay shown (its colour bar's range)."""
        try:
            low, high = float(low), float(high)
        except (TypeError, ValueError):
            return self._fail("the value range needs two numbers")
        if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
            return self._fail(f"the value range needs low < high, got {low} – {high}")
        self.overlay_range = (low, high)
        self._apply_overlay_range()
        return True

    def overlay_node(self):
        attribute = OVERLAY_ATTRIBUTES.get(self.overlay)
        node = getattr(self.params, attribute) if attribute else None
        return node if node is not None and node.GetImageData() is not None else None

    def overlay_data_range(self) -> tuple[float, float] | None:
        node = self.overlay_node()
        if node is None:
            return None
        lo, hi = node.GetImageData().GetScalarRange()
        return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1e-3)

    def _apply_overlay_range(self) -> None:
        node = self.overlay_node()
        if node is None or self.overlay_range is None or node.GetDisplayNode() is None:
            return
        display = node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(*self.overlay_range)

    def overlay_window(self) -> tuple[float, float] | None:
        node = self.overlay_node()
        if node is None or node.GetDisplayNode() is None:
            return None
        display = node.GetDisplayNode()
        window, level = display.GetWindow(), display.GetLevel()
        return level - window / 2.0, level + window / 2.0

    # ------------------------------------------------------------------ downloads
    def download_transform(self) -> tuple[str, bytes]:
        """The displayed step's transform as an ITK .h5 (the session's own output, nothing else)."""
        self._require_result()
        path = self.output_dir / "transform.h5"
        self.logic.saveTransform(self.params, str(path))
        return self._download_name("h5"), path.read_bytes()

    def download_warped(self) -> tuple[str, bytes]:
        """The moving image resampled through the displayed step's transform, on the fixed grid (NIfTI)."""
        import SimpleITK as sitk

        self._require_result()
        result = self.logic.result(self.params)
        from RLRegistrationLib.registration.worker import background_value

        moving = self.logic.movingImage
        path = self.output_dir / "warped.nii.gz"
        sitk.WriteImage(result.warp_image(moving, default_value=background_value(moving)), str(path), True)
        return self._download_name("nii.gz", "warped"), path.read_bytes()

    def _require_result(self) -> None:
        if self.state.state != PanelState.DONE or self.logic.session is None:
            raise PermissionError("403 Forbidden: there is no finished result of this session to download")

    def _download_name(self, extension: str, kind: str = "to") -> str:
        moving = Path(self.inputs["moving"] or "moving").name.split(".")[0]
        fixed = Path(self.inputs["fixed"] or "fixed").name.split(".")[0]
        return (
            f"{moving}-{kind}-{fixed}.{extension}"
            if kind == "to"
            else f"{moving}-warped-to-{fixed}.{extension}"
        )

    # ------------------------------------------------------------------ page
    def view(self) -> dict:
        """Everything the page shows, as JSON-able values (buttons follow ``PanelStateMachine.flags()``)."""
        flags = self.state.flags()
        state = self.state.state
        apply_text = {"Apply": "Register"}.get(flags.apply_text, flags.apply_text)
        value, total = self.state.progress()
        choice = self.policies.get(self.settings.policy)
        data_range = self.overlay_data_range()
        window = self.overlay_range or self.overlay_window() or data_range
        return {
            "panel_state": state.value,
            "register_text": apply_text,
            "register_enabled": flags.apply_enabled,
            "inputs_enabled": flags.inputs_enabled,
            "continue_enabled": flags.continue_enabled,
            "step_back_enabled": flags.step_back_enabled,
            "slider_enabled": flags.slider_enabled,
            "slider_max": flags.slider_maximum,
            "slider_value": flags.slider_value,
            "play_enabled": flags.play_enabled,
            "playing": flags.playing,
            "export_enabled": flags.export_enabled,
            "progress_visible": flags.progress_visible,
            "progress_text": self.progress,
            "progress_percent": 100.0 * value / total
            if self.state.busy
            else (100.0 if state == PanelState.DONE else 0.0),
            "step_label": f"{flags.slider_value} / {flags.slider_maximum}",
            "status_text": self.status,
            "error_text": self.error,
            "inputs": dict(self.inputs),
            "policy": self.settings.policy,
            "policy_description": choice.description if choice else "",
            "policy_modality": choice.modality if choice else "",
            "policy_samples": bool(choice and choice.supports_sampling),
            "steps": self.settings.steps,
            "iterations": self.settings.iterations,
            "samples": self.settings.samples,
            "regularization": self.settings.regularization,
            "device": self.settings.device,
            "initialization": self.settings.initialization,
            "quality": self.settings.quality,
            "field_display": self.params.fieldDisplay,
            "overlay": self.overlay,
            "overlay_opacity": self.params.overlayOpacity,
            "overlay_available": self.overlay_node() is not None,
            "overlay_colormap": OVERLAY_COLORMAPS.get(self.overlay, ""),
            "overlay_unit": OVERLAY_UNITS.get(self.overlay, ""),
            "overlay_data_range": list(data_range) if data_range else None,
            "overlay_window": [round(w, 6) for w in window] if window else None,
            "ranges": {
                "weight_map": self.logic.weightMapRangeText,
                "magnitude": self.logic.magnitudeRangeText,
                "uncertainty": self.logic.uncertaintyRangeText,
            },
        }

    def _fail(self, message: str) -> bool:
        self.error = message
        log.warning("%s", message)
        return False

    def close(self) -> None:
        """Stop a run and remove the session's temporary outputs."""
        self.logic.cancel(wait=True, timeout=30)
        shutil.rmtree(self.output_dir, ignore_errors=True)


def _with_name(message: str, name: str) -> str:
    """Make sure the banner names the picked file (the library's messages name the resolved path)."""
    return message if name in message else f"{name}: {message}"
