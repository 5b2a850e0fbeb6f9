"""Render what the Slicer panel shows, step by step, with Slicer's own slice views (offscreen, no Slicer app).

Registers the embedded sample pair through the MRML layer (``RegistrationSceneLogic``, the code the Slicer
panel runs) on a scene set up like Slicer's, then replays each step and renders an axial slice view three
ways: fixed + warped (50 %) with the displacement as glyphs, the λ weight map overlay (Viridis) with the
displacement grid, and |u| (Inferno) with contours. Writes ``step_<k>.png`` per step and
``registration_steps.gif`` (the animation) into ``--out`` (default ``Resources/Screenshots``).

    python scripts/render_panel_frames.py [--steps 4] [--iterations 5] [--out Resources/Screenshots]

Needs ``slicer-core`` (``pip install -e ".[test]"``) and an EGL-capable Mesa (Debian: libegl1
libegl-mesa0 libgl1-mesa-dri) or an X display.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "RLRegistration"))

SAMPLE = ROOT / "RLRegistration" / "RLRegistrationLib" / "sample_data"
SHARED_COLORS = ROOT.parent / "shared" / "slicer-python" / "Base" / "Logic" / "Resources" / "ColorFiles"
PANELS = (
    # (caption, parameter changes)
    ("fixed + warped, glyphs", {"fieldDisplay": "Glyph", "showWeightMap": False, "showMagnitude": False}),
    ("weight map (lambda), grid", {"fieldDisplay": "Grid", "showWeightMap": True, "showMagnitude": False}),
    ("|u| (mm), contours", {"fieldDisplay": "Contour", "showWeightMap": False, "showMagnitude": True}),
)


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """The image with a one-line caption band above it (Pillow's default font)."""
    from PIL import Image, ImageDraw

    band = Image.new("RGB", (image.shape[1], 18), (24, 24, 24))
    ImageDraw.Draw(band).text((4, 3), text, fill=(230, 230, 230))
    return np.concatenate([np.asarray(band), image], axis=0)


def render_steps(steps: int, iterations: int, size: int = 256):
    """Run the sample pair and return, per step, (report, the three captioned panels side by side)."""
    from RLRegistrationMRML.core_scene import create_core_scene
    from RLRegistrationMRML.parameters import RegistrationParameters
    from RLRegistrationMRML.scene_logic import RegistrationSceneLogic
    from RLRegistrationMRML.slice_rendering import OffscreenSliceView

    core = create_core_scene(color_files=SHARED_COLORS if SHARED_COLORS.is_dir() else None)
    scene = core.scene
    view = OffscreenSliceView(scene, core.app_logic, "Red", "Axial", (size, size))
    load = core.volumes_logic.AddArchetypeVolume
    params = RegistrationParameters(
        fixedVolume=load(str(SAMPLE / "fixed.nii.gz"), "fixed", 0),
        movingVolume=load(str(SAMPLE / "moving.nii.gz"), "moving", 0),
        fixedLabels=load(str(SAMPLE / "fixed_labels.nii.gz"), "fixed labels", 1),
        movingLabels=load(str(SAMPLE / "moving_labels.nii.gz"), "moving labels", 1),
        iterations=iterations,
        device="cpu",
    )
    params.warpedVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    params.magnitudeVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "|u|")
    logic = RegistrationSceneLogic(scene)
    start = time.time()
    reports = logic.runBlocking(params, steps)
    print(f"registered {steps} steps in {time.time() - start:.1f} s")
    frames = []
    for report in reports:
        logic.showStep(params, report.index)
        panels = []
        for text, changes in PANELS:
            for name, value in changes.items():
                setattr(params, name, value)
            logic.updateDisplay(params)
            panels.append(caption(view.render(), text))
        strip = np.concatenate(panels, axis=1)
        title = f"step {report.index}/{steps}   NCC {report.similarity:.3f}   Dice {report.dice:.3f}"
        frames.append((report, caption(strip, title)))
    view.close()
    return frames


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--size", type=int, default=256, help="pixels of one slice view")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshots")
    args = parser.parse_args(argv)
    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    frames = render_steps(args.steps, args.iterations, args.size)
    images = [Image.fromarray(frame) for _report, frame in frames]
    for (report, _frame), image in zip(frames, images):
        image.save(args.out / f"step_{report.index}.png")
    images[0].save(
        args.out / "registration_steps.gif", save_all=True, append_images=images[1:], duration=700, loop=0
    )
    print(f"wrote {len(images)} frames and registration_steps.gif to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
