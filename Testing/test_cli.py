"""The ``rlreg`` command line: end to end on the sample pair, and one clear error per kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RLRegistrationLib.frontends.cli import main
from RLRegistrationLib.io.sample_pair import SAMPLE_DIR

FIXED = SAMPLE_DIR / "fixed.nii.gz"
MOVING = SAMPLE_DIR / "moving.nii.gz"


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _image(array, spacing=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=False)
    if spacing:
        image.SetSpacing(spacing)
    return image


def _write(tmp_path: Path, name: str, image: sitk.Image) -> Path:
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.random((12, 12, 12)).astype(np.float32)
    nan = volume.copy()
    nan[3, 3, 3] = np.nan
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image")
    return {
        "missing": (tmp_path / "nope.nii.gz", "file not found"),
        "not an image": (text, "not a readable image"),
        "2D": (_write(tmp_path, "flat.nrrd", _image(volume[0])), "3D image is required"),
        "4D": (_write(tmp_path, "four.nii.gz", _image(np.stack([volume, volume]))), "3D image is required"),
        "vector": (
            _write(tmp_path, "rgb.nrrd", sitk.GetImageFromArray(np.stack([volume] * 3, -1), isVector=True)),
            "scalar image is required",
        ),
        "constant": (_write(tmp_path, "const.nii.gz", _image(np.ones((12, 12, 12), np.float32))), "constant"),
        "nan": (_write(tmp_path, "nan.mha", _image(nan)), "NaN or Inf"),
    }


@pytest.mark.parametrize("kind", ["missing", "not an image", "2D", "4D", "vector", "constant", "nan"])
def test_bad_moving_image_is_one_clear_line_and_writes_nothing(kind, bad_inputs, tmp_path, capsys):
    path, message = bad_inputs[kind]
    out = tmp_path / "out.h5"
    code, stdout, stderr = _run(capsys, "register", FIXED, path, "-o", out, "--device", "cpu", "--quiet")
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("rlreg: error: moving image")
    assert str(path) in lines[0] and message in lines[0]
    assert "Traceback" not in stderr
    assert not out.exists()


def test_existing_output_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "result.h5"
    out.write_bytes(b"precious")
    code, _, stderr = _run(capsys, "register", FIXED, MOVING, "-o", out, "--device", "cpu", "--quiet")
    assert code == 2 and "exists" in stderr and str(out) in stderr
    assert out.read_bytes() == b"precious"


def test_unknown_policy(tmp_path, capsys):
    code, _, stderr = _run(capsys, "register", FIXED, MOVING, "-o", tmp_path / "o.h5", "--policy", "magic")
    assert code == 2 and "unknown policy 'magic'" in stderr and "tto" in stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_requested_without_gpu(tmp_path, capsys):
    code, _, stderr = _run(capsys, "register", FIXED, MOVING, "-o", tmp_path / "o.h5", "--device", "cuda")
    assert code == 2 and "CUDA was requested" in stderr
    assert not (tmp_path / "o.h5").exists()


def test_register_and_evaluate_on_the_sample_pair(tmp_path, capsys):
    out = tmp_path / "t.h5"
    warped = tmp_path / "w.nii.gz"
    report = tmp_path / "r.json"
    code, stdout, stderr = _run(
        capsys,
        "register",
        FIXED,
        MOVING,
        "-o",
        out,
        "--warped",
        warped,
        "--report",
        report,
        "--fixed-labels",
        SAMPLE_DIR / "fixed_labels.nii.gz",
        "--moving-labels",
        SAMPLE_DIR / "moving_labels.nii.gz",
        "--steps",
        "5",
        "--device",
        "cpu",
    )
    assert code == 0, stderr
    assert "step   5/5" in stdout and "dice" in stdout and "ms/step" in stdout
    steps = json.loads(report.read_text())["steps"]
    assert steps[-1]["dice"] > steps[0]["dice"] + 0.1
    # the written transform resamples the moving image as the written warped image
    transform = sitk.ReadTransform(str(out))
    fixed, moving = sitk.ReadImage(str(FIXED)), sitk.ReadImage(str(MOVING))
    expected = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)
    assert np.array_equal(
        sitk.GetArrayFromImage(expected), sitk.GetArrayFromImage(sitk.ReadImage(str(warped)))
    )
    code, stdout, _ = _run(
        capsys,
        "evaluate",
        "--transform",
        out,
        "--fixed-labels",
        SAMPLE_DIR / "fixed_labels.nii.gz",
        "--moving-labels",
        SAMPLE_DIR / "moving_labels.nii.gz",
        "--labels",
        "all",
    )
    assert code == 0
    evaluation = json.loads(stdout)
    assert evaluation["dice"] == pytest.approx(steps[-1]["dice"], abs=0.01)
    assert evaluation["folding_percent"] < 0.5


def _rlreg_subprocess(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m RLRegistrationLib ARGS`` in a child process that imports this checkout."""
    package_root = str(Path(__file__).resolve().parents[1] / "RLRegistration")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "RLRegistrationLib", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_demo_entry_point_writes_everything(tmp_path):
    """The real console entry (a subprocess), as the README's first command runs it."""
    out = tmp_path / "demo"
    completed = _rlreg_subprocess("demo", "--out-dir", str(out), "--steps", "4", "--device", "cpu", "--quiet")
    assert completed.returncode == 0, completed.stderr
    names = {p.name for p in out.iterdir()}
    expected = {
        "transform.h5",
        "warped.nii.gz",
        "displacement.nii.gz",
        "weight_map.nii.gz",
        "qc.png",
        "report.json",
    }
    assert expected <= names
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["dice_final_from_h5"] > summary["dice_after_affine"] + 0.1
    assert summary["dice_final_from_h5"] == pytest.approx(summary["dice_final_session"], abs=0.005)
    # a second run refuses to overwrite the results
    again = _rlreg_subprocess("demo", "--out-dir", str(out), "--steps", "1", "--quiet")
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr


