"""What a registration front-end chooses, and the constants of the nodes the MRML layer makes.

The Slicer panel keeps these values in its ``@parameterNodeWrapper`` parameter node (saved with the scene);
a front-end without Slicer's parameter node (the browser app, scripts) uses :class:`RegistrationParameters`,
a plain dataclass with the same attribute names. :class:`~RLRegistrationMRML.scene_logic.RegistrationSceneLogic`
reads and writes only these attributes, so either works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from RLRegistrationLib.registration.quality import QUALITY_PRESETS

FIELD_DISPLAY_MODES = ["Hidden", "Glyph", "Grid", "Contour"]
INITIALIZATION_MODES = ["affine", "rigid", "parent", "none"]
INITIALIZATIONS = [
    ("affine", "Affine pre-alignment (starts from the moving volume's parent transform)"),
    ("rigid", "Rigid pre-alignment (same patient; starts from the moving volume's parent transform)"),
    ("parent", "Moving volume's parent transform only (no affine)"),
    ("none", "None (images' own coordinates)"),
]
WEIGHT_MAP_COLORS = "vtkMRMLColorTableNodeFileViridis.txt"
UNCERTAINTY_COLORS = "vtkMRMLColorTableNodeFilePlasma.txt"
MAGNITUDE_COLORS = "vtkMRMLColorTableNodeFileInferno.txt"
# Overlay volumes of the result, shown one at a time in the slice views' foreground (panel_state.OVERLAYS).
# attribute: parameter field; name: suffix of a created node (None: never created, the user picks one);
# colors: colour node ID; window: fixed display range, "data" = [0, max of the data] at every update,
# None = Slicer's automatic window; rangeText: logic attribute shown in the panel's range label; unit.
OVERLAY_VOLUMES = {
    "weight_map": {
        "attribute": "weightMapVolume",
        "name": " weight map",
        "colors": WEIGHT_MAP_COLORS,
        "window": (0.0, 1.0),
        "rangeText": "weightMapRangeText",
        "unit": "",
    },
    "uncertainty": {
        "attribute": "uncertaintyVolume",
        "name": " uncertainty (mm)",
        "colors": UNCERTAINTY_COLORS,
        "window": "data",
        "rangeText": "uncertaintyRangeText",
        "unit": " mm",
    },
    "magnitude": {
        "attribute": "magnitudeVolume",
        "name": None,
        "colors": MAGNITUDE_COLORS,
        "window": None,
        "rangeText": "magnitudeRangeText",
        "unit": " mm",
    },
}
# RLRegistrationLib.quality presets, as (value, label) for the panel's quality choice
QUALITY_MODES = list(QUALITY_PRESETS)
QUALITIES = [
    ("standard", "Standard (2 mm working grid; fast)"),
    ("fine", "Fine (tto: 1 mm grid, 4 steps ending at 1 mm; most accurate on 1 mm brain MRI)"),
    ("followup", "Follow-up (tto: as Fine with regularization 6; two scans of one patient)"),
]
# the session's pre-alignment (RLRegistrationLib.prealign) for each initialization mode of the panel
SESSION_INITIALIZATION = {"affine": "affine", "rigid": "rigid", "parent": "none", "none": "none"}
# the moving volume's parent before "apply to moving" put it under the result (restored on re-runs)
PREVIOUS_PARENT_ATTRIBUTE = "RLRegistration.PreviousParentTransformID"


@dataclass
class RegistrationParameters:
    """The panel's choices without Slicer's parameter node (same names and defaults as
    ``RLRegistrationParameterNode`` in ``RLRegistration.py``; a test keeps the two in step).

    Node fields hold MRML nodes (or None): fixedVolume, movingVolume (scalar volumes); fixedLabels,
    movingLabels (label map volumes or segmentations); fixedMask, movingMask (label maps or segmentations:
    the similarity counts only voxels inside); outputTransform (grid transform node of the
    deformation u), outputLinearTransform (linear transform node of the pre-alignment A, child of
    outputTransform), outputParentTransform; warpedVolume, weightMapVolume, uncertaintyVolume,
    magnitudeVolume (scalar volumes).
    """

    fixedVolume: Any = None
    movingVolume: Any = None
    fixedLabels: Any = None
    movingLabels: Any = None
    fixedMask: Any = None
    movingMask: Any = None
    policy: str = "tto"
    steps: int = 6
    iterations: int = 5
    samples: int = 1
    regularization: float = 2.0
    device: str = "auto"
    initialization: str = "affine"
    quality: str = "standard"
    outputTransform: Any = None
    outputLinearTransform: Any = None
    outputParentTransform: Any = None
    warpedVolume: Any = None
    weightMapVolume: Any = None
    uncertaintyVolume: Any = None
    magnitudeVolume: Any = None
    fieldDisplay: str = "Glyph"
    showWeightMap: bool = False
    showUncertainty: bool = False
    showMagnitude: bool = False
    overlayOpacity: float = 0.5
