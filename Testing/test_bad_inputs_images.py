"""Catalogue of bad inputs, the images: each case runs ``rlreg register`` as a real subprocess on an image it
cannot use (unreadable or unusable, a cut short or corrupt file, a DICOM series with a missing, duplicated
or unevenly spaced slice, degenerate geometry, no overlap with the fixed image) and checks the exact
one-line message, exit code 2, and that no file was written or changed (checksums of every file in the
test folder, inputs and pre-existing outputs, before and after); then the overlap check in the core: with
the affine pre-alignment the message suggests the pair registers, and ``RegistrationSession`` raises the
same error for any front end."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from bad_inputs_support import (  # Testing/ is on sys.path, as for conftest
    Cases,
    Pair,
    _image,
    _moving_error,
    _rlreg,
    _slices,
    check_refused,
)
from catalogue_support import _blobs, _write

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.io.sample_pair import SAMPLE_DIR
from RLRegistrationLib.registration.session import SessionOptions

NOT_READABLE = "not a readable image (unknown format or corrupt file)"

CASES = Cases()
case = CASES.case


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


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_exact_line_exit_2_and_nothing_written(name, tmp_path):
    check_refused(CASES[name], tmp_path)


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