def test_info_lists_policies(capsys):
    code, stdout, _ = _run(capsys, "info")
    assert code == 0 and "tto" in stdout and "torch" in stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_the_command_process_keeps_freed_memory_for_reuse():
    """``rlreg`` (``cli.entry_point``) sets glibc to keep freed memory; in a process of its own (it is
    process-wide), where large tensors are then allocated, freed and reallocated as usual."""
    package_root = str(Path(__file__).resolve().parents[1] / "RLRegistration")
    code = (
        "import torch\n"
        "from RLRegistrationLib.allocator import reuse_freed_memory\n"
        "ok = reuse_freed_memory()\n"
        "total = 0.0\n"
        "for _ in range(4):\n"
        "    total += float(torch.ones(8_000_000).sum())\n"
        "print(ok, total)\n"
    )
    env = {**os.environ, "PYTHONPATH": package_root}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["True", "32000000.0"]


def test_registering_an_image_to_itself_is_refused_before_reading(tmp_path, capsys):
    code, _, stderr = _run(capsys, "register", FIXED, FIXED, "-o", tmp_path / "t.h5", "--device", "cpu")
    assert code == 2
    assert stderr.strip() == (
        f"rlreg: error: moving image '{FIXED}': is the same file as the fixed image '{FIXED}' "
        "(registering an image to itself gives the identity)"
    )
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_labels_that_neither_map_holds(tmp_path, capsys):
    """Scored as NaN before (and printed as JSON that is not JSON)."""
    transform = tmp_path / "t.h5"
    sitk.WriteTransform(sitk.TranslationTransform(3), str(transform))
    labels = [SAMPLE_DIR / "fixed_labels.nii.gz", SAMPLE_DIR / "moving_labels.nii.gz"]
    argv = ["evaluate", "--transform", transform, "--fixed-labels", labels[0], "--moving-labels", labels[1]]
    code, _, stderr = _run(capsys, *argv, "--labels", "2,9998,9999", "--no-hd95")
    assert code == 2
    assert stderr.strip() == "rlreg: error: --labels: labels 9998, 9999 are in neither label map"


def test_a_cancellation_after_the_outputs_were_put_in_place_says_so(capsys):
    from RLRegistrationLib.frontends import cli

    interrupt = cli.Interrupted(15)
    assert cli._cancelled(interrupt) == 143
    interrupt.written = ["t.h5"]
    assert cli._cancelled(KeyboardInterrupt()) == 130
    assert cli._cancelled(interrupt) == 143
    assert capsys.readouterr().err.splitlines() == [
        "rlreg: cancelled, nothing written",
        "rlreg: cancelled, nothing written",
        "rlreg: cancelled after all outputs were written (they are complete)",
    ]


def _qc_result(field_mm: np.ndarray, grid):
    from RLRegistrationLib.registration.result import RegistrationResult

    return RegistrationResult(
        affine=sitk.AffineTransform(3), field_mm=field_mm, weight_map=None, reports=[], output_grid=grid
    )


