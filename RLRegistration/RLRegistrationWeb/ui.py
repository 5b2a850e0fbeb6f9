"""The page: the registration panel (left drawer) beside trame-slicer's view layout (slice views and 3D).

The panel mirrors the Slicer module's: inputs, policy (with its description), steps / iterations / samples /
regularization / device / initialization, Register (Cancel while running) with its progress line, the step
slider with Play/Pause, Continue and Step back, the field display and one overlay at a time (λ, |u|,
uncertainty) with opacity, value range and colour bar, and the downloads. Widgets only bind to the state
keys of :meth:`RLRegistrationWeb.controller.WebPanel.view` and call the app's triggers; the
``id`` of every control is what the browser test clicks.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3

# the Slicer panel's choices and ranges (its settings table)
from RLRegistrationMRML.parameters import FLICKER_MODES, INITIALIZATIONS, PAIRS, QUALITIES, SETTINGS_BY_NAME
from RLRegistrationMRML.slice_annotations import WINDOW_PRESETS

FIELD_DISPLAYS = ["Glyph", "Grid", "Contour", "Hidden"]
OVERLAYS = [
    ("none", "None", "no overlay"),
    ("weight_map", "λ map", "the regularization weight λ (no unit)"),
    ("magnitude", "|u|", "the displacement length |u| in mm"),
    ("uncertainty", "Uncertainty", "the spread of sampled trajectories in mm"),
    (
        "jacobian",
        "det J",
        "local volume change det J (1: none, blue < 1 shrinks, red > 1 grows, green: folding)",
    ),
]
COMPARE = [
    ("fade", "Fade", "the warped image over the fixed one at the opacity below"),
    ("checkerboard", "Checker", "squares of 16 mm alternating the fixed and the warped image"),
    (
        "difference",
        "Diff",
        "|fixed − warped| of the two images normalized to their 1st..99th percentile",
    ),
    ("flicker", "Flicker", "the warped image shown and hidden every period"),
    (
        "beforeafter",
        "Before/after",
        "over the fixed image, the pre-alignment's result and the displayed step's, in turn every period",
    ),
]


def colormap_css(name: str, stops: int = 11) -> str:
    """A CSS linear-gradient of a matplotlib colour map (the overlays' colour bar)."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    colors = []
    for i in range(stops):
        r, g, b, _ = cmap(i / (stops - 1))
        colors.append(f"rgb({round(255 * r)},{round(255 * g)},{round(255 * b)}) {100 * i / (stops - 1):.0f}%")
    return "linear-gradient(to right, " + ", ".join(colors) + ")"


def build_page(server, layout_manager, actions: dict, title: str = "RLRegistration") -> VAppLayout:
    """Build the page. ``actions``: name -> callable (register, continue_run, step_back, toggle_play,
    retry_on_cpu, download_h5, download_warped) bound to buttons."""
    state = server.state
    state.colorbar_css = {
        name: colormap_css(cmap)
        for name, cmap in (("weight_map", "viridis"), ("magnitude", "inferno"), ("uncertainty", "plasma"))
    }
    state.overlay_colorbar_css = ""
    state.trame__title = title
    with VAppLayout(server, full_height=True) as layout:
        layout.root.theme = "dark"
        client.Style(COMPACT_CSS)
        with v3.VNavigationDrawer(permanent=True, width=390, classes="pa-3", style="font-size: 0.9rem"):
            html.Div(title, classes="text-h6 mb-1")
            html.Div("{{ clients_text }}", id="clients-text", classes="text-caption text-grey mb-2")
            _inputs(opened=not (state.fixed_name and state.moving_name))
            _options()
            _run(actions)
            _replay(actions)
            _display()
            _downloads(actions)
        with v3.VMain():
            with html.Div(style="position: relative; width: 100%; height: calc(100vh - 26px);", id="views"):
                layout_manager.initialize_layout_grid(layout)
            html.Div(
                "{{ readout_text || 'Move the mouse over a slice view to read its values.' }}",
                id="readout",
                classes="text-caption px-2 text-no-wrap",
                style="height: 26px; line-height: 26px; overflow: hidden;",
            )
    return layout


def slice_view_ui(server, view_id: str, view) -> None:
    """trame-slicer's own slice view controls, and a label over the view: its name, the patient directions at
    its left and right edges and the slice position in mm (``slice_annotations`` of the view's node)."""
    from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

    create_vertical_slice_view_gutter_ui(server, view_id, view)
    node = view.get_view_node()
    name = node.GetName() if node is not None else ""
    html.Div(
        f"{{{{ (slice_annotations || {{}})['{name}'] || '' }}}}",
        classes="slice-annotation text-caption",
        id=f"slice-annotation-{name}",
        style=(
            "position: absolute; top: 2px; left: 50%; transform: translateX(-50%); pointer-events: none;"
            " color: #ddd; background: rgba(0, 0, 0, 0.45); padding: 0 6px; border-radius: 3px;"
            " white-space: nowrap;"
        ),
    )


# collapsible sections (as Slicer's panels): Options and Export fold, so that at 1366x768 Register, the overlay
# buttons and the colour bar show without scrolling the panel column
COMPACT_CSS = """
.rlreg-section .v-expansion-panel-text__wrapper { padding: 4px 0 6px; }
.rlreg-section .v-expansion-panel-title { min-height: 30px; padding: 4px 6px; }
.rlreg-section .v-expansion-panel-title--active { min-height: 30px; }
"""


def _bound(text: str) -> tuple[str]:
    """A Vue binding of ``text`` (with ``{{ expression }}`` parts) as a JS template literal, for attributes
    such as ``title``."""
    return ("`" + re.sub(r"\{\{\s*(.*?)\s*\}\}", r"${\1}", text) + "`",)


def _chosen_title(key: str, items: str) -> tuple[str]:
    """A Vue binding of the full title of the item chosen in a select (its tooltip: a long choice is cut
    in the field)."""
    return (f"(({items} || []).find(i => (i.value ?? i) === {key}) || {{}}).title ?? {key} ?? ''",)


@contextmanager
def _collapsible(title: str, name: str, opened: bool):
    """A section that folds (a Vuetify expansion panel, its content kept in the page); ``title`` may bind
    state with ``{{ }}``; ``sections_<name>`` holds whether it is open."""
    v3.VDivider(classes="my-1")
    with v3.VExpansionPanels(
        v_model=(f"sections_{name}", [name] if opened else []),
        multiple=True,
        variant="accordion",
        flat=True,
        classes="rlreg-section",
    ):
        with v3.VExpansionPanel(value=name, id=f"section-{name}", bg_color="transparent"):
            with v3.VExpansionPanelTitle(classes="text-subtitle-2", id=f"section-{name}-title"):
                html.Span(title, classes="text-truncate", title=_bound(title))
            with v3.VExpansionPanelText(eager=True):
                yield


def _section(title: str) -> None:
    v3.VDivider(classes="my-2")
    html.Div(title, classes="text-subtitle-2 mb-1")


def _inputs(opened: bool) -> None:
    """The four inputs, folded when the page opens with the fixed and moving images already given."""
    with _collapsible("Inputs · {{ fixed_name || '—' }} ← {{ moving_name || '—' }}", "inputs", opened):
        _input_widgets()


def _input_widgets() -> None:
    for key, label, clearable in (
        ("fixed_name", "Fixed image", False),
        ("moving_name", "Moving image", False),
        ("fixed_labels_name", "Fixed labels (optional, Dice)", True),
        ("moving_labels_name", "Moving labels (optional, Dice)", True),
    ):
        v3.VSelect(
            v_model=(key,),
            items=("file_names",),
            title=_chosen_title(key, "file_names"),
            label=label,
            id=key.replace("_", "-"),
            density="compact",
            hide_details=True,
            clearable=clearable,
            disabled=("!inputs_enabled",),
            classes="mb-1",
        )


def _options() -> None:
    with _collapsible("Options · {{ policy }} · {{ steps }} steps · {{ device }}", "options", opened=False):
        _option_widgets()


def _option_widgets() -> None:
    v3.VSelect(
        v_model=("policy",),
        items=("policy_items",),
        title=_chosen_title("policy", "policy_items"),
        label="Policy",
        id="policy",
        density="compact",
        hide_details=True,
        disabled=("!inputs_enabled",),
    )
    html.Div(
        "{{ policy_description }}",
        id="policy-description",
        classes="text-caption text-grey mt-1",
        title=("policy_description",),
    )
    html.Div("Trained for: {{ policy_modality }}", classes="text-caption text-grey mb-1")
    with v3.VRow(dense=True):
        for key, label, step in (
            ("steps", "Steps", 1),
            ("iterations", "Iterations", 1),
            ("regularization", "Regularization", 0.1),
        ):
            with v3.VCol(cols=4):
                v3.VTextField(
                    v_model_number=(key,),
                    type="number",
                    step=step,
                    min=SETTINGS_BY_NAME[key].limits[0],
                    max=SETTINGS_BY_NAME[key].limits[1],
                    label=label,
                    id=key,
                    density="compact",
                    hide_details=True,
                    disabled=("!inputs_enabled",),
                )
    with v3.VRow(dense=True):
        with v3.VCol(cols=4):
            v3.VTextField(
                v_model_number=("samples",),
                type="number",
                min=SETTINGS_BY_NAME["samples"].limits[0],
                max=SETTINGS_BY_NAME["samples"].limits[1],
                label="Samples",
                id="samples",
                density="compact",
                hide_details=True,
                disabled=("!inputs_enabled || !policy_samples",),
            )
        with v3.VCol(cols=8):
            v3.VSelect(
                v_model=("device",),
                items=("device_items",),
                title=_chosen_title("device", "device_items"),
                label="Device",
                id="device",
                density="compact",
                hide_details=True,
                disabled=("!inputs_enabled",),
            )
    for key, label, choices in (
        ("initialization", "Initialization", INITIALIZATIONS),
        ("quality", "Quality", QUALITIES),
        ("pair", "Pair", PAIRS),
    ):
        v3.VSelect(
            v_model=(key,),
            items=(f"{key}_items", [{"value": v, "title": t} for v, t in choices]),
            title=_chosen_title(key, f"{key}_items"),
            label=label,
            id=key,
            density="compact",
            hide_details=True,
            disabled=("!inputs_enabled",),
            classes="mt-1",
        )


def _run(actions: dict) -> None:
    v3.VDivider(classes="my-2")
    v3.VBtn(
        "{{ register_text }}",
        id="register-button",
        block=True,
        color=("panel_state === 'running' ? 'error' : 'primary'",),
        disabled=("!register_enabled",),
        click=actions["register"],
    )
    v3.VProgressLinear(
        model_value=("progress_percent",),
        v_show=("progress_visible",),
        color="primary",
        height=4,
        classes="mt-2",
    )
    html.Div("{{ progress_text }}", id="progress-text", classes="text-body-2 mt-1")
    html.Div("{{ status_text }}", id="status-text", classes="text-caption text-grey")
    with html.Div(
        id="run-notes", classes="text-caption text-grey", style="max-height: 3.6em; overflow-y: auto;"
    ):
        html.Div("{{ note }}", v_for="note in run_notes", key="note")
    v3.VAlert(
        "{{ error_text }}",
        v_if=("error_text",),
        id="error-banner",
        type="error",
        density="compact",
        closable=True,
        classes="mt-2 text-body-2",
        **{"click:close": "error_text = ''"},
    )
    v3.VBtn(
        "Run on the CPU",
        v_if=("cpu_retry_offered && error_text",),
        id="cpu-retry-button",
        block=True,
        size="small",
        classes="mt-1",
        click=actions["retry_on_cpu"],
    )


def _replay(actions: dict) -> None:
    _section("Steps")
    with html.Div(classes="d-flex align-center"):
        v3.VSlider(
            v_model_number=("slider_value",),
            min=0,
            max=("slider_max",),
            step=1,
            id="step-slider",
            hide_details=True,
            disabled=("!slider_enabled",),
            density="compact",
        )
        html.Span("{{ step_label }}", id="step-label", classes="ml-2 text-no-wrap")
    with html.Div(classes="d-flex ga-1 mt-1"):
        v3.VBtn(
            "{{ playing ? 'Pause' : 'Play' }}",
            id="play-button",
            size="small",
            disabled=("!play_enabled",),
            click=actions["toggle_play"],
        )
        v3.VBtn(
            "Continue",
            id="continue-button",
            size="small",
            disabled=("!continue_enabled",),
            click=actions["continue_run"],
        )
        v3.VBtn(
            "Step back",
            id="step-back-button",
            size="small",
            disabled=("!step_back_enabled",),
            click=actions["step_back"],
        )


def _display() -> None:
    _section("Display")
    with v3.VRow(dense=True):
        with v3.VCol(cols=5):
            v3.VSelect(
                v_model=("field_display",),
                items=("field_display_items", FIELD_DISPLAYS),
                label="Displacement",
                id="field-display",
                density="compact",
                hide_details=True,
            )
        with v3.VCol(cols=7):
            v3.VSelect(
                v_model=("window_preset", "auto"),
                items=(
                    "window_preset_items",
                    [{"value": v, "title": t} for v, (t, _) in WINDOW_PRESETS.items()],
                ),
                label="Window/level (fixed)",
                id="window-preset",
                density="compact",
                hide_details=True,
            )
    html.Div("Compare fixed ↔ result", classes="text-caption mt-2")
    with v3.VBtnToggle(
        v_model=("compare_mode",),
        mandatory=True,
        density="compact",
        divided=True,
        id="compare-toggle",
    ):
        for value, label, tip in COMPARE:
            v3.VBtn(label, value=value, id=f"compare-{value}", size="small", classes="text-none", title=tip)
    v3.VSlider(
        v_model_number=("flicker_period",),
        v_show=(f"{list(FLICKER_MODES)}.includes(compare_mode)",),
        min=SETTINGS_BY_NAME["flickerPeriod"].limits[0],
        max=SETTINGS_BY_NAME["flickerPeriod"].limits[1],
        step=0.1,
        label="Period (s)",
        id="flicker-period",
        hide_details=True,
        density="compact",
        thumb_label=True,
    )
    html.Div("Overlay", classes="text-caption mt-1")
    with v3.VBtnToggle(
        v_model=("overlay",),
        mandatory=True,
        density="compact",
        divided=True,
        id="overlay-toggle",
    ):
        for value, label, tip in OVERLAYS:
            v3.VBtn(label, value=value, id=f"overlay-{value}", size="small", classes="text-none", title=tip)
    v3.VSlider(
        v_model_number=("overlay_opacity",),
        min=0,
        max=1,
        step=0.05,
        label=("overlay === 'none' ? 'Fixed ↔ warped' : 'Overlay opacity'",),
        id="overlay-opacity",
        hide_details=True,
        density="compact",
        classes="mt-1",
    )
    with html.Div(v_if=("overlay !== 'none' && overlay_available",), id="colorbar", classes="mt-1"):
        html.Div(
            id="colorbar-gradient",
            style=("{height: '12px', borderRadius: '2px', background: overlay_colorbar_css}",),
        )
        with html.Div(classes="d-flex text-caption"):
            html.Span(
                "{{ overlay_window ? overlay_window[0].toPrecision(3) + overlay_unit : '' }}",
                id="colorbar-min",
            )
            v3.VSpacer()
            html.Span(
                "{{ overlay_window ? overlay_window[1].toPrecision(3) + overlay_unit : '' }}",
                id="colorbar-max",
            )
        v3.VRangeSlider(
            v_model=("overlay_range_ui", [0, 1]),
            min=(
                "overlay_data_range && overlay_window ? Math.min(overlay_data_range[0], overlay_window[0]) : 0",
            ),
            max=(
                "overlay_data_range && overlay_window ? Math.max(overlay_data_range[1], overlay_window[1]) : 1",
            ),
            step=0,
            label="Range",
            id="overlay-range",
            hide_details=True,
            density="compact",
        )
    html.Div(
        "λ {{ ranges.weight_map }} · |u| {{ ranges.magnitude }} · uncertainty {{ ranges.uncertainty }}"
        " · det J {{ ranges.jacobian }}",
        classes="text-caption text-grey",
        id="overlay-ranges",
    )
    v3.VSwitch(
        v_model=("drag_window_level",),  # the app's state starts it on, as its scene starts in that mode
        label="Drag in a view sets window/level",
        id="drag-window-level",
        title="Left-drag: right/left widens/narrows the window, up/down moves the level (Slicer's mouse "
        "mode); double-click restores the automatic window",
        density="compact",
        hide_details=True,
        color="primary",
        classes="mt-1",
    )


def _downloads(actions: dict) -> None:
    with _collapsible("Export", "export", opened=True), html.Div(classes="d-flex ga-1"):
        for key, label in (("download_h5", "Download .h5"), ("download_warped", "Download warped")):
            v3.VBtn(
                label,
                id=key.replace("_", "-"),
                size="small",
                prepend_icon="mdi-download",
                disabled=("!export_enabled",),
                click=f"utils.download({key}_name, trigger('{actions[key]}'), 'application/octet-stream')",
            )
