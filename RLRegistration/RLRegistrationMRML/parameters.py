"""What a registration panel chooses, declared once: :data:`SETTINGS`, and the constants of the nodes the
MRML layer makes.

Every setting of the panel (the Slicer module's and the browser app's) is one :class:`Setting` here: its
name, type, default and the range or choices it may take, the numeric ranges taken from
``RLRegistrationLib.options.RANGES`` (what ``RunSpec`` accepts). Made from this one table:

* the Slicer panel's ``@parameterNodeWrapper`` class (``RLRegistration.py``: ``WithinRange`` / ``Choice``
  annotations, so the spin boxes and slider take these ranges), saved with the scene;
* :class:`RegistrationParameters`, the same fields as a plain dataclass for front-ends without Slicer's
  parameter node (the browser app, scripts);
* the checks of :func:`checkSetting` (the browser app's options, ``PanelController.updateSettings``).

The MRML layer reads and writes only these attribute names, so a parameter node and a
``RegistrationParameters`` work alike; the names are those saved in scenes, never renamed. This module
imports neither Slicer nor torch (the Slicer module reads it before PyTorch is installed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from RLRegistrationLib.options import DEVICES, RANGES
from RLRegistrationLib.registration.quality import QUALITY_PRESETS

FIELD_DISPLAY_MODES = ["Hidden", "Glyph", "Grid", "Contour"]
INITIALIZATIONS = [
    ("affine", "Affine pre-alignment (starts from the moving volume's parent transform)"),
    ("rigid", "Rigid pre-alignment (same patient; starts from the moving volume's parent transform)"),
    ("parent", "Moving volume's parent transform only (no affine)"),
    ("none", "None (images' own coordinates)"),
]
INITIALIZATION_MODES = [value for value, _ in INITIALIZATIONS]
# the session's pre-alignment (RLRegistrationLib.prealign) for each initialization mode of the panel
SESSION_INITIALIZATION = {"affine": "affine", "rigid": "rigid", "parent": "none", "none": "none"}
# RLRegistrationLib.quality presets, as (value, label) for the panel's quality choice
QUALITIES = [
    ("auto", "Auto (Fine when its memory estimate fits, else Standard; Follow-up for one patient)"),
    ("standard", "Standard (2 mm working grid; fast)"),
    ("fine", "Fine (tto: 1 mm grid, 4 steps ending at 1 mm; most accurate on 1 mm brain MRI)"),
    ("followup", "Follow-up (tto: as Fine with regularization 6; two scans of one patient)"),
]
QUALITY_MODES = ["auto", *QUALITY_PRESETS]
# the pair's kind (RunSpec.pair): "auto" asks the subject hierarchy (Slicer), else the images after the
# pre-alignment (registration.pair_kind)
PAIRS = [
    ("auto", "Auto (the subject hierarchy's patient and study, else the images)"),
    ("same-session", "Same session (two scans of one visit: the linear result is kept)"),
    ("same-patient", "Same patient (follow-up: the stiffer Follow-up schedule)"),
    ("different-subjects", "Different subjects"),
]
PAIR_MODES = [value for value, _ in PAIRS]
WEIGHT_MAP_COLORS = "vtkMRMLColorTableNodeFileViridis.txt"
UNCERTAINTY_COLORS = "vtkMRMLColorTableNodeFilePlasma.txt"
MAGNITUDE_COLORS = "vtkMRMLColorTableNodeFileInferno.txt"
# det J's table (RLRegistrationMRML.compare_views): diverging around 1, folding in a signal colour; its
# colours follow the window, so it is made per scene under this singleton tag
JACOBIAN_COLOR_TAG = "RLRegistrationDetJ"
JACOBIAN_COLORS = "vtkMRMLColorTableNode" + JACOBIAN_COLOR_TAG
# Overlay volumes of the result, shown one at a time in the slice views' foreground (panel_state.OVERLAYS,
# and det J). attribute: parameter field; name: suffix of a created node (None: never created, the user
# picks one); colors: colour node ID; window: "robust" = the data's 1st..99th percentile at every update
# (frontends.overlay_display.robust_range), "jacobian" = symmetric around 1 (jacobian_window);
# rangeText: logic attribute shown in the panel's range label; unit: of the values and of the colour bar.
OVERLAY_VOLUMES = {
    "weight_map": {
        "attribute": "weightMapVolume",
        "name": " weight map",
        "colors": WEIGHT_MAP_COLORS,
        "window": "robust",
        "rangeText": "weightMapRangeText",
        "unit": "",
    },
    "uncertainty": {
        "attribute": "uncertaintyVolume",
        "name": " uncertainty (mm)",
        "colors": UNCERTAINTY_COLORS,
        "window": "robust",
        "rangeText": "uncertaintyRangeText",
        "unit": " mm",
    },
    "magnitude": {
        "attribute": "magnitudeVolume",
        "name": None,
        "colors": MAGNITUDE_COLORS,
        "window": "robust",
        "rangeText": "magnitudeRangeText",
        "unit": " mm",
    },
    "jacobian": {
        "attribute": "jacobianVolume",
        "name": " det J",
        "colors": JACOBIAN_COLORS,
        "window": "jacobian",
        "rangeText": "jacobianRangeText",
        "unit": "",
    },
}
# how the slice views compare the fixed volume and the warped one (RLRegistrationMRML.compare_views):
# fade = warped over fixed at the overlay opacity; checkerboard and difference = one volume on the fixed
# grid in the background; flicker = warped shown and hidden every flickerPeriod seconds; beforeafter =
# the pre-alignment's warped image (step 0) and the displayed step's over the fixed one, in turn
COMPARE_MODES = [
    ("fade", "Fade (fixed ↔ warped)"),
    ("checkerboard", "Checkerboard"),
    ("difference", "Difference |fixed − warped|"),
    ("flicker", "Flicker"),
    ("beforeafter", "Before ↔ after (flicker)"),
]
# the modes a front-end's timer switches every flickerPeriod seconds (CompareViews.setFlickerPhase)
FLICKER_MODES = ("flicker", "beforeafter")
# the moving volume's parent before "apply to moving" put it under the result (restored on re-runs)
PREVIOUS_PARENT_ATTRIBUTE = "RLRegistration.PreviousParentTransformID"

SCALAR_VOLUME = ("vtkMRMLScalarVolumeNode",)
LABELS = ("vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode")


@dataclass(frozen=True)
class Setting:
    """One setting of the panel. ``nodeClasses``: a node setting's MRML classes (it holds a node or None);
    ``limits``: inclusive (low, high) of a number; ``choices``: the values of a choice; ``run``: an option
    of the registration (fixed while a run goes on)."""

    name: str
    type: type
    default: Any = None
    doc: str = ""
    nodeClasses: tuple[str, ...] = ()
    limits: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    run: bool = False

    @property
    def isNode(self) -> bool:
        return bool(self.nodeClasses)

    def annotation(self) -> str:
        """The type of the plain dataclass's field, as text (node fields by their MRML class names)."""
        if self.isNode:
            return " | ".join((*self.nodeClasses, "None"))
        return self.type.__name__


