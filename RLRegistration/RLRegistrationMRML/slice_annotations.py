"""What a slice view shows about itself (issue 21), Qt-free: its name and orientation with the patient
directions at its edges, the slice position in mm, and window/level presets of the background volume from
its intensity percentiles.

* :func:`sliceAnnotation`: e.g. "Axial (R ← → L) · S 12.0 mm" from the slice node's slice-to-RAS matrix
  (screen left/right ends, as Slicer's orientation markers) and its slice offset;
* :func:`presetWindow` / :func:`applyWindowPreset`: the background volume display node's window/level
  from the volume's percentiles (:data:`WINDOW_PRESETS`);
* :func:`setDragAdjustsWindowLevel`: left-dragging in a slice view sets the window/level of the volume under
  the mouse (Slicer's "Window/level" mouse mode of the interaction node);
* :func:`showViewMarkers`: Slicer's own orientation marker (patient axes) and mm ruler in every slice view
  (its view nodes; drawn by Slicer's displayable managers, in the desktop application and the browser).
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


def showViewMarkers(scene, show: bool = True) -> int:
    """Turn the orientation marker (labelled patient axes, small) and the thin mm ruler of every slice view
    node of ``scene`` on (or off); the number of slice views. Turning on keeps a marker or ruler the user
    chose already (another type or size)."""
    import slicer

    views = slicer.vtkMRMLAbstractViewNode
    count = 0
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
        wasModifying = node.StartModify()
        if not show:
            node.SetOrientationMarkerType(views.OrientationMarkerTypeNone)
            node.SetRulerType(views.RulerTypeNone)
        else:
            if node.GetOrientationMarkerType() == views.OrientationMarkerTypeNone:
                node.SetOrientationMarkerType(views.OrientationMarkerTypeAxes)
                node.SetOrientationMarkerSize(views.OrientationMarkerSizeSmall)
            if node.GetRulerType() == views.RulerTypeNone:
                node.SetRulerType(views.RulerTypeThin)
        node.EndModify(wasModifying)
        count += 1
    return count


def setDragAdjustsWindowLevel(scene, adjust: bool = True) -> bool:
    """Left-dragging in the slice views sets the window/level of the volume under the mouse (``adjust``:
    Slicer's "Window/level" mouse mode, its window/level widget; a double click restores the automatic
    window) or does what Slicer's "View transform" mode does; False when the scene has no interaction
    node."""
    import slicer

    node = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    if node is None:
        return False
    interaction = slicer.vtkMRMLInteractionNode
    node.SetCurrentInteractionMode(interaction.AdjustWindowLevel if adjust else interaction.ViewTransform)
    return True
