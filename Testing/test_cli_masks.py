"""``rlreg register`` with ``--initialization`` and ``--fixed-mask`` / ``--moving-mask`` on the sample pair
(2 mm, small), with one clear error line per kind of bad mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RLRegistrationLib.frontends.cli import main
from RLRegistrationLib.io.sample_pair import SAMPLE_DIR

FIXED = SAMPLE_DIR / "fixed.nii.gz"
MOVING = SAMPLE_DIR / "moving.nii.gz"


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _mask(tmp_path: Path, name: str, kind: str = "brain") -> Path:
    """A mask of the sample fixed image: its labels > 0 ("brain"), all zero, fractional, on a coarser grid,
    or moved far from the image."""
    labels = sitk.ReadImage(str(SAMPLE_DIR / "fixed_labels.nii.gz"))
    mask = sitk.Cast(labels > 0, sitk.sitkUInt8)
    if kind == "empty":
        mask = mask * 0
    elif kind == "fractional":
        mask = sitk.Cast(mask, sitk.sitkFloat32) * 0.5
    elif kind == "coarse":
        mask = sitk.Resample(
            mask,
            [s // 2 for s in mask.GetSize()],
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            mask.GetOrigin(),
            [2 * s for s in mask.GetSpacing()],
            mask.GetDirection(),
        )
    elif kind == "elsewhere":
        mask.SetOrigin([o + 1000.0 for o in mask.GetOrigin()])
    path = tmp_path / name
    sitk.WriteImage(mask, str(path))
    return path


def test_initialization_rigid_and_the_no_affine_alias(tmp_path, capsys):
    code, out, err = _run(
        capsys,
        "register",
        FIXED,
        MOVING,
        "-o",
        tmp_path / "r.h5",
        "--steps",
        "0",
        "--initialization",
        "rigid",
    )
    assert code == 0, err
    matrix = np.asarray(sitk.ReadTransform(str(tmp_path / "r.h5")).GetNthTransform(0).GetMatrix())
    np.testing.assert_allclose(matrix.reshape(3, 3) @ matrix.reshape(3, 3).T, np.eye(3), atol=1e-6)
    code, _, err = _run(
        capsys, "register", FIXED, MOVING, "-o", tmp_path / "n.h5", "--steps", "0", "--no-affine"
    )
    assert code == 0 and "--no-affine is deprecated" in err, err
    affine = sitk.ReadTransform(str(tmp_path / "n.h5")).GetNthTransform(0)
    assert np.allclose(affine.GetParameters(), sitk.AffineTransform(3).GetParameters())
    code, _, err = _run(
        capsys, "register", FIXED, MOVING, "-o", tmp_path / "x.h5", "--no-affine", "--initialization", "rigid"
    )
    assert code == 2 and err.startswith("rlreg: error: --no-affine")


def test_register_with_masks(tmp_path, capsys):
    mask = _mask(tmp_path, "mask.nii.gz")
    code, out, err = _run(
        capsys,
        "register",
        FIXED,
        MOVING,
        "-o",
        tmp_path / "t.h5",
        "--steps",
        "1",
        "--fixed-mask",
        mask,
        "--moving-mask",
        _mask(tmp_path, "coarse.nii.gz", "coarse"),
    )
    assert code == 0, err
    assert (tmp_path / "t.h5").exists()
    # the moving mask is on another grid (and of the fixed subject, but inside the moving image): resampled
    assert "rlreg: warning: moving mask" in err and "resampled" in err


@pytest.mark.parametrize(
    "kind, message",
    [("empty", "all zero"), ("fractional", "non-integer"), ("elsewhere", "does not overlap")],
)
def test_bad_mask_is_one_clear_line_and_writes_nothing(kind, message, tmp_path, capsys):
    mask = _mask(tmp_path, f"{kind}.nii.gz", kind)
    out_path = tmp_path / "t.h5"
    code, _, err = _run(capsys, "register", FIXED, MOVING, "-o", out_path, "--fixed-mask", mask)
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("rlreg: error:")]
    assert len(error_lines) == 1 and str(mask) in error_lines[0] and message in error_lines[0]
    assert not out_path.exists()
