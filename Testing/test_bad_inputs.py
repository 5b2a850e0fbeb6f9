"""Catalogue of bad inputs: each case runs ``rlreg register`` as a real subprocess and checks the exact
one-line message, exit code 2, and that no file was written or changed (checksums of every file in the
test folder, inputs and pre-existing outputs, before and after)."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from catalogue_support import _blobs, _write  # Testing/ is on sys.path, as for conftest

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.io.sample_pair import SAMPLE_DIR
from RLRegistrationLib.registration.memory import GIB, estimate_peak_memory
from RLRegistrationLib.registration.session import SessionOptions

LIB = str(Path(__file__).resolve().parents[1] / "RLRegistration")
NOT_READABLE = "not a readable image (unknown format or corrupt file)"
NEVER = "an output never replaces an input (choose another file name)"


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


CASES = {}


def case(function):
    """Register a case: ``function(pair) -> (argv, expected stderr lines)``."""
    CASES[function.__name__] = function
    return function


def _moving_error(path, problem) -> list[str]:
    return [f"rlreg: error: moving image '{path}': {problem}"]


# ---------------------------------------------------------------------------- unreadable or unusable images
@case
def missing_file(p):
    return p.register(p.dir / "nope.nii.gz"), _moving_error(p.dir / "nope.nii.gz", "file not found")


@case
def text_file(p):
    (p.dir / "notes.nii.gz").write_text("this is not an image")
    return p.register(p.dir / "notes.nii.gz"), _moving_error(p.dir / "notes.nii.gz", NOT_READABLE)


@case
def image_2d(p):
    path = _write(sitk.GetImageFromArray(_blobs()[0]), p.dir / "flat.nrrd")
    return p.register(path), _moving_error(path, "a 3D image is required, this one is 2D")


@case
def image_4d(p):
    path = _write(sitk.GetImageFromArray(np.stack([_blobs()] * 2), isVector=False), p.dir / "four.nii.gz")
    return p.register(path), _moving_error(path, "a 3D image is required, this one is 4D")


@case
def one_slice(p):
    path = _write(sitk.GetImageFromArray(_blobs()[:1]), p.dir / "one.nrrd")
    return p.register(path), _moving_error(
        path, "a 3D volume is required, size (24, 20, 1) has a flat axis (2D image?)"
    )


@case
def vector_image(p):
    path = _write(sitk.GetImageFromArray(np.stack([_blobs()] * 3, -1), isVector=True), p.dir / "rgb.nrrd")
    problem = "a scalar image is required, this one has 3 components per voxel (vector/RGB)"
    return p.register(path), _moving_error(path, problem)


@case
def constant_image(p):
    path = _write(_image(np.full((18, 20, 24), 7.0, np.float32)), p.dir / "const.nii.gz")
    return p.register(path), _moving_error(path, "image is empty or constant (all voxels = 7)")


@case
def nan_voxels(p):
    array = _blobs()
    array[3, 4, 5] = np.nan
    path = _write(_image(array), p.dir / "nan.mha")
    return p.register(path), _moving_error(path, "contains 1 NaN or Inf voxels")


# ---------------------------------------------------------------------------- cut short or corrupt files
def _cut_short(have: int, need: int, what: str = "voxel data") -> str:
    return f"file is cut short: it holds {have:,} bytes of {what}, its header describes {need:,} (a partly copied file?)"


def _stream_cut(have: int, need: int) -> str:
    return (
        f"compressed data is cut short: the stream ends before its end-of-stream marker after {have:,} bytes, "
        f"its header describes {need:,} (a partly copied file?)"
    )


@case
def nifti_gz_cut_short(p):
    """The issue's case: the first 20 kB of the sample fixed image, which ITK reads without a word."""
    data = (SAMPLE_DIR / "fixed.nii.gz").read_bytes()
    path = p.dir / "cut.nii.gz"
    path.write_bytes(data[:20_000])
    have = len(zlib.decompressobj(31).decompress(data[:20_000]))
    problem = _stream_cut(have, len(gzip.decompress(data)))
    return p.register(fixed=path), [f"rlreg: error: fixed image '{path}': {problem}"]


