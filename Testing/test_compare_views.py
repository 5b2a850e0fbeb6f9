"""Judging an alignment through the MRML layer against Slicer's real MRML (issue 21): the det J volume node
and its colour node, every overlay's robust range, the checkerboard / difference / flicker comparison in
the slice composite nodes, and the cursor read-out. Rendered offscreen by Slicer's slice logic and
displayable managers (``slice_rendering``); ``RLREG_SCREENSHOT_DIR`` saves the views for the README.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slicer_runtime  # noqa: E402
from test_slice_rendering import REASON as RENDER_REASON  # noqa: E402

REASON = slicer_runtime.unavailable_reason() or RENDER_REASON
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
SAMPLE = slicer_runtime.ROOT / "RLRegistration" / "RLRegistrationLib" / "sample_data"
SCREENSHOT_DIR = os.environ.get("RLREG_SCREENSHOT_DIR")


@pytest.fixture(scope="module")
def viewed():
    """The sample pair registered for 2 steps through the scene logic on Slicer's core, and an axial view."""
    core = slicer_runtime.start()
    import slicer

    from RLRegistrationMRML.parameters import RegistrationParameters
    from RLRegistrationMRML.scene_logic import RegistrationSceneLogic
    from RLRegistrationMRML.slice_rendering import OffscreenSliceView

    slicer.mrmlScene.Clear(0)
    scene = slicer.mrmlScene
    view = OffscreenSliceView(scene, core.app_logic, "Red", "Axial", (192, 192))
    load = core.volumes_logic.AddArchetypeVolume
    params = RegistrationParameters(
        fixedVolume=load(str(SAMPLE / "fixed.nii.gz"), "fixed", 0),
        movingVolume=load(str(SAMPLE / "moving.nii.gz"), "moving", 0),
        quality="standard",
        iterations=2,
        device="cpu",
        fieldDisplay="Hidden",
    )
    params.warpedVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    params.magnitudeVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "|u|")
    logic = RegistrationSceneLogic(scene)
    logic.runBlocking(params, 2)
    yield logic, params, view
    view.close()
    logic.forgetSession()
    slicer.mrmlScene.Clear(0)


def show(logic, params, view, name: str | None = None, **changes) -> np.ndarray:
    for key, value in changes.items():
        setattr(params, key, value)
    logic.updateDisplay(params)
    return save(view.render(), name)


def save(image: np.ndarray, name: str | None) -> np.ndarray:
    """``image``, saved as ``name`` into ``RLREG_SCREENSHOT_DIR`` when that is set (the README's pictures)."""
    if SCREENSHOT_DIR and name:
        from PIL import Image

        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(Path(SCREENSHOT_DIR) / name)
    return image


def composite(scene):
    return scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")


def changed(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(int) - b.astype(int)).max(axis=-1) > 8))


def test_det_j_node_holds_the_cores_det_j_with_its_colour_node(viewed):
    import slicer

    from RLRegistrationLib.fields.metrics import jacobian_of_arrays
    from RLRegistrationMRML.parameters import JACOBIAN_COLORS

    logic, params, view = viewed
    plain = show(logic, params, view, showJacobian=False, compareMode="fade", overlayOpacity=0.0)
    image = show(logic, params, view, "slicer-jacobian.png", showJacobian=True, overlayOpacity=0.7)
    node = params.jacobianVolume
    assert node is not None and composite(slicer.mrmlScene).GetForegroundVolumeID() == node.GetID()
    det = slicer.util.arrayFromVolume(node)
    vectors = slicer.util.arrayFromGridTransform(params.outputTransform)
    grid = params.outputTransform.GetTransformFromParent().GetDisplacementGrid()
    direction = slicer.util.arrayFromVTKMatrix(
        params.outputTransform.GetTransformFromParent().GetGridDirectionMatrix()
    )[:3, :3]
    expected = jacobian_of_arrays(vectors, grid.GetSpacing(), direction)
    np.testing.assert_allclose(det, expected, rtol=1e-4, atol=1e-4)
    # ~1 where the field does not vary (|grad u| ~ 0)
    gradients = np.stack([np.abs(g).max(axis=-1) for g in np.gradient(vectors, axis=(0, 1, 2))]).max(axis=0)
    flat = gradients < 1e-3
    assert flat.sum() > 100 and np.abs(det[flat] - 1.0).max() < 0.01
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == JACOBIAN_COLORS
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    assert abs((low + high) / 2 - 1.0) < 1e-6 and high - low >= 0.1
    table = slicer.mrmlScene.GetNodeByID(JACOBIAN_COLORS)
    white = [0.0] * 4
    table.GetColor(128, white)
    assert min(white[:3]) > 0.85  # det J = 1 in the middle of the table: white
    assert changed(plain, image) > 0.05, "the det J overlay did not change the slice view"


