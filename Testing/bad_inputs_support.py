"""What the bad-input catalogue's tests share: ``rlreg register`` run as a real subprocess on this checkout
(``_rlreg``), the checksums of a test folder (``_tree``), the small fixed/moving pair with label maps every
case starts from (``Pair``), the cases' registry (``Cases``), the error line that names the moving image
(``_moving_error``), and a DICOM series written slice by slice (``_slices``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from catalogue_support import _blobs, _dicom_series, _write  # Testing/ is on sys.path, as for conftest

LIB = str(Path(__file__).resolve().parents[1] / "RLRegistration")


def _rlreg(cwd: Path, *args) -> subprocess.CompletedProcess:
    """``python -m RLRegistrationLib register ARGS --device cpu --quiet`` importing this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [LIB, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "RLRegistrationLib", "register", "--device", "cpu", "--quiet"]
    return subprocess.run(
        command + list(map(str, args)), capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


def _tree(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: (link target or None, sha256 of the content or None)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        target = os.readlink(path) if path.is_symlink() else None
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(folder))] = (target, digest)
    return out


def _image(array, spacing=(2.0, 2.0, 2.0), origin=(-20.0, 10.0, 5.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


class Pair:
    """A small fixed/moving pair with label maps in a test folder."""

    def __init__(self, folder: Path):
        self.dir = folder
        self.fixed = _write(_image(_blobs()), folder / "fixed.nii.gz")
        self.moving_array = np.roll(_blobs(), 1, axis=1)
        self.moving = _write(_image(self.moving_array), folder / "moving.nii.gz")
        labels = (_blobs() > 0.5).astype(np.int16)
        self.fixed_labels = _write(_image(labels), folder / "fixed_labels.nii.gz")
        self.moving_labels = _write(_image(np.roll(labels, 1, axis=1)), folder / "moving_labels.nii.gz")
        self.out = folder / "t.h5"

    def register(self, moving=None, *extra, fixed=None) -> list:
        return [fixed or self.fixed, moving or self.moving, "-o", self.out, *extra]


class Cases(dict):
    """A test file's cases by name; ``case`` registers one: ``function(pair) -> (argv, expected stderr lines)``."""

    def case(self, function):
        self[function.__name__] = function
        return function


def _moving_error(path, problem) -> list[str]:
    return [f"rlreg: error: moving image '{path}': {problem}"]


def _slices(p, skip=None, duplicate=None, shift_from=None):
    positions = []
    for k in range(p.moving_array.shape[0]):
        z = 5.0 + 2.5 * k + (0.5 if shift_from is not None and k >= shift_from else 0.0)
        if k != skip:
            positions.append((k, z))
        if k == duplicate:
            positions.append((k, z))
    return _dicom_series(p.dir / "series", p.moving_array, positions)


def check_refused(case, tmp_path: Path) -> None:
    """Run the command of ``case`` (a function of a ``Pair`` giving (argv, expected stderr lines)) in
    ``tmp_path``: exactly those lines, exit 2, no traceback, the folder as it was (pytest rewrites the
    asserts here: ``conftest`` registers this module)."""
    argv, expected = case(Pair(tmp_path))
    before = _tree(tmp_path)
    done = _rlreg(tmp_path, *argv)
    assert done.stderr.strip().splitlines() == expected, done.stderr
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert _tree(tmp_path) == before