@case
def nifti_cut_short(p):
    full = _write(_image(p.moving_array), p.dir / "full.nii")
    path = p.dir / "cut.nii"
    path.write_bytes(full.read_bytes()[:-1000])
    full.unlink()
    voxels = p.moving_array.nbytes
    return p.register(path), _moving_error(path, _cut_short(voxels - 1000, voxels))


@case
def gzip_crc_corrupt(p):
    data = bytearray(p.moving.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 of the gzip trailer
    path = p.dir / "crc.nii.gz"
    path.write_bytes(bytes(data))
    try:
        zlib.decompressobj(31).decompress(bytes(data))
        raise AssertionError("zlib accepted a wrong CRC")
    except zlib.error as error:
        reason = str(error)
    return p.register(path), _moving_error(path, f"compressed data is corrupt ({reason})")


def _data_offset(data: bytes, marker: bytes) -> int:
    return data.index(marker) + len(marker)


@case
def nrrd_raw_cut_short(p):
    data = _write(_image(p.moving_array), p.dir / "full.nrrd").read_bytes()
    (p.dir / "full.nrrd").unlink()
    path = p.dir / "cut.nrrd"
    path.write_bytes(data[:-400])
    have = len(data) - 400 - _data_offset(data, b"\n\n")
    return p.register(path), _moving_error(path, _cut_short(have, p.moving_array.nbytes))


@case
def nrrd_gzip_cut_short(p):
    data = _write(_image(p.moving_array), p.dir / "full.nrrd", compress=True).read_bytes()
    (p.dir / "full.nrrd").unlink()
    path = p.dir / "cut.nrrd"
    path.write_bytes(data[:-400])
    have = len(zlib.decompressobj(31).decompress(data[_data_offset(data, b"\n\n") : -400]))
    return p.register(path), _moving_error(path, _stream_cut(have, p.moving_array.nbytes))


@case
def mha_raw_cut_short(p):
    data = _write(_image(p.moving_array), p.dir / "full.mha").read_bytes()
    (p.dir / "full.mha").unlink()
    path = p.dir / "cut.mha"
    path.write_bytes(data[:-400])
    have = len(data) - 400 - _data_offset(data, b"ElementDataFile = LOCAL\n")
    return p.register(path), _moving_error(path, _cut_short(have, p.moving_array.nbytes))


@case
def mha_compressed_cut_short(p):
    data = _write(_image(p.moving_array), p.dir / "full.mha", compress=True).read_bytes()
    (p.dir / "full.mha").unlink()
    path = p.dir / "cut.mha"
    path.write_bytes(data[:-400])
    declared = int(data.split(b"CompressedDataSize = ")[1].split(b"\n")[0])
    have = len(data) - 400 - _data_offset(data, b"ElementDataFile = LOCAL\n")
    return p.register(path), _moving_error(path, _cut_short(have, declared, "compressed data"))


@case
def mhd_raw_file_cut_short(p):
    path = _write(_image(p.moving_array), p.dir / "m.mhd")
    raw = p.dir / "m.raw"
    raw.write_bytes(raw.read_bytes()[:-4])
    return p.register(path), _moving_error(path, _cut_short(p.moving_array.nbytes - 4, p.moving_array.nbytes))


@case
def mhd_raw_file_missing(p):
    path = _write(_image(p.moving_array), p.dir / "m.mhd")
    (p.dir / "m.raw").unlink()
    return p.register(path), _moving_error(path, "its data file 'm.raw' is missing")


# ---------------------------------------------------------------------------- DICOM series
def _dicom_series(folder: Path, array: np.ndarray, z_positions) -> Path:
    """One int16 DICOM file per slice of ``array`` (k, j, i) at the given z positions (mm), 2 mm pixels."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study, series = "1.2.826.0.1.3680043.2.1125.1.77", "1.2.826.0.1.3680043.2.1125.1.78"
    for number, (k, z) in enumerate(z_positions):
        image_slice = sitk.GetImageFromArray((1000 * array[k : k + 1]).astype(np.int16))[:, :, 0]
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series}.{number + 1}",
            "0020|000d": study,
            "0020|000e": series,
            "0020|0013": str(number + 1),
            "0020|0032": f"-20.000000\\10.000000\\{z:.6f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "2.000000\\2.000000",
            "0018|0050": "2.500000",
        }
        for key, value in tags.items():
            image_slice.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{number:03d}.dcm"))
        writer.Execute(image_slice)
    return folder


def _slices(p, skip=None, duplicate=None, shift_from=None):
    positions = []
    for k in range(p.moving_array.shape[0]):
        z = 5.0 + 2.5 * k + (0.5 if shift_from is not None and k >= shift_from else 0.0)
        if k != skip:
            positions.append((k, z))
        if k == duplicate:
            positions.append((k, z))
    return _dicom_series(p.dir / "series", p.moving_array, positions)


@case
def dicom_missing_slice(p):
    folder = _slices(p, skip=7)
    problem = (
        "DICOM series has 1 missing slice(s): a gap of 5.00 mm after the slice at 20.00 mm, 2.50 mm elsewhere"
    )
    return p.register(folder), _moving_error(folder, problem)


@case
def dicom_duplicated_slice(p):
    folder = _slices(p, duplicate=7)
    problem = (
        "DICOM series of 19 files has 1 duplicated slice(s) (two slices at 22.50 mm along the slice normal)"
    )
    return p.register(folder), _moving_error(folder, problem)


@case
def dicom_uneven_spacing(p):
    folder = _slices(p, shift_from=9)
    problem = (
        "DICOM slice spacing is not uniform: gaps from 2.50 to 3.00 mm (median 2.50 mm, tolerance 0.025 mm)"
    )
    return p.register(folder), _moving_error(folder, problem)


# ---------------------------------------------------------------------------- degenerate geometry
@case
def spacing_too_fine(p):
    path = _write(_image(p.moving_array, spacing=(0.005, 2.0, 2.0)), p.dir / "fine.mha")
    return p.register(path), _moving_error(
        path, "spacing 0.005x2x2 mm is outside 0.01-50 mm (wrong units in the header?)"
    )


@case
def spacing_too_coarse(p):
    path = _write(_image(p.moving_array, spacing=(2.0, 2.0, 80.0)), p.dir / "coarse.mha")
    return p.register(path), _moving_error(
        path, "spacing 2x2x80 mm is outside 0.01-50 mm (wrong units in the header?)"
    )


def _nrrd_with_directions(p, name: str, directions: bytes) -> Path:
    path = _write(_image(p.moving_array), p.dir / name)
    data = path.read_bytes()
    assert b"space directions: (2,0,0) (0,2,0) (0,0,2)" in data
    path.write_bytes(data.replace(b"(2,0,0) (0,2,0) (0,0,2)", directions, 1))
    return path


@case
def direction_skewed(p):
    path = _nrrd_with_directions(p, "skew.nrrd", b"(2,0,0) (1,2,0) (0,0,2)")
    deviation = 1 / np.sqrt(5)  # cosine between (1,0,0) and (1,2,0)/|(1,2,0)|
    problem = (
        f"direction matrix is not orthonormal (largest deviation of D^T D from the identity: {deviation:.3f}): "
        "the grid axes are skewed or scaled"
    )
    return p.register(path), _moving_error(path, problem)


@case
def direction_singular(p):
    path = _nrrd_with_directions(p, "singular.nrrd", b"(2,0,0) (2,0,0) (0,0,2)")
    problem = "direction matrix is singular (determinant 0): the grid axes are not independent"
    return p.register(path), _moving_error(path, problem)


@case
def too_small_for_pyramid(p):
    path = _write(_image(_blobs((18, 20, 6))), p.dir / "small.nii.gz")
    problem = (
        "size 6x20x18 voxels is too small for the registration pyramid (at least 8 voxels along each axis)"
    )
    return p.register(fixed=path), [f"rlreg: error: fixed image '{path}': {problem}"]


# ---------------------------------------------------------------------------- images that do not overlap
def _far_moving(p, spacing=(2.0, 2.0, 2.0), name="far.nii.gz") -> tuple[Path, str]:
    image = _image(p.moving_array, spacing=spacing, origin=(980.0, 10.0, 5.0))  # 1000 mm from the fixed
    path = _write(image, p.dir / name)
    fixed = sitk.ReadImage(str(p.fixed))
    centre = [
        np.asarray(im.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in im.GetSize()]))
        for im in (fixed, image)
    ]
    problem = (
        "does not overlap the fixed image: 0.0 % of the fixed image's foreground lies on the moving image's "
        f"foreground without initialization (at least 5 % needed; image centres "
        f"{np.linalg.norm(centre[0] - centre[1]):.0f} mm apart); use the affine pre-alignment, or a "
        "rigid/affine initial transform that brings them together"
    )
    return path, problem


@case
def no_overlap_without_affine(p):
    path, problem = _far_moving(p)
    assert "centres 1000 mm apart" in problem
    return p.register(path, "--initialization", "none"), _moving_error(path, problem)


@case
def thick_slices_warn_then_no_overlap(p):
    """A 12:1 voxel is a warning (the run would go on); the missing overlap then stops it."""
    path, problem = _far_moving(p, spacing=(0.5, 0.5, 6.0), name="thick.nii.gz")
    warning = (
        f"rlreg: warning: moving image '{path}': voxels are 12.0x thicker along axis k (6 mm) than along "
        "the finest axis (0.5 mm): the result will be coarse along k"
    )
    return p.register(path, "--initialization", "none"), [warning, *_moving_error(path, problem)]


# ---------------------------------------------------------------------------- outputs onto inputs
@case
def warped_onto_moving_with_overwrite(p):
    """The issue's case: --warped moving.nii.gz --overwrite replaced the user's input."""
    argv = p.register(None, "--warped", p.moving, "--overwrite")
    return argv, [
        f"rlreg: error: --warped '{p.moving}': is the same file as the moving image '{p.moving}'; {NEVER}"
    ]


@case
def warped_onto_moving_without_overwrite(p):
    argv = p.register(None, "--warped", p.moving)
    return argv, [
        f"rlreg: error: --warped '{p.moving}': is the same file as the moving image '{p.moving}'; {NEVER}"
    ]


@case
def displacement_through_symlink_onto_fixed(p):
    link = p.dir / "link.nii.gz"
    link.symlink_to(p.fixed)
    argv = p.register(None, "--displacement", link, "--overwrite")
    return argv, [
        f"rlreg: error: --displacement '{link}': is the same file as the fixed image '{p.fixed}'; {NEVER}"
    ]


@case
def qc_onto_input_given_as_symlink(p):
    link = p.dir / "moving_link.nii.gz"
    link.symlink_to(p.moving)
    argv = p.register(link, "--qc", p.moving, "--overwrite")
    return argv, [f"rlreg: error: --qc '{p.moving}': is the same file as the moving image '{link}'; {NEVER}"]


@case
def weight_map_onto_hard_linked_labels(p):
    hard = p.dir / "hard.nii.gz"
    os.link(p.fixed_labels, hard)
    labels = ["--fixed-labels", p.fixed_labels, "--moving-labels", p.moving_labels]
    argv = p.register(None, *labels, "--weight-map", hard, "--overwrite")
    expected = f"rlreg: error: --weight-map '{hard}': is the same file as the fixed labels '{p.fixed_labels}'; {NEVER}"
    return argv, [expected]


@case
def report_onto_moving_labels(p):
    labels = ["--fixed-labels", p.fixed_labels, "--moving-labels", p.moving_labels]
    argv = p.register(None, *labels, "--report", p.moving_labels, "--overwrite")
    expected = f"rlreg: error: --report '{p.moving_labels}': is the same file as the moving labels '{p.moving_labels}'; {NEVER}"
    return argv, [expected]


@case
def warped_onto_the_raw_file_of_an_mhd(p):
    path = _write(_image(p.moving_array), p.dir / "m.mhd")
    raw = p.dir / "m.raw"
    argv = p.register(path, "--warped", raw, "--overwrite")
    return argv, [f"rlreg: error: --warped '{raw}': is the same file as the moving image '{raw}'; {NEVER}"]


@case
def transform_onto_dicom_slice(p):
    folder = _slices(p)
    target = folder / "slice003.dcm"
    argv = p.register(folder, "--qc", target, "--overwrite")
    return argv, [f"rlreg: error: --qc '{target}': is the same file as the moving image '{target}'; {NEVER}"]


@case
def two_outputs_one_path(p):
    argv = p.register(None, "--warped", p.dir / "w.nii.gz", "--displacement", p.dir / "w.nii.gz")
    return argv, [
        f"rlreg: error: --displacement '{p.dir / 'w.nii.gz'}': the same file is also given to --warped"
    ]


@case
def two_outputs_one_path_through_symlink(p):
    link = p.dir / "w_link.nii.gz"
    link.symlink_to(p.dir / "w.nii.gz")  # dangling until w.nii.gz would be written
    argv = p.register(None, "--warped", p.dir / "w.nii.gz", "--displacement", link)
    return argv, [f"rlreg: error: --displacement '{link}': the same file is also given to --warped"]


@case
def existing_output_without_overwrite(p):
    p.out.write_bytes(b"precious")
    return p.register(), [f"rlreg: error: -o/--output '{p.out}': file exists (use --overwrite to replace it)"]


@case
def output_folder_missing(p):
    out = p.dir / "nowhere" / "t.h5"
    argv = [p.fixed, p.moving, "-o", out]
    return argv, [f"rlreg: error: -o/--output '{out}': folder '{out.parent}' does not exist"]


@case
def transform_suffix(p):
    out = p.dir / "t.nii.gz"
    argv = [p.fixed, p.moving, "-o", out]
    return argv, [f"rlreg: error: -o/--output '{out}': the file name must end in .h5, .hdf5, .tfm, .txt"]


# ---------------------------------------------------------------------------- labels and options
@case
def only_fixed_labels(p):
    argv = p.register(None, "--fixed-labels", p.fixed_labels)
    return argv, ["rlreg: error: labels: give both --fixed-labels and --moving-labels, or neither"]


@case
def labels_not_integer(p):
    path = _write(_image(_blobs() * 1.5), p.dir / "soft.nii.gz")
    argv = p.register(None, "--fixed-labels", p.fixed_labels, "--moving-labels", path)
    return argv, [f"rlreg: error: moving labels '{path}': label map has non-integer values"]


@case
def labels_off_the_image_grid(p):
    path = _write(_image((_blobs() > 0.5).astype(np.int16), origin=(0.0, 0.0, 0.0)), p.dir / "off.nii.gz")
    argv = p.register(None, "--fixed-labels", path, "--moving-labels", p.moving_labels)
    problem = "label map is not on the same grid as its image (size/origin/spacing/direction)"
    return argv, [f"rlreg: error: fixed labels '{path}': {problem}"]


@case
def unknown_policy(p):
    from RLRegistrationLib.policies.registry import available_policies

    names = ", ".join(sorted(available_policies()))
    return p.register(None, "--policy", "magic"), [
        f"rlreg: error: --policy: unknown policy 'magic' (available: {names})"
    ]


@case
def uncertainty_without_samples(p):
    argv = p.register(None, "--uncertainty", p.dir / "u.nii.gz")
    problem = "--uncertainty needs --samples K > 1 (the map is the spread of K sampled trajectories)"
    return argv, [f"rlreg: error: {problem}"]


@case
def negative_steps(p):
    return p.register(None, "--steps", "-1"), [
        "rlreg: error: --steps: must be an integer from 0 to 500, got -1"
    ]


@case
def bad_memory_cap(p):
    return p.register(None, "--max-memory", "-1"), [
        "rlreg: error: --max-memory: must be a number from 0.25 to 4096, got -1"
    ]


@case
def over_the_memory_cap(p):
    estimate = estimate_peak_memory(
        sitk.ReadImage(str(p.fixed)), sitk.ReadImage(str(p.moving)), SessionOptions()
    )
    part, size = estimate.largest_part
    problem = (
        f"registering it would need about {estimate.total_bytes / GIB:.1f} GiB of memory, above the 0.3 GiB "
        f"cap ({part}: {size / GIB:.1f} GiB); write the field on the working grid (--output-grid working) or "
        "raise the cap (--max-memory)"
    )
    return p.register(None, "--max-memory", "0.3"), [f"rlreg: error: fixed image '{p.fixed}': {problem}"]


if not torch.cuda.is_available():

    @case
    def cuda_without_gpu(p):
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        problem = (
            f"CUDA was requested but no usable GPU is available (torch {torch.__version__} is {build}); "
            "use --device cpu or install a CUDA build of PyTorch"
        )
        return p.register(None, "--device", "cuda"), [f"rlreg: error: {problem}"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_exact_line_exit_2_and_nothing_written(name, tmp_path):
    argv, expected = CASES[name](Pair(tmp_path))
    before = _tree(tmp_path)
    done = _rlreg(tmp_path, *argv)
    assert done.stderr.strip().splitlines() == expected, done.stderr
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert _tree(tmp_path) == before


# ---------------------------------------------------------------------------- the same checks in the core
def test_far_apart_pair_registers_with_the_affine_the_message_suggests(tmp_path):
    """The advice of the overlap error works: with the affine pre-alignment the same pair registers."""
    pair = Pair(tmp_path)
    far, _ = _far_moving(pair)
    report = tmp_path / "r.json"
    done = _rlreg(tmp_path, pair.fixed, far, "-o", pair.out, "--steps", "2", "--report", report)
    assert done.returncode == 0, done.stderr
    import json

    steps = json.loads(report.read_text())["steps"]
    assert steps[0]["similarity_ncc"] > 0.5  # aligned by the affine stage, 1000 mm away before it


def test_session_raises_the_overlap_error_for_any_front_end(tmp_path):
    """What the Slicer Logic gets: ``RegistrationSession.prepare`` raises the same ``InputError``."""
    from RLRegistrationLib.policies.registry import make_policy
    from RLRegistrationLib.registration.session import RegistrationSession

    pair = Pair(tmp_path)
    far, problem = _far_moving(pair)
    session = RegistrationSession(
        sitk.ReadImage(str(pair.fixed)),
        sitk.ReadImage(str(far)),
        make_policy("tto"),
        SessionOptions(initialization="none", device="cpu"),
    )
    with pytest.raises(InputError) as error:
        session.prepare()
    assert str(error.value) == f"moving image: {problem}"
    # a translation that brings the images together as initial transform is enough
    initial = sitk.TranslationTransform(3, (1000.0, 0.0, 0.0))
    session = RegistrationSession(
        sitk.ReadImage(str(pair.fixed)),
        sitk.ReadImage(str(far)),
        make_policy("tto"),
        SessionOptions(initialization="none", device="cpu"),
        initial_transform=initial,
    )
    assert session.prepare().similarity > 0.5


def test_memory_estimate_of_a_ct_sized_pair_fits_by_default_on_the_working_grid():
    """Numbers of the up-front memory check for a 512x512x400 int16 pair (the images are never filled): the
    field on the fixed grid would need 8.2 GiB; by default it is written on the (smaller) working grid."""
    ct = sitk.Image([512, 512, 400], sitk.sitkInt16)
    voxels = 512 * 512 * 400
    default = estimate_peak_memory(ct, ct, SessionOptions())
    fixed = estimate_peak_memory(ct, ct, SessionOptions(output_grid="fixed"))
    working = estimate_peak_memory(ct, ct, SessionOptions(output_grid="working"))
    assert fixed.parts["the two images"] == 2 * 2 * voxels
    assert fixed.parts["the displacement field on the output grid"] == 84 * voxels  # 8.2 GiB
    for estimate in (default, fixed, working):
        assert estimate.total_bytes == sum(estimate.parts.values())
    # only where the field is written differs
    field = "the displacement field on the output grid"
    assert fixed.total_bytes - working.total_bytes == fixed.parts[field] - working.parts[field]
    assert working.parts[field] < fixed.parts[field] / 50
    assert working.total_bytes < default.total_bytes < working.total_bytes + 0.05 * GIB  # one layer more
    assert fixed.total_bytes > 4 * GIB > default.total_bytes