def test_every_overlay_range_is_its_datas_robust_range(viewed):
    import slicer

    logic, params, view = viewed
    show(logic, params, view, showJacobian=False, showMagnitude=True, overlayOpacity=0.7)
    magnitude = slicer.util.arrayFromVolume(params.magnitudeVolume)
    low, high = logic.overlayWindow(params, "magnitude")
    p1, p99 = np.percentile(magnitude, [1, 99])
    print(f"\n|u| window {low:.3f}..{high:.3f} mm, data 1st/99th percentile {p1:.3f}/{p99:.3f} mm")
    assert abs(high - p99) <= 0.1 * p99 and abs(low - p1) <= 0.1 * max(p99, 1e-6)
    assert logic.magnitudeRangeText.endswith(" mm")
    logic.setOverlayWindow(params, "magnitude", (0.0, 2.0))
    assert logic.overlayWindow(params, "magnitude") == (0.0, 2.0)
    logic.setOverlayWindow(params, "magnitude")  # back to the default
    assert abs(logic.overlayWindow(params, "magnitude")[1] - p99) <= 0.1 * p99
    params.showMagnitude = False


def test_checkerboard_difference_and_flicker_in_the_slice_composite_nodes(viewed):
    import slicer

    from RLRegistrationLib.frontends.overlay_display import compare_images
    from RLRegistrationMRML.compare_views import COMPARISON_ATTRIBUTE

    logic, params, view = viewed
    scene = slicer.mrmlScene
    fade = show(
        logic, params, view, "slicer-fade.png", showJacobian=False, compareMode="fade", overlayOpacity=0.5
    )
    checker = show(logic, params, view, "slicer-checkerboard.png", compareMode="checkerboard")
    background = scene.GetNodeByID(composite(scene).GetBackgroundVolumeID())
    assert background.GetAttribute(COMPARISON_ATTRIBUTE) == "1"
    assert composite(scene).GetForegroundVolumeID() is None
    fixed = slicer.util.arrayFromVolume(params.fixedVolume)
    warped = slicer.util.arrayFromVolume(params.warpedVolume)
    spacing = params.fixedVolume.GetSpacing()
    square = tuple(max(1, round(16.0 / s)) for s in spacing[::-1])
    expected = compare_images(fixed, warped.astype(np.float32), "checkerboard", square)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(background), expected, atol=1e-6)
    difference = show(logic, params, view, "slicer-difference.png", compareMode="difference")
    np.testing.assert_allclose(
        slicer.util.arrayFromVolume(background),
        compare_images(fixed, warped.astype(np.float32), "difference"),
        atol=1e-6,
    )
    print(
        f"\nchanged pixels: fade->checkerboard {changed(fade, checker):.3f}, fade->difference "
        f"{changed(fade, difference):.3f}"
    )
    assert changed(fade, checker) > 0.02 and changed(fade, difference) > 0.02
    assert changed(checker, difference) > 0.02
    show(logic, params, view, compareMode="flicker")
    logic.setFlickerPhase(params, True)
    on = view.render()
    assert composite(scene).GetForegroundVolumeID() == params.warpedVolume.GetID()
    assert composite(scene).GetForegroundOpacity() == 1.0
    logic.setFlickerPhase(params, False)
    off = view.render()
    assert composite(scene).GetForegroundOpacity() == 0.0
    assert changed(on, off) > 0.01
    show(logic, params, view, compareMode="fade")
    assert composite(scene).GetBackgroundVolumeID() == params.fixedVolume.GetID()


def test_before_after_shows_the_pre_alignment_and_the_step_in_turn(viewed):
    """ "beforeafter": over the fixed volume, the pre-alignment's warped image (step 0: the session's own,
    in the warped volume's window) and the displayed step's, switched by the flicker phase."""
    import slicer

    from RLRegistrationMRML.compare_views import COMPARISON_ATTRIBUTE

    logic, params, view = viewed
    scene = slicer.mrmlScene
    overlays = {name: False for name in ("showWeightMap", "showUncertainty", "showMagnitude", "showJacobian")}
    show(logic, params, view, compareMode="beforeafter", overlayOpacity=1.0, **overlays)
    logic.setFlickerPhase(params, True)
    after = save(view.render(), "slicer-after.png")
    assert composite(scene).GetForegroundVolumeID() == params.warpedVolume.GetID()
    logic.setFlickerPhase(params, False)
    before = save(view.render(), "slicer-before.png")
    node = scene.GetNodeByID(composite(scene).GetForegroundVolumeID())
    assert node.GetAttribute(COMPARISON_ATTRIBUTE) == "before"
    assert composite(scene).GetBackgroundVolumeID() == params.fixedVolume.GetID()
    low, high = logic.worker.moving_window
    expected = low + logic.session.warped_at(0) * (high - low)
    np.testing.assert_allclose(
        slicer.util.arrayFromVolume(node), expected, rtol=1e-5, atol=1e-3 * (high - low)
    )
    warpedDisplay, beforeDisplay = params.warpedVolume.GetDisplayNode(), node.GetDisplayNode()
    assert beforeDisplay.GetWindowLevelMax() == pytest.approx(warpedDisplay.GetWindowLevelMax())
    print(f"\nbefore/after: changed pixels {changed(after, before):.3f}")
    assert changed(after, before) > 0.01  # the deformable steps moved the image
    logic.setFlickerPhase(params, True)
    show(logic, params, view, compareMode="fade", overlayOpacity=0.5)