def test_qc_picture_has_a_det_j_panel(tmp_path):
    """The QC picture's det J panel (issue 21): 1 for a zero field, in diverging colours that vary with a
    local expansion; one panel (column) more than fixed / moving / warped / checkerboard / |u|."""
    import matplotlib.image as mpimg

    from RLRegistrationLib.fields.geometry import Grid
    from RLRegistrationLib.frontends.qc import jacobian_on_fixed_grid, write_qc_picture

    rng = np.random.default_rng(0)
    array = rng.random((24, 28, 32)).astype(np.float32)
    fixed = _image(array, spacing=(1.5, 1.5, 2.0))
    grid = Grid.from_image(fixed)
    zero = _qc_result(np.zeros((*grid.shape, 3), np.float32), grid)
    assert np.allclose(jacobian_on_fixed_grid(zero, grid), 1.0, atol=1e-6)
    path = write_qc_picture(tmp_path / "zero.png", fixed, fixed, zero)
    height, width = mpimg.imread(path).shape[:2]
    assert width == round(2.6 * 6 * 80)  # six columns of 2.6 in at 80 dpi (five before det J)

    # a smooth bump of displacement along i: det J > 1 on one side, < 1 on the other
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in grid.shape), indexing="ij")
    bump = 3.0 * np.exp(-((k - 12) ** 2 + (j - 14) ** 2 + (i - 16) ** 2) / (2 * 4.0**2))
    field = np.zeros((*grid.shape, 3), np.float32)
    field[..., 0] = bump
    bumped = _qc_result(field, grid)
    det = jacobian_on_fixed_grid(bumped, grid)
    assert det.min() < 0.9 and det.max() > 1.1
    pixels = {}
    for name, result in (("zero", zero), ("bump", bumped)):
        png = mpimg.imread(write_qc_picture(tmp_path / f"{name}.png", fixed, fixed, result))[..., :3]
        # the det J column's axial panel (column 6 of 6, top row of four)
        column = png[int(0.12 * height) : int(0.3 * height), int(5.15 / 6 * width) : int(5.75 / 6 * width)]
        pixels[name] = column
    assert pixels["zero"].std(axis=(0, 1)).max() < 0.02  # uniform: det J = 1 everywhere (white-ish)
    assert pixels["zero"].mean() > 0.9
    assert pixels["bump"].std(axis=(0, 1)).max() > 0.05  # blue and red where the bump shrinks and grows


# the command runs in a process of its own; an atexit callback (as torch registers its own) says whether
# Python's shutdown ran after it
ENTRY_WITH_SHUTDOWN_MARK = """
import atexit, sys
from RLRegistrationLib.frontends.cli import entry_point
atexit.register(print, "SHUTDOWN", flush=True)
sys.argv = ["rlreg", *sys.argv[1:]]
sys.exit(entry_point())
"""


def test_a_register_that_succeeded_ends_without_pythons_shutdown_and_its_outputs_complete(tmp_path):
    """``register`` (``LEAVE_AT_ONCE``) ends its process at once when it succeeds (Python's shutdown with
    torch loaded takes 0.3-0.5 s): exit code 0, every line printed, every output complete. A command not
    in the list (``info``), and a register that fails, shut down as usual."""
    from RLRegistrationLib.frontends.cli import LEAVE_AT_ONCE

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "RLRegistration")}

    def entry(*argv):
        return subprocess.run(
            [sys.executable, "-c", ENTRY_WITH_SHUTDOWN_MARK, *map(str, argv)],
            capture_output=True, encoding="utf-8", env=env, cwd=tmp_path, timeout=300,
        )  # fmt: skip

    out = tmp_path / "t.h5"
    report = tmp_path / "report.json"
    done = entry("register", FIXED, MOVING, "-o", out, "--report", report, "--steps", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "SHUTDOWN" not in done.stdout and "transform written to" in done.stdout
    assert sitk.ReadTransform(str(out)) is not None and json.loads(report.read_text())["steps"]
    assert "register" in LEAVE_AT_ONCE and "info" not in LEAVE_AT_ONCE
    info = entry("info")
    assert info.returncode == 0 and info.stdout.rstrip().endswith("SHUTDOWN")
    failed = entry("register", FIXED, tmp_path / "missing.nii.gz", "-o", tmp_path / "u.h5")
    assert failed.returncode == 2 and "SHUTDOWN" in failed.stdout and not (tmp_path / "u.h5").exists()
