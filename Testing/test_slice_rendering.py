"""Slice views rendered by Slicer's own slice logic and displayable managers (offscreen, EGL): pixels.

The registration runs through the MRML layer on a scene made like Slicer's (``create_core_scene``); the
assertions are on the rendered images: the λ overlay puts its colour table where λ is, the displacement
glyphs change the image against a hidden field, consecutive steps differ. Needs only ``slicer-core``
(and Mesa's EGL); skipped with the reason when it is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "RLRegistration" / "RLRegistrationLib" / "sample_data"
SHARED_COLORS = ROOT.parent / "shared" / "slicer-python" / "Base" / "Logic" / "Resources" / "ColorFiles"
sys.path.insert(0, str(ROOT / "RLRegistration"))

PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from RLRegistrationMRML.core_scene import create_core_scene
from RLRegistrationMRML.slice_rendering import OffscreenSliceView
core = create_core_scene()
view = OffscreenSliceView(core.scene, core.app_logic, size=(16, 16))
assert view.render().shape == (16, 16, 3)
"""


def rendering_unavailable() -> str | None:
    """Why slice views cannot be rendered here (probed in a child process: a missing GL can crash it)."""
    try:
        import slicer  # noqa: F401
    except ImportError as error:  # a user's clone without the test extra
        return f"slicer-core is not installed ({error}); pip install -e '.[test]'"
    import subprocess

    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "RLRegistration")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        return (
            "offscreen rendering failed (Debian: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri): "
            + (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
        )
    return None


REASON = rendering_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def colourful(image: np.ndarray, threshold: int = 12) -> np.ndarray:
    """Pixels whose channels differ (a colour table or a glyph), not grey levels of a scalar volume."""
    return (image.max(axis=-1).astype(int) - image.min(axis=-1).astype(int)) > threshold


@pytest.fixture(scope="module")
def viewed():
    """The sample pair registered for 2 steps, and an axial slice view of the scene."""
    from RLRegistrationMRML.core_scene import create_core_scene
    from RLRegistrationMRML.parameters import RegistrationParameters
    from RLRegistrationMRML.scene_logic import RegistrationSceneLogic
    from RLRegistrationMRML.slice_annotations import showViewMarkers
    from RLRegistrationMRML.slice_rendering import OffscreenSliceView

    core = create_core_scene(color_files=SHARED_COLORS if SHARED_COLORS.is_dir() else None)
    scene = core.scene
    view = OffscreenSliceView(scene, core.app_logic, "Red", "Axial", (160, 160))
    load = core.volumes_logic.AddArchetypeVolume
    params = RegistrationParameters(
        fixedVolume=load(str(SAMPLE / "fixed.nii.gz"), "fixed", 0),
        movingVolume=load(str(SAMPLE / "moving.nii.gz"), "moving", 0),
        iterations=2,
        device="cpu",
        fieldDisplay="Hidden",
    )
    params.warpedVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    logic = RegistrationSceneLogic(scene)
    logic.runBlocking(params, 2)
    # these tests read the image's own colours: no orientation marker (coloured axes) or ruler over it
    showViewMarkers(scene, show=False)
    yield logic, params, view
    view.close()
    logic.forgetSession()


def show(logic, params, view, **changes) -> np.ndarray:
    for name, value in changes.items():
        setattr(params, name, value)
    logic.updateDisplay(params)
    return view.render()


def test_the_fixed_volume_alone_renders_in_grey(viewed):
    logic, params, view = viewed
    image = show(logic, params, view, fieldDisplay="Hidden", showWeightMap=False, overlayOpacity=0.0)
    assert image.shape == (160, 160, 3)
    assert image.mean() > 20, "the brain is visible"
    assert colourful(image).mean() < 0.001, "grey levels only"


def test_the_weight_map_overlay_shows_its_colour_table_where_lambda_is(viewed):
    from RLRegistrationMRML.parameters import WEIGHT_MAP_COLORS

    logic, params, view = viewed
    image = show(logic, params, view, fieldDisplay="Hidden", showWeightMap=True, overlayOpacity=0.6)
    assert params.weightMapVolume.GetDisplayNode().GetColorNodeID() == WEIGHT_MAP_COLORS
    # the λ map covers the working grid, i.e. the whole fixed field of view shown: nearly every pixel of
    # the view is tinted by Viridis (green-yellow-blue, never grey)
    assert colourful(image).mean() > 0.5
    plain = show(logic, params, view, showWeightMap=False, overlayOpacity=0.0)
    assert colourful(plain).mean() < 0.001


def test_displacement_glyphs_change_the_image_against_a_hidden_field(viewed):
    logic, params, view = viewed
    hidden = show(logic, params, view, fieldDisplay="Hidden", showWeightMap=False, overlayOpacity=0.0)
    glyphs = show(logic, params, view, fieldDisplay="Glyph")
    grid = show(logic, params, view, fieldDisplay="Grid")
    assert colourful(glyphs).mean() > 0.005 and colourful(hidden).mean() < 0.001
    assert colourful(grid).mean() > colourful(glyphs).mean() * 0.5
    assert (np.abs(grid.astype(int) - glyphs.astype(int)).sum(-1) > 30).mean() > 0.005


def test_consecutive_steps_render_differently(viewed):
    logic, params, view = viewed
    frames = []
    for step in (0, 1, 2):
        logic.showStep(params, step)
        frames.append(
            show(logic, params, view, fieldDisplay="Hidden", showWeightMap=False, overlayOpacity=1.0)
        )
    for before, after in zip(frames, frames[1:]):
        changed = (np.abs(after.astype(int) - before.astype(int)).max(-1) > 8).mean()
        assert changed > 0.02, changed  # the warped moving volume moves between steps


def test_matplotlib_fallback_colours_equal_slicers_colour_files():
    """Outside Slicer the overlays use matplotlib's colormap under Slicer's ID: the same colours."""
    if not SHARED_COLORS.is_dir():
        pytest.skip(f"Slicer's colour files are not at {SHARED_COLORS} (../shared is absent)")
    import slicer

    from RLRegistrationMRML.colors import ensure_color_table
    from RLRegistrationMRML.core_scene import load_color_files

    for name in ("Viridis", "Plasma", "Inferno"):
        files, fallback = slicer.vtkMRMLScene(), slicer.vtkMRMLScene()
        logic = slicer.vtkMRMLColorLogic()
        logic.SetMRMLScene(files)
        assert load_color_files(logic, files, SHARED_COLORS) > 0
        node_id = f"vtkMRMLColorTableNodeFile{name}.txt"
        ensure_color_table(fallback, node_id)
        a, b = files.GetNodeByID(node_id), fallback.GetNodeByID(node_id)
        assert a.GetNumberOfColors() == b.GetNumberOfColors() == 256
        for i in (0, 64, 128, 200, 255):
            ca, cb = [0.0] * 4, [0.0] * 4
            a.GetColor(i, ca)
            b.GetColor(i, cb)
            np.testing.assert_allclose(ca[:3], cb[:3], atol=2 / 255)