def test_readout_at_a_voxel_gives_that_voxels_values(viewed):
    import slicer

    from RLRegistrationMRML.compare_views import worldIjkToRas

    logic, params, view = viewed
    logic.updateJacobian(params)
    fixed = params.fixedVolume
    index = (40, 50, 44)  # (i, j, k), inside the head
    matrix = worldIjkToRas(fixed)
    ras = (matrix @ np.array([*index, 1.0]))[:3]
    values = logic.readout(params, ras)
    k, j, i = index[2], index[1], index[0]
    assert values.fixed == pytest.approx(float(slicer.util.arrayFromVolume(fixed)[k, j, i]))
    assert values.warped == pytest.approx(float(slicer.util.arrayFromVolume(params.warpedVolume)[k, j, i]))
    assert values.magnitude == pytest.approx(
        float(slicer.util.arrayFromVolume(params.magnitudeVolume)[k, j, i]), rel=1e-4, abs=1e-5
    )
    assert values.jacobian == pytest.approx(
        float(slicer.util.arrayFromVolume(params.jacobianVolume)[k, j, i]), rel=1e-5
    )
    text = values.text()
    assert " mm · fixed " in text and "det J" in text and "|u|" in text
    assert logic.readout(params, (1e4, 0.0, 0.0)).fixed is None


def test_window_presets_set_the_background_display_node_to_the_percentiles(viewed):
    """A window/level preset of the fixed volume (the slice views' background): the display node's window
    equals the fixed volume's percentiles, and the rendered view changes with it."""
    import slicer.util

    from RLRegistrationMRML.slice_annotations import WINDOW_PRESETS, applyWindowPreset

    logic, params, view = viewed
    fixed = params.fixedVolume
    voxels = slicer.util.arrayFromVolume(fixed)
    images = {}
    for preset, (_label, percentiles) in WINDOW_PRESETS.items():
        window = applyWindowPreset(fixed, preset)
        display = fixed.GetDisplayNode()
        expected = np.percentile(voxels, percentiles)
        assert window == pytest.approx(tuple(expected))
        assert not display.GetAutoWindowLevel()
        assert display.GetWindowLevelMin() == pytest.approx(expected[0], abs=1e-3)
        assert display.GetWindowLevelMax() == pytest.approx(expected[1], abs=1e-3)
        assert display.GetWindow() == pytest.approx(expected[1] - expected[0], abs=1e-3)
        images[preset] = show(logic, params, view, compareMode="fade", overlayOpacity=0.0)
    assert changed(images["full"], images["narrow"]) > 0.05
    applyWindowPreset(fixed, "auto")


def test_slice_annotation_names_the_view_its_directions_and_position(viewed):
    """The views' labels as Slicer's orientation markers: axial and coronal with the patient's right on
    the screen's left, sagittal with anterior on the left; the slice offset in mm along the normal."""
    from RLRegistrationMRML.slice_annotations import sliceAnnotation

    _logic, _params, view = viewed
    node = view.sliceNode
    node.SetSliceOffset(12.5)
    annotation = sliceAnnotation(node)
    assert (annotation["orientation"], annotation["left"], annotation["right"], annotation["up"]) == (
        "Axial",
        "R",
        "L",
        "A",
    )
    assert annotation["position"] == ("S", pytest.approx(12.5))
    assert annotation["text"] == "Axial (R ← → L) · S 12.5 mm"
    node.SetOrientation("Sagittal")
    sagittal = sliceAnnotation(node)
    assert (sagittal["left"], sagittal["right"], sagittal["up"], sagittal["position"][0]) == (
        "A",
        "P",
        "S",
        "R",
    )
    node.SetOrientation("Coronal")
    coronal = sliceAnnotation(node)
    assert (coronal["left"], coronal["right"], coronal["up"], coronal["position"][0]) == ("R", "L", "S", "A")
    node.SetOrientation("Axial")


def test_views_get_slicers_orientation_marker_and_ruler_once(viewed):
    """The first display of a run turns on each slice view's orientation marker (patient axes) and mm ruler
    (Slicer's own displayable managers draw them); a view the user turned them off in stays off."""
    import slicer

    from RLRegistrationMRML.slice_annotations import showViewMarkers

    logic, params, view = viewed
    views = slicer.vtkMRMLAbstractViewNode
    node = view.sliceNode
    assert node.GetOrientationMarkerType() == views.OrientationMarkerTypeAxes
    assert node.GetRulerType() == views.RulerTypeThin
    marked = show(logic, params, view, compareMode="fade", overlayOpacity=0.0)
    assert showViewMarkers(slicer.mrmlScene, show=False) >= 1
    plain = view.render()
    # the ruler and the axes are drawn over the image: a part of the view changes, not the whole
    assert 0.002 < changed(marked, plain) < 0.2
    show(logic, params, view)  # a later display does not turn them on again
    assert node.GetOrientationMarkerType() == views.OrientationMarkerTypeNone
    assert node.GetRulerType() == views.RulerTypeNone
    showViewMarkers(slicer.mrmlScene)
