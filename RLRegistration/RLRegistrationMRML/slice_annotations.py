"""What a slice view shows about itself (issue 21), Qt-free: its name and orientation with the patient
directions at its edges, the slice position in mm, and window/level presets of the background volume from
its intensity percentiles.

* :func:`sliceAnnotation`: e.g. "Axial (R ← → L) · S 12.0 mm" from the slice node's slice-to-RAS matrix
  (screen left/right ends, as Slicer's orientation markers) and its slice offset;
* :func:`presetWindow` / :func:`applyWindowPreset`: the background volume display node's window/level
  from the volume's percentiles (:data:`WINDOW_PRESETS`).
"""

from __future__ import annotations

import numpy as np

#: preset name -> (label, (low, high) percentiles of the volume's voxels)
WINDOW_PRESETS = {
    "auto": ("Auto (1–99 %)", (1.0, 99.0)),
    "full": ("Full range", (0.0, 100.0)),
    "narrow": ("Narrow (5–95 %)", (5.0, 95.0)),
}
#: RAS axis -> (letter of its negative end, letter of its positive end)
AXIS_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))


def directionLetters(vector) -> tuple[str, str]:
    """(the patient direction at the negative end, at the positive end) of a RAS direction: the axis it runs
    closest to, e.g. (-1, 0, 0) -> ("R", "L")."""
    v = np.asarray(vector, dtype=np.float64)[:3]
    axis = int(np.argmax(np.abs(v)))
    negative, positive = AXIS_LETTERS[axis]
    return (negative, positive) if v[axis] >= 0 else (positive, negative)


def slicePosition(sliceNode) -> tuple[str, float]:
    """(letter, mm) of the slice plane's position along the axis its normal runs closest to (Slicer's
    "S: 12.0 mm"): the slice offset, signed for that axis's positive end."""
    matrix = sliceNode.GetSliceToRAS()
    normal = np.array([matrix.GetElement(r, 2) for r in range(3)])
    axis = int(np.argmax(np.abs(normal)))
    offset = float(sliceNode.GetSliceOffset())
    return AXIS_LETTERS[axis][1], offset if normal[axis] >= 0 else -offset


def sliceAnnotation(sliceNode) -> dict:
    """The view's name, orientation, screen left/right/up directions and slice position, and one line of
    text for them: "Axial (R ← → L) · S 12.0 mm"."""
    matrix = sliceNode.GetSliceToRAS()
    column = [np.array([matrix.GetElement(r, c) for r in range(3)]) for c in range(2)]
    left, right = directionLetters(column[0])
    _, up = directionLetters(column[1])
    letter, mm = slicePosition(sliceNode)
    orientation = sliceNode.GetOrientation() or "Oblique"
    text = f"{orientation} ({left} ← → {right}) · {letter} {mm:.1f} mm"
    return {
        "name": sliceNode.GetName(),
        "orientation": orientation,
        "left": left,
        "right": right,
        "up": up,
        "position": (letter, mm),
        "text": text,
    }


def presetWindow(array, preset: str) -> tuple[float, float] | None:
    """(low, high) of ``preset`` (:data:`WINDOW_PRESETS`): the volume's percentiles (finite voxels), widened
    when they coincide; None without voxels."""
    if preset not in WINDOW_PRESETS:
        raise ValueError(f"unknown window preset '{preset}' (choose from {', '.join(WINDOW_PRESETS)})")
    values = np.asarray(array)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(values, WINDOW_PRESETS[preset][1]))
    if high <= low:
        high = low + 1.0
    return low, high


def applyWindowPreset(volumeNode, preset: str) -> tuple[float, float] | None:
    """Set ``volumeNode``'s display window/level to ``preset`` (its own percentiles; auto window/level off);
    the (low, high) set, or None without voxels or display node."""
    import slicer.util

    if volumeNode is None or volumeNode.GetImageData() is None:
        return None
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    display = volumeNode.GetDisplayNode()
    window = presetWindow(slicer.util.arrayFromVolume(volumeNode), preset)
    if window is None or display is None:
        return None
    wasModifying = display.StartModify()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(window[0], window[1])
    display.EndModify(wasModifying)
    return window
