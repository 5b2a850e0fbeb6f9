"""``rlreg view``: the registration panel in a browser, on Slicer's own rendering (trame-slicer).

One :class:`RegistrationWebApp` per process: one MRML scene (trame-slicer's :class:`SlicerApp`), its slice
and 3D views streamed to the page (trame-slicer's remote views and layout), and one
:class:`~RLRegistrationWeb.controller.WebPanel` (on the MRML layer's ``PanelController``, the Slicer panel's
too). trame keeps a single state for all connected clients, so every browser tab shows (and drives) the
same panel; the page says how many tabs are connected.

The registration runs on the library's worker thread (``registration.worker``); a task on the server's event loop drains its
messages every :data:`POLL_INTERVAL_S` and updates the MRML nodes there (MRML is not thread-safe), and the
views re-render what changed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys

from RLRegistrationMRML.parameters import RUN_SETTINGS
from RLRegistrationMRML.slice_annotations import setDragAdjustsWindowLevel

from .controller import WebPanel
from .files import DataFolder, PathRefused

log = logging.getLogger("rlreg.web")

POLL_INTERVAL_S = 0.05
LAYOUT = "Quad View"
EDITABLE_SETTINGS = RUN_SETTINGS  # policy, steps, iterations, samples, regularization, device, ...
INPUT_KEYS = {
    "fixed_name": "fixed",
    "moving_name": "moving",
    "fixed_labels_name": "fixed_labels",
    "moving_labels_name": "moving_labels",
}


class PortInUse(OSError):
    """The port asked for is taken (``rlreg: error:`` names it)."""


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUse` when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise PortInUse(f"port {port} on {host} is in use ({error.strerror or error})") from None


class RegistrationWebApp:
    """The web app: scene and views (trame-slicer), panel (controller + page) and the poll loop."""

    def __init__(
        self,
        data: DataFolder,
        inputs: dict[str, str | None],
        autorun: int | None = None,
        presets: dict | None = None,
        server=None,
    ):
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager
        from trame_slicer.rca_view import register_rca_factories

        from .scene import create_slicer_app
        from .ui import build_page, slice_view_ui

        self.server = server or get_server(client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state = self.server.state
        self.slicer = create_slicer_app()
        register_rca_factories(self.slicer.view_manager, self.server, slice_view_ui_f=slice_view_ui)
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        for view in self.slicer.view_manager.get_slice_views():
            view.set_visible_in_3d(True)
        self.data = data
        self.panel = WebPanel(self.slicer, data, show_volume=self._fit_views)
        self.autorun = autorun
        self._autorun_done = False
        self._clients = 0
        self._poll_task = None
        self.state.update(self._static_state())
        if presets:
            self.panel.update_settings(**presets)
        for role in INPUT_KEYS.values():
            name = inputs.get(role)
            if name:
                self.panel.select_input(role, name)
        self.state.update(self._panel_state())

        ctrl = self.server.controller
        actions = {
            "register": self.on_register,
            "continue_run": self.on_continue,
            "step_back": self.on_step_back,
            "toggle_play": self.on_toggle_play,
            "retry_on_cpu": self.on_retry_on_cpu,
            "download_h5": ctrl.trigger_name(self.on_download_h5),
            "download_warped": ctrl.trigger_name(self.on_download_warped),
        }
        self.ui = build_page(self.server, self.layout_manager, actions)
        self._bind_changes()
        self._cursor_moved = False
        self._observe_cursor()
        ctrl.on_server_ready.add(self._on_server_ready)
        ctrl.on_client_connected.add(self._on_client_connected)
        ctrl.on_client_exited.add(self._on_client_exited)

    # ------------------------------------------------------------------ state
    def _static_state(self) -> dict:
        panel = self.panel
        return {
            "file_names": self.data.names(),
            "policy_items": [{"value": c.name, "title": c.label} for c in panel.policies.values()],
            "device_items": [
                {"value": v, "title": t, "props": {"disabled": not ok}} for v, t, ok in panel.devices
            ],
            "clients_text": "",
            "download_h5_name": "transform.h5",
            "download_warped_name": "warped.nii.gz",
            "readout_ras": None,
            "slice_annotations": self.panel.slice_annotations(),
            "drag_window_level": True,
        }

    def _panel_state(self) -> dict:
        view = self.panel.view()
        view["readout_ras"] = list(self.panel.readout_point) if self.panel.readout_point else None
        inputs = view.pop("inputs")
        for key, role in INPUT_KEYS.items():
            view[key] = inputs[role]
        window = view.get("overlay_window")
        if window:
            view["overlay_range_ui"] = window
        if self.panel.inputs["moving"] and self.panel.inputs["fixed"]:
            view["download_h5_name"] = self.panel.download_name("h5")
            view["download_warped_name"] = self.panel.download_name("nii.gz", "warped")
        return view

    def push(self) -> None:
        """Copy the panel into the shared state (every tab) and send it."""
        with self.state:
            self.state.update(self._panel_state())

    def _bind_changes(self) -> None:
        state = self.state

        for key, role in INPUT_KEYS.items():

            def on_input(role=role, key=key, **_):
                name = state[key] or None
                if name != self.panel.inputs[role]:
                    self.panel.select_input(role, name)
                self.push()

            state.change(key)(on_input)

        def on_settings(**_):
            current = self.panel.settings()
            changed = {
                k: state[k]
                for k in EDITABLE_SETTINGS
                if state[k] != current[k] and state[k] not in (None, "")
            }
            if changed and not self.panel.state.busy:
                log.info("options from the page: %s", changed)
                self.panel.update_settings(**changed)
            self.push()

        state.change(*EDITABLE_SETTINGS)(on_settings)

        def on_display(field_display, overlay, overlay_opacity, compare_mode, flicker_period, **_):
            p = self.panel
            if (field_display, overlay, overlay_opacity, compare_mode, flicker_period) != (
                p.params.fieldDisplay,
                p.overlay,
                p.params.overlayOpacity,
                p.params.compareMode,
                p.params.flickerPeriod,
            ):
                p.set_display(
                    field_display=field_display,
                    overlay=overlay,
                    opacity=overlay_opacity,
                    compare_mode=compare_mode,
                    flicker_period=flicker_period,
                )
                self.push()

        state.change("field_display", "overlay", "overlay_opacity", "compare_mode", "flicker_period")(
            on_display
        )

        def on_readout_point(readout_ras, **_):
            if readout_ras != (list(self.panel.readout_point) if self.panel.readout_point else None):
                self.panel.set_readout_point(readout_ras, "")
                self.push()

        state.change("readout_ras")(on_readout_point)

        def on_window_preset(window_preset, **_):
            if window_preset and window_preset != self.panel.window_preset:
                self.panel.set_window_preset(window_preset)
                self.push()

        state.change("window_preset")(on_window_preset)

        def on_drag_window_level(drag_window_level, **_):
            setDragAdjustsWindowLevel(self.slicer.scene, bool(drag_window_level))

        state.change("drag_window_level")(on_drag_window_level)

        def on_range(overlay_range_ui, **_):
            window = self.panel.overlay_window()
            if (
                overlay_range_ui
                and window
                and [round(w, 6) for w in window] != [round(float(w), 6) for w in overlay_range_ui]
            ):
                self.panel.set_overlay_range(*overlay_range_ui)
                self.push()

        state.change("overlay_range_ui")(on_range)

        def on_slider(slider_value, **_):
            panel = self.panel
            if (
                panel.state.state.value == "done"
                and slider_value is not None
                and int(slider_value) != panel.state.displayed_step
            ):
                panel.show_step(int(slider_value))
                self.push()

        state.change("slider_value")(on_slider)

    # ------------------------------------------------------------------ actions
    def on_register(self) -> None:
        self.panel.register()
        self.push()

    def on_continue(self) -> None:
        self.panel.continue_run()
        self.push()

    def on_step_back(self) -> None:
        self.panel.step_back()
        self.push()

    def on_toggle_play(self) -> None:
        self.panel.toggle_play()
        self.push()

    def on_retry_on_cpu(self) -> None:
        self.panel.retry_on_cpu()
        self.push()

    def _attachment(self, make) -> object:
        try:
            name, content = make()
        except (PermissionError, PathRefused) as error:
            self.panel.show_error(str(error))
            self.push()
            return None
        except Exception as error:  # noqa: BLE001 - shown in the banner, the page stays live
            log.exception("download failed")
            self.panel.show_error(f"Download failed: {error}")
            self.push()
            return None
        log.info("download %s (%d bytes)", name, len(content))
        return self.server.protocol.addAttachment(content)

    def on_download_h5(self):
        return self._attachment(self.panel.download_transform)

    def on_download_warped(self):
        return self._attachment(self.panel.download_warped)

    # ------------------------------------------------------------------ cursor read-out
    def _observe_cursor(self) -> None:
        """The crosshair node follows the mouse in the slice views (Slicer's crosshair displayable
        manager): its position becomes the read-out's point (sent with the next poll, not per event)."""
        import slicer

        crosshair = self.slicer.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is None:
            return
        self._crosshair = crosshair
        crosshair.AddObserver(slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent, self._on_cursor)

    def _on_cursor(self, crosshair, _event) -> None:
        ras = [0.0, 0.0, 0.0]
        if not crosshair.GetCursorPositionRAS(ras):
            return
        xyz = [0.0, 0.0, 0.0]
        slice_node = crosshair.GetCursorPositionXYZ(xyz)
        view = ""
        if slice_node is not None:
            view = f"{slice_node.GetName()} ({slice_node.GetOrientation().lower()})"
        self.panel.set_readout_point(ras, view)
        self._cursor_moved = True

    # ------------------------------------------------------------------ loop
    def _fit_views(self, volume_node) -> None:
        """A new input is shown: fit the views to it; the 3D view looks obliquely at the three slices."""
        self.slicer.display_manager.reset_views()
        for view in self.slicer.view_manager.get_threed_views():
            camera = view.renderer().GetActiveCamera()
            camera.Azimuth(40)
            camera.Elevation(25)
            camera.OrthogonalizeViewUp()
            view.renderer().ResetCameraClippingRange()
            view.schedule_render()

    def _on_server_ready(self, **_) -> None:
        self._poll_task = asyncio.ensure_future(self._poll_loop())

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            try:
                changed = self.panel.poll()
                changed = self.panel.tick() or changed
                changed = changed or self._cursor_moved
                self._cursor_moved = False
                self._update_slice_annotations()
            except Exception:  # noqa: BLE001 - the loop must survive anything a step brings
                log.exception("poll failed")
                changed = True
            if changed:
                self.push()

    def _update_slice_annotations(self) -> None:
        """The views' labels follow their slices (sent alone, and only when one changed)."""
        labels = self.panel.slice_annotations()
        if labels != self.state.slice_annotations:
            with self.state:
                self.state.slice_annotations = labels

    def _on_client_connected(self, *_, **__) -> None:
        self._clients += 1
        self._update_clients()
        if self.autorun and not self._autorun_done:
            self._autorun_done = True
            asyncio.get_event_loop().call_later(1.0, self._start_autorun)
        volume = self.panel.params.fixedVolume
        if volume is not None:
            asyncio.get_event_loop().call_later(1.5, self._fit_views, volume)

    def _on_client_exited(self, *_, **__) -> None:
        self._clients = max(0, self._clients - 1)
        self._update_clients()

    def _update_clients(self) -> None:
        n = self._clients
        text = "" if n <= 1 else f"{n} browser tabs are connected: they share this panel and its run."
        with self.state:
            self.state.clients_text = text

    def _start_autorun(self) -> None:
        self.panel.update_settings(steps=self.autorun)
        self.panel.register()
        self.push()

    def start(self, host: str, port: int, open_browser: bool = False) -> None:
        log.info("serving on http://%s:%d/", host, port)
        print(
            f"rlreg view: open http://{host}:{port}/ in a browser (Ctrl-C stops)", file=sys.stderr, flush=True
        )
        try:
            self.server.start(host=host, port=port, open_browser=open_browser, show_connection_info=False)
        finally:
            self.panel.close()
