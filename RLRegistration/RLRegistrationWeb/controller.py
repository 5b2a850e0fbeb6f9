"""The browser panel, without trame: files in, the shared panel controller, overlays, downloads, the page.

:class:`WebPanel` is to the web page what ``RLRegistrationWidget`` is to the Slicer panel: it binds the
page to the MRML layer's :class:`~RLRegistrationMRML.panel_controller.PanelController` (settings and
their checks, runs, polling, errors, the CPU retry, replay), which drives the shared scene logic; the
registration runs on the worker thread whose messages :meth:`WebPanel.poll` drains on the thread that
owns the scene (the web server's event loop). What only the browser has is here: inputs picked from the
data folder (read by the library's reader, voxel for voxel, as ``rlreg register`` reads them), one overlay
at a time with its value range (``overlay_display``), the downloads, and :meth:`WebPanel.view`, everything the page shows as
plain values (the trame layer copies it into the shared state, so every browser tab sees the same panel).

Every user mistake (a file that is not an image, a path outside the data folder, a click that is not
allowed now, fixed = moving) becomes the page's error banner and changes nothing else; no text the page
shows holds a path of the server (:class:`~RLRegistrationWeb.public.PublicText`).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from RLRegistrationLib.errors import RLRegistrationError
from RLRegistrationLib.frontends.panel_state import PanelState
from RLRegistrationMRML.panel_controller import PanelController
from RLRegistrationMRML.parameters import FLICKER_MODES, OVERLAY_VOLUMES, RUN_SETTINGS
from RLRegistrationMRML.slice_annotations import WINDOW_PRESETS, applyWindowPreset, sliceAnnotation

from . import mrml_layer
from .files import DataFolder, PathRefused
from .overlay_display import OverlayDisplay
from .public import PublicText

log = logging.getLogger("rlreg.web")

INPUT_ROLES = {
    "fixed": ("fixedVolume", "fixed image", False),
    "moving": ("movingVolume", "moving image", False),
    "fixed_labels": ("fixedLabels", "fixed labels", True),
    "moving_labels": ("movingLabels", "moving labels", True),
}
OVERLAY_CHOICES = ("none", *OVERLAY_VOLUMES)
# the colour bar's name on the page (the MRML colour tables are OVERLAY_VOLUMES' "colors")
OVERLAY_COLORMAPS = {
    "weight_map": "viridis",
    "magnitude": "inferno",
    "uncertainty": "plasma",
    "jacobian": "RdBu_r",
}
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


class WebPanel(OverlayDisplay):
    """One registration panel on one scene (shared by every browser tab of the server)."""

    def __init__(self, slicer_app, data: DataFolder, show_volume=None):
        self.scene = slicer_app.scene
        self.data = data
        self._show_volume = show_volume  # callback(volume_node): fit the views to a new fixed volume
        self.logic = mrml_layer.create_scene_logic(self.scene)
        self.params = mrml_layer.new_parameters()
        self.controller = PanelController(self.logic, self.params, log=log)
        self.controller.loadChoices()
        self.controller.status = "Pick the fixed and moving images, then click Register."
        self.public = PublicText()
        if data.root is not None:
            self.public.name_folder(data.root, "(--data-dir)")
        self.inputs: dict[str, str | None] = dict.fromkeys(INPUT_ROLES)
        self.overlay = "none"
        self.overlay_range: tuple[float, float] | None = None
        self.output_dir = Path(tempfile.mkdtemp(prefix="rlreg-view-"))
        self.public.name_folder(self.output_dir, "(the session's outputs)")
        self.frame_timings: list[FrameTiming] = []
        self.first_step_seconds: float | None = None
        self._next_tick = 0.0
        self._next_flicker = 0.0
        self.readout_point: tuple[float, float, float] | None = None  # world RAS mm of the read-out
        self.readout_view = ""  # the view the point was picked in
        self.window_preset = "auto"  # the fixed (background) volume's window/level (WINDOW_PRESETS)

    @property
    def state(self):
        """The shared ``PanelStateMachine``."""
        return self.controller.state

    @property
    def policies(self) -> dict:
        return self.controller.policies

    @property
    def devices(self) -> list:
        return self.controller.devices

    def _fail(self, message: str) -> bool:
        return self.controller.fail(message)

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
        self.public.keep(name)
        try:
            path = self.data.resolve(name, what)
            self.public.name_path(path, name)
            image = (read_label_map if labels else read_image)(path, what)  # validated: 3D, scalar, finite
            node = mrml_layer.volume_node_from_image(self.scene, image, _node_name(name), labels=labels)
        except PathRefused as error:
            return self._fail(str(error))
        except (RLRegistrationError, OSError) as error:
            message = str(error)
            return self._fail(message if name in message else f"{name}: {message}")
        self._replace_input(role, attribute, name, node)
        return True

    def _replace_input(self, role: str, attribute: str, name: str | None, node) -> None:
        old = getattr(self.params, attribute)
        self.controller.forgetRun()
        setattr(self.params, attribute, node)
        mrml_layer.remove_nodes(self.logic, [old])
        if node is not None:
            node.SetName(_node_name(name))  # the file's name, not a name made unique in the scene
        self.inputs[role] = name
        self.controller.clearError()
        ready = self.controller.refreshInputs()
        if role in ("fixed", "moving"):
            self._show_inputs()
        if self.inputs["fixed"] and self.inputs["fixed"] == self.inputs["moving"]:
            self.controller.status = (
                "The fixed and the moving image are the same file: pick two different ones."
            )
        else:
            self.controller.status = (
                "Ready: click Register." if ready else "Pick the fixed and moving images."
            )

    def _show_inputs(self) -> None:
        """Fixed in the background, moving (before registration) in the foreground at half opacity."""
        fixed, moving = self.params.fixedVolume, self.params.movingVolume
        background = fixed or moving
        self.logic.setSliceLayers(background, moving if fixed is not None else None, 0.5)
        applyWindowPreset(fixed, self.window_preset)
        if background is not None and self._show_volume is not None:
            self._show_volume(background)

    # ------------------------------------------------------------------ settings
    def update_settings(self, **values) -> bool:
        """Set run options from the page (checked against the panel's settings table; a refusal shows the
        banner and changes nothing more)."""
        unknown = sorted(set(values) - set(RUN_SETTINGS))
        if unknown:
            return self._fail(f"unknown option '{unknown[0]}'")
        return self.controller.updateSettings(**values)

    def settings(self) -> dict:
        """The run options as the page shows them."""
        return {name: getattr(self.params, name) for name in RUN_SETTINGS}

    # ------------------------------------------------------------------ run
    def register(self) -> bool:
        """Register (idle / done / failed) or Cancel (running): the panel's one button."""
        if self.state.state == PanelState.RUNNING:
            return self.controller.cancel()
        if self.state.busy or not self.controller.refreshInputs():
            return self.controller.start()  # refused, with the reason
        try:
            self.logic.checkInputs(self.params)  # fixed = moving and the like: refused before any node
        except ValueError as error:
            return self._fail(f"Failed to start the registration: {error}")
        fixed, moving = self.params.fixedVolume, self.params.movingVolume
        created = mrml_layer.ensure_output_volumes(
            self.scene, self.params, f"{moving.GetName()} to {fixed.GetName()}"
        )
        if not self.controller.start():
            mrml_layer.discard_output_volumes(self.logic, self.params, created)
            return False
        self._run_started()
        return True

    def continue_run(self) -> bool:
        """More steps from the current result (the Steps box)."""
        if not self.controller.start(continueRun=True):
            return False
        self._run_started()
        return True

    def retry_on_cpu(self) -> bool:
        """The GPU ran out of memory: the same registration on the CPU."""
        if not self.controller.retryOnCpu():
            return False
        self._run_started()
        return True

    def _run_started(self) -> None:
        self.first_step_seconds = None
        self.frame_timings = []

    def cancel(self) -> bool:
        """Stop after the step in progress."""
        return self.controller.cancel()

    def poll(self) -> bool:
        """Drain the worker's messages (call often, on the scene's thread); True when the panel changed."""
        result = self.controller.poll()
        if result.reports:
            report = result.reports[-1]
            started = self.controller.runStarted or result.shown
            posted = result.posted or result.received
            self.frame_timings.append(
                FrameTiming(report.index, result.received, result.shown, report.step_seconds, posted)
            )
            log.info(
                "step %d shown %.2f s after the click, %.0f ms after the step finished (step %.0f ms, "
                "display %.0f ms)",
                report.index,
                result.shown - started,
                1000 * (result.shown - posted),
                1000 * report.step_seconds,
                1000 * (result.shown - result.received),
            )
            if report.index > self.state.run_first_step and self.first_step_seconds is None:
                self.first_step_seconds = result.shown - started
        if result.changed:
            self._apply_overlay_range()
        return result.changed

    # ------------------------------------------------------------------ replay
    def step_back(self) -> bool:
        ok = self.controller.stepBack()
        self._apply_overlay_range()
        return ok

    def show_step(self, step: int) -> bool:
        ok = self.controller.showStep(step)
        self._apply_overlay_range()
        return ok

    def toggle_play(self) -> bool:
        if self.state.playing:
            self.controller.pause()
            return True
        if not self.controller.play():
            return False
        self._next_tick = time.monotonic() + PLAY_INTERVAL_S
        return True

    def tick(self) -> bool:
        """Play and flicker timers (call often): the next step every PLAY_INTERVAL_S while playing; the
        flicker's switch every ``flickerPeriod`` seconds."""
        flickered = self._flicker()
        if not self.state.playing or time.monotonic() < self._next_tick:
            return flickered
            return False
        self._next_tick = time.monotonic() + PLAY_INTERVAL_S
        self.controller.tick()
        self._apply_overlay_range()
        return True

    def _flicker(self) -> bool:
        if self.params.compareMode not in FLICKER_MODES or self.logic.session is None:
            return False
        now = time.monotonic()
        if now < self._next_flicker:
            return False
        self._next_flicker = now + float(self.params.flickerPeriod)
        self.logic.setFlickerPhase(self.params, not self.logic.flickerShowsWarped)
        return True

    # ------------------------------------------------------------------ display
    def set_display(
        self,
        field_display: str | None = None,
        overlay: str | None = None,
        opacity: float | None = None,
        compare_mode: str | None = None,
        flicker_period: float | None = None,
    ) -> bool:
        """Field display (Hidden / Glyph / Grid / Contour), the overlay shown (none / weight_map / magnitude /
        uncertainty / jacobian; one at a time, as in the Slicer panel), its opacity, how fixed and warped
        are compared (fade / checkerboard / difference / flicker) and the flicker's period (s)."""
        if overlay is not None and overlay not in OVERLAY_CHOICES:
            return self._fail(f"unknown overlay '{overlay}'")
        if opacity is not None:
            try:
                opacity = min(max(float(opacity), 0.0), 1.0)
            except (TypeError, ValueError):
                return self._fail(f"opacity: '{opacity}' is not a number")
        if not self.controller.updateSettings(
            fieldDisplay=field_display,
            overlayOpacity=opacity,
            compareMode=compare_mode,
            flickerPeriod=flicker_period,
        ):
            return False
        if overlay is not None:
            if overlay != self.overlay:
                self.overlay_range = None
            self.overlay = overlay
            self.params.showWeightMap = overlay == "weight_map"
            self.params.showMagnitude = overlay == "magnitude"
            self.params.showUncertainty = overlay == "uncertainty"
            self.params.showJacobian = overlay == "jacobian"
        ok = self.controller.updateDisplay()
        self._apply_overlay_range()
        return ok

    def set_window_preset(self, preset: str) -> bool:
        """Window/level of the fixed volume (the views' background) from its percentiles (``WINDOW_PRESETS``)."""
        if preset not in WINDOW_PRESETS:
            return self._fail(f"unknown window preset '{preset}'")
        self.window_preset = preset
        applyWindowPreset(self.params.fixedVolume, preset)
        return True

    def slice_annotations(self) -> dict:
        """Slice node name -> its label: orientation, patient directions and position ("Axial (R ← → L) · S
        12.0 mm")."""
        count = self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")
        nodes = [self.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode") for i in range(count)]
        return {node.GetName(): sliceAnnotation(node)["text"] for node in nodes}

    # ------------------------------------------------------------------ read-out
    def set_readout_point(self, ras, view: str = "") -> bool:
        """The point (world RAS, mm) whose values the read-out line shows; None clears it."""
        if ras is None:
            self.readout_point = None
            return True
        try:
            point = tuple(float(v) for v in ras)
        except (TypeError, ValueError):
            return self._fail(f"read-out: not a point: {ras!r}")
        if len(point) != 3 or not all(math.isfinite(v) for v in point):
            return self._fail(f"read-out: a point needs three finite coordinates, got {ras!r}")
        self.readout_point = point
        self.readout_view = view
        return True

    def readout(self):
        """The MRML layer's read-out at :attr:`readout_point` (None without a point or inputs)."""
        if self.readout_point is None or self.params.fixedVolume is None:
            return None
        try:
            return self.logic.readout(self.params, self.readout_point)
        except Exception as error:  # noqa: BLE001 - the line says why, the page stays live
            log.exception("read-out failed")
            return f"read-out failed: {error}"

    def readout_values(self) -> tuple[str, dict | None]:
        """(the read-out line, its numbers for tests and tools) of :attr:`readout_point`."""
        values = self.readout()
        if values is None:
            return "", None
        if isinstance(values, str):
            return values, None
        prefix = f"{self.readout_view}: " if self.readout_view else ""
        numbers = {
            key: getattr(values, key)
            for key in ("fixed", "warped", "magnitude", "weight", "jacobian", "uncertainty")
        }
        return prefix + values.text(), {"ras": list(values.ras), **numbers}

    # ------------------------------------------------------------------ downloads
    def download_transform(self) -> tuple[str, bytes]:
        """The displayed step's transform as an ITK .h5 (the session's own output, nothing else)."""
        self._require_result()
        path = self.output_dir / "transform.h5"
        self.logic.saveTransform(self.params, str(path))
        return self.download_name("h5"), path.read_bytes()

    def download_warped(self) -> tuple[str, bytes]:
        """The moving image resampled through the displayed step's transform, on the fixed grid (NIfTI)."""
        import SimpleITK as sitk

        from RLRegistrationLib.registration.worker import background_value

        self._require_result()
        result = self.logic.result(self.params)
        moving = self.logic.movingImage
        path = self.output_dir / "warped.nii.gz"
        sitk.WriteImage(result.warp_image(moving, default_value=background_value(moving)), str(path), True)
        return self.download_name("nii.gz", "warped"), path.read_bytes()

    def _require_result(self) -> None:
        if self.state.state != PanelState.DONE or self.logic.session is None:
            raise PermissionError("403 Forbidden: there is no finished result of this session to download")

    def download_name(self, extension: str, kind: str = "to") -> str:
        moving = _node_name(self.inputs["moving"] or "moving")
        fixed = _node_name(self.inputs["fixed"] or "fixed")
        if kind == "to":
            return f"{moving}-to-{fixed}.{extension}"
        return f"{moving}-warped-to-{fixed}.{extension}"

    # ------------------------------------------------------------------ page
    def view(self) -> dict:
        """Everything the page shows, as JSON-able values (buttons follow the controller's flags); no text
        holds a server path."""
        controller = self.controller
        flags = controller.flags()
        state = self.state.state
        apply_text = {"Apply": "Register"}.get(flags.apply_text, flags.apply_text)
        value, total = self.state.progress()
        choice = controller.policyChoice()
        data_range = self.overlay_data_range()
        window = self.overlay_range or self.overlay_window() or data_range
        readout_text, readout_numbers = self.readout_values()
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
            "progress_text": self.public(controller.progress),
            "progress_percent": 100.0 * value / total
            if self.state.busy
            else (100.0 if state == PanelState.DONE else 0.0),
            "step_label": f"{flags.slider_value} / {flags.slider_maximum}",
            "status_text": self.public(controller.status),
            "run_notes": [self.public(note) for note in controller.notes],
            "error_text": self.public(controller.error),
            "cpu_retry_offered": controller.cpuRetryOffered,
            "inputs": dict(self.inputs),
            **self.settings(),
            "policy_description": self.public(choice.description) if choice else "",
            "policy_modality": choice.modality if choice else "",
            "policy_samples": bool(choice and choice.supports_sampling),
            "field_display": self.params.fieldDisplay,
            "overlay": self.overlay,
            "overlay_opacity": self.params.overlayOpacity,
            "overlay_available": self.overlay_node() is not None,
            "overlay_colormap": OVERLAY_COLORMAPS.get(self.overlay, ""),
            "overlay_unit": OVERLAY_VOLUMES[self.overlay]["unit"] if self.overlay in OVERLAY_VOLUMES else "",
            "overlay_data_range": list(data_range) if data_range else None,
            "overlay_window": [round(w, 6) for w in window] if window else None,
            "overlay_colorbar_css": self.overlay_colorbar_css(),
            "compare_mode": self.params.compareMode,
            "window_preset": self.window_preset,
            "flicker_period": self.params.flickerPeriod,
            "flicker_shows_warped": self.logic.flickerShowsWarped,
            "readout_text": readout_text,
            "readout_values": readout_numbers,
            "ranges": {
                "weight_map": self.logic.weightMapRangeText,
                "magnitude": self.logic.magnitudeRangeText,
                "uncertainty": self.logic.uncertaintyRangeText,
                "jacobian": self.logic.jacobianRangeText,
            },
        }

    def show_error(self, message: str) -> None:
        """An error outside the panel's own actions (e.g. a download) in the banner."""
        self.controller.fail(message)

    def close(self) -> None:
        """Stop a run, stop watching the scene and remove the session's temporary outputs."""
        self.logic.cancel(wait=True, timeout=30)
        self.logic.stopObservingScene()
        shutil.rmtree(self.output_dir, ignore_errors=True)


def _node_name(name: str) -> str:
    """The name of a picked file's node (and of the downloads): the file name without its extensions."""
    return Path(name).name.split(".")[0]