def _node(name: str, classes: tuple[str, ...], doc: str) -> Setting:
    return Setting(name, object, None, doc, nodeClasses=classes)


def _run(name: str, kind: type, default, doc: str, limits=None, choices=None) -> Setting:
    return Setting(name, kind, default, doc, limits=limits, choices=choices, run=True)


# the tto defaults (the CLI's; measured) for steps, iterations and regularization
SETTINGS: tuple[Setting, ...] = (
    _node("fixedVolume", SCALAR_VOLUME, "the reference volume (the moving volume is resampled onto it)"),
    _node("movingVolume", SCALAR_VOLUME, "the volume to align (never modified by a run)"),
    _node("fixedLabels", LABELS, "optional label map or segmentation of the fixed volume (Dice per step)"),
    _node("movingLabels", LABELS, "optional label map or segmentation of the moving volume"),
    _node("fixedMask", LABELS, "optional: the similarity counts only voxels inside (fixed volume)"),
    _node("movingMask", LABELS, "optional: the similarity counts only voxels inside (moving volume)"),
    _run("policy", str, "tto", "the policy (a registry name; the choices come from the models found)"),
    _run("steps", int, 6, "steps of a run and of each Continue", limits=(1, RANGES["steps"][1])),
    _run("iterations", int, 5, "test-time optimization iterations per step", limits=RANGES["iterations"]),
    _run("samples", int, 1, "trajectories sampled per step (policies that sample)", limits=RANGES["samples"]),
    _run("regularization", float, 2.0, "smoothness weight of the field", limits=RANGES["regularization"]),
    _run("device", str, "auto", "where the registration runs", choices=DEVICES),
    _run("initialization", str, "affine", "the pre-alignment", choices=tuple(INITIALIZATION_MODES)),
    _run("quality", str, "auto", "the quality preset", choices=tuple(QUALITY_MODES)),
    _run(
        "pair", str, "auto", "the pair's kind (decides the deformable refinement)", choices=tuple(PAIR_MODES)
    ),
    _node(
        "outputTransform", ("vtkMRMLGridTransformNode",), "receives the deformation u (created when empty)"
    ),
    _node(
        "outputLinearTransform",
        ("vtkMRMLLinearTransformNode",),
        "receives the pre-alignment A, child of outputTransform (created when empty)",
    ),
    _node("outputParentTransform", ("vtkMRMLTransformNode",), "optional parent of the outputs"),
    _node("warpedVolume", SCALAR_VOLUME, "optional output: the moving volume on the fixed grid"),
    _node("weightMapVolume", SCALAR_VOLUME, "output: the regularization weight map (created when empty)"),
    _node("uncertaintyVolume", SCALAR_VOLUME, "output: the spread of sampled trajectories in mm"),
    _node("magnitudeVolume", SCALAR_VOLUME, "optional output: the displacement magnitude in mm"),
    _node("jacobianVolume", SCALAR_VOLUME, "output: the local volume change det J (created when empty)"),
    Setting("fieldDisplay", str, "Glyph", "how the field is shown", choices=tuple(FIELD_DISPLAY_MODES)),
    Setting("showWeightMap", bool, False, "weight map overlay in the slice views"),
    Setting("showUncertainty", bool, False, "uncertainty overlay in the slice views"),
    Setting("showMagnitude", bool, False, "displacement magnitude overlay in the slice views"),
    Setting("showJacobian", bool, False, "local volume change (det J) overlay in the slice views"),
    Setting("overlayOpacity", float, 0.5, "opacity of the overlay shown", limits=(0.0, 1.0)),
    Setting(
        "compareMode",
        str,
        "fade",
        "how the slice views compare fixed and warped",
        choices=tuple(value for value, _ in COMPARE_MODES),
    ),
    Setting("flickerPeriod", float, 0.5, "seconds between flicker switches", limits=(0.1, 5.0)),
)
SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}
RUN_SETTINGS = tuple(setting.name for setting in SETTINGS if setting.run)


def checkSetting(name: str, value: Any) -> Any:
    """``value`` as setting ``name`` holds it (numbers converted, integers rounded), or ``ValueError`` with
    one line for the panel naming the setting, its range or choices and what it got."""
    setting = SETTINGS_BY_NAME.get(name)
    if setting is None:
        raise ValueError(f"unknown option '{name}'")
    if setting.isNode:
        raise ValueError(f"{name} holds a node: choose it in the panel")
    if setting.choices is not None:
        if value not in setting.choices:
            raise ValueError(f"unknown {name} '{value}' (choose from {', '.join(setting.choices)})")
        return value
    if setting.type is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if setting.type in (int, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: '{value}' is not a number") from None
        low, high = setting.limits
        if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high:
            raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value}")
        return int(round(number)) if setting.type is int else number
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: a name is required, got {value!r}")
    return value


RegistrationParameters = make_dataclass(
    "RegistrationParameters",
    [(s.name, s.annotation(), field(default=s.default)) for s in SETTINGS],
    namespace={
        "__doc__": "The panel's choices without Slicer's parameter node: the fields of "
        ":data:`SETTINGS` (node fields hold an MRML node of the classes named, or None).",
        "__module__": __name__,
    },
)
