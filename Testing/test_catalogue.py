"""The catalogue of issue 23: bad and borderline inputs to ``rlreg register``, ``evaluate`` and ``view``, as a
careful user tries them, each in its own folder, and signals at random moments of a run.

Every case runs the command as a real process and checks what the README promises: exit code 2 and exactly
one line ``rlreg: error: ...`` naming the file or option (or a legitimate success), no traceback, the sha256
of every file in the folder the same before and after, and no new file (no output, no temporary). The
classes: file formats, geometry, values and label maps, options, outputs and links, permissions (as an
unprivileged process), ``evaluate``, ``view`` (refused before it serves), and Ctrl-C / SIGTERM during the
imports, the run and the writes (all outputs or none, pre-existing files byte-identical). The images are
18x20x24 voxels, so a refusal costs about a second and the few runs that register a few seconds.

``Testing/test_bad_inputs.py`` holds the exact messages of the older catalogue (issue 12).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

LIB = str(Path(__file__).resolve().parents[1] / "RLRegistration")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [LIB, os.environ.get("PYTHONPATH")]))}
PYTHON = [sys.executable, "-m", "RLRegistrationLib"]
RUN = ["--device", "cpu", "--quiet"]  # appended to every register command


# ---------------------------------------------------------------------------------------------- files
def _blobs(shape=(18, 20, 24), seed=3) -> np.ndarray:
    """Smooth deterministic volume (k, j, i) in [0, ~2]: a sum of Gaussian blobs."""
    rng = np.random.default_rng(seed)
    index = np.indices(shape, dtype=np.float64)
    out = np.zeros(shape)
    for _ in range(10):
        centre = rng.uniform(0.2, 0.8, 3) * (np.asarray(shape) - 1)
        out += np.exp(-((index - centre.reshape(3, 1, 1, 1)) ** 2).sum(0) / (2 * rng.uniform(2, 4) ** 2))
    return out.astype(np.float32)


def _image(array, spacing=(2.0, 2.0, 2.0), origin=(-20.0, 10.0, 5.0), vector=False) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(spacing[: image.GetDimension()])
    image.SetOrigin(origin[: image.GetDimension()])
    return image


def _write(image: sitk.Image, path: Path, compress: bool = False) -> Path:
    sitk.WriteImage(image, str(path), compress)
    return path


def _with_nan(array: np.ndarray, value=np.nan, where=(3, 4, 5)) -> np.ndarray:
    out = array.copy()
    out[where] = value
    return out


def _nifti(path: Path, array: np.ndarray, pixdim=(2.0, 2.0, 2.0), order="<", pair=False) -> Path:
    """A NIfTI-1 file written byte by byte (``order``: byte order; ``pair``: .hdr + .img), qform and sform
    codes 0 (the spacing is ``pixdim``): headers ITK's writer never makes (big-endian, pixdim 0...)."""
    datatype = {np.dtype(np.float32): (16, 32), np.dtype(np.float64): (64, 64), np.dtype(np.int16): (4, 16)}
    code, bits = datatype[array.dtype]
    header = bytearray(348)
    struct.pack_into(order + "i", header, 0, 348)
    struct.pack_into(order + "8h", header, 40, 3, *array.shape[::-1], 1, 1, 1, 1)
    struct.pack_into(order + "hh", header, 70, code, bits)
    struct.pack_into(order + "8f", header, 76, 1.0, *pixdim, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into(order + "f", header, 108, 0.0 if pair else 352.0)
    struct.pack_into(order + "f", header, 112, 1.0)  # scl_slope
    header[344:348] = b"ni1\0" if pair else b"n+1\0"
    data = array.astype(array.dtype.newbyteorder(order)).tobytes()
    if pair:
        path.write_bytes(bytes(header))
        path.with_suffix(".img").write_bytes(data)
    else:
        content = bytes(header) + b"\0" * 4 + data
        path.write_bytes(gzip.compress(content) if path.name.endswith(".gz") else content)
    return path


def _edit_text_header(path: Path, old: bytes, new: bytes) -> Path:
    data = path.read_bytes()
    assert old in data, (old, data[:400])
    path.write_bytes(data.replace(old, new, 1))
    return path


def _dicom_series(folder: Path, array: np.ndarray) -> Path:
    """One int16 DICOM file per slice, 2 mm pixels, 2.5 mm apart."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.78"
    for k in range(array.shape[0]):
        image_slice = sitk.GetImageFromArray((1000 * array[k : k + 1]).astype(np.int16))[:, :, 0]
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.77",
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0032": f"-20\\10\\{5 + 2.5 * k:.3f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "2\\2",
        }
        for key, value in tags.items():
            image_slice.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(image_slice)
    return folder


class Folder:
    """A case's folder with a small registrable pair and label maps (written on first use)."""

    def __init__(self, path: Path):
        self.dir = path
        self.array = _blobs()
        self.labels_array = (self.array > 0.5).astype(np.int16)

    def __truediv__(self, name: str) -> Path:
        return self.dir / name

    @property
    def fixed(self) -> Path:
        path = self.dir / "fixed.nii.gz"
        return path if path.exists() else _write(_image(self.array), path)

    @property
    def moving(self) -> Path:
        path = self.dir / "moving.nii.gz"
        return path if path.exists() else _write(_image(np.roll(self.array, 1, axis=1)), path)

    @property
    def fixed_labels(self) -> Path:
        path = self.dir / "fixed_labels.nii.gz"
        return path if path.exists() else _write(_image(self.labels_array), path)

    @property
    def moving_labels(self) -> Path:
        path = self.dir / "moving_labels.nii.gz"
        return path if path.exists() else _write(_image(np.roll(self.labels_array, 1, axis=1)), path)

    def register(self, fixed=None, moving=None, *extra, out="t.h5") -> list:
        return ["register", fixed or self.fixed, moving or self.moving, "-o", self.dir / out, *extra, *RUN]

    def with_moving(self, path: Path, *extra) -> list:
        return self.register(None, path, *extra)

    def labels(self) -> list:
        return ["--fixed-labels", self.fixed_labels, "--moving-labels", self.moving_labels]

    def transform(self, name="t3d.h5", dimension=3) -> Path:
        sitk.WriteTransform(sitk.TranslationTransform(dimension, [1.0] * dimension), str(self.dir / name))
        return self.dir / name

    def evaluate(self, transform, *extra, fixed_labels=None, moving_labels=None) -> list:
        return [
            "evaluate",
            "--transform",
            transform,
            "--fixed-labels",
            fixed_labels or self.fixed_labels,
            "--moving-labels",
            moving_labels or self.moving_labels,
            "--no-hd95",
            *extra,
        ]


@dataclass
class Expect:
    """A case's command line and what must come of it. A refusal: exit code 2, one line that contains
    every text of ``names`` (the file or option) and ``problem``. A success: exit code 0, no error line,
    and the ``outputs`` written (read back)."""

    argv: list
    names: tuple = ()
    problem: str = ""
    success: bool = False
    outputs: tuple = ()
    unprivileged: bool = False
    needs_web: bool = False
    json_stdout: bool = False  # a success that prints JSON on stdout (evaluate)
    changed: tuple = field(default_factory=tuple)  # files a success may replace (its outputs)


CASES: dict[str, tuple[str, object]] = {}


def case(kind: str):
    def register(function):
        CASES[function.__name__] = (kind, function)
        return function

    return register


def refuse(argv, *names, problem="", **options) -> Expect:
    return Expect(list(argv), tuple(str(n) for n in names), problem, **options)


# ------------------------------------------------------------------------------------ formats and values
NOT_READABLE = "not a readable image"
NAN = "NaN or Inf voxels"


@case("format")
def nifti_gz_nan(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.nii.gz")
    return refuse(f.with_moving(path), "moving image", path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_nan(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.nii")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_gz_inf(f):
    path = _write(_image(_with_nan(f.array, np.inf)), f / "inf.nii.gz")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_minus_inf_and_nan(f):
    array = _with_nan(_with_nan(f.array, -np.inf, (1, 1, 1)))
    path = _write(_image(array), f / "two.nii")
    return refuse(f.with_moving(path), path, problem=f"contains 2 {NAN}")


@case("format")
def nifti_float64_nan(f):
    path = _write(_image(_with_nan(f.array.astype(np.float64))), f / "nan64.nii.gz")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_big_endian_nan(f):
    path = _nifti(f / "big.nii", _with_nan(f.array), order=">")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_hdr_img_pair_nan(f):
    path = _nifti(f / "pair.hdr", _with_nan(f.array), pair=True)
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_nan_in_the_fixed_image(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.nii.gz")
    return refuse(f.register(path), "fixed image", path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_nan_in_the_fixed_labels(f):
    path = _write(_image(_with_nan(f.labels_array.astype(np.float32))), f / "labels_nan.nii.gz")
    argv = f.register(None, None, "--fixed-labels", path, "--moving-labels", f.moving_labels)
    return refuse(argv, "fixed labels", path, problem=NAN)


@case("format")
def nifti_nan_in_a_mask(f):
    path = _write(_image(_with_nan(f.labels_array.astype(np.float32))), f / "mask_nan.nii")
    return refuse(f.register(None, None, "--fixed-mask", path), "fixed mask", path, problem=NAN)


@case("format")
def mha_nan(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.mha")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def mha_compressed_inf(f):
    path = _write(_image(_with_nan(f.array, np.inf)), f / "inf.mha", compress=True)
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nrrd_nan(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.nrrd")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nrrd_gzip_nan(f):
    path = _write(_image(_with_nan(f.array)), f / "nan_gz.nrrd", compress=True)
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def complex_fixed_image(f):
    """The issue's case: named as a problem of the moving image, after a numpy ComplexWarning."""
    path = _write(_image(f.array.astype(np.complex64) * (1 + 1j)), f / "complex.nii.gz")
    return refuse(f.register(path), "fixed image", path, problem="complex-valued voxels")


@case("format")
def complex_moving_image(f):
    path = _write(_image(f.array.astype(np.complex64)), f / "complex.nrrd")
    return refuse(f.with_moving(path), "moving image", path, problem="complex-valued voxels")


@case("format")
def text_file_named_nii_gz(f):
    (f / "notes.nii.gz").write_text("this is not an image")
    return refuse(f.with_moving(f / "notes.nii.gz"), f / "notes.nii.gz", problem=NOT_READABLE)


@case("format")
def empty_file(f):
    (f / "empty.nii").write_bytes(b"")
    return refuse(f.with_moving(f / "empty.nii"), f / "empty.nii", problem=NOT_READABLE)


@case("format")
def random_bytes_nrrd(f):
    (f / "noise.nrrd").write_bytes(np.random.default_rng(1).bytes(5000))
    return refuse(f.with_moving(f / "noise.nrrd"), f / "noise.nrrd", problem=NOT_READABLE)


@case("format")
def html_page_named_mha(f):
    (f / "page.mha").write_text("<html><body>404 Not Found</body></html>")
    return refuse(f.with_moving(f / "page.mha"), f / "page.mha", problem=NOT_READABLE)


@case("format")
def unknown_suffix(f):
    path = f / "image.xyz"
    path.write_bytes(f.moving.read_bytes())
    return refuse(f.with_moving(path), path, problem=NOT_READABLE)


@case("format")
def png_picture(f):
    path = _write(sitk.Cast(_image(255 * f.array[0] / f.array.max()), sitk.sitkUInt8), f / "slice.png")
    return refuse(f.with_moving(path), path, problem="a 3D image is required, this one is 2D")


@case("format")
def image_4d(f):
    path = _write(sitk.GetImageFromArray(np.stack([f.array] * 2), isVector=False), f / "four.nii.gz")
    return refuse(f.with_moving(path), path, problem="a 3D image is required, this one is 4D")


@case("format")
def vector_image(f):
    path = _write(_image(np.stack([f.array] * 3, -1), vector=True), f / "rgb.nrrd")
    return refuse(f.with_moving(path), path, problem="a scalar image is required")


@case("format")
def one_slice(f):
    path = _write(_image(f.array[:1]), f / "one.nrrd")
    return refuse(f.with_moving(path), path, problem="has a flat axis")


@case("format")
def constant_image(f):
    path = _write(_image(np.full_like(f.array, 7.0)), f / "const.nii.gz")
    return refuse(f.with_moving(path), path, problem="image is empty or constant")


@case("format")
def all_zero_int_image(f):
    path = _write(_image(np.zeros(f.array.shape, np.int16)), f / "zero.nrrd")
    return refuse(f.with_moving(path), path, problem="image is empty or constant")


@case("format")
def nifti_gz_cut_short(f):
    data = _write(_image(f.array), f / "full.nii.gz").read_bytes()
    (f / "full.nii.gz").unlink()
    (f / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return refuse(f.with_moving(f / "cut.nii.gz"), f / "cut.nii.gz", problem="compressed data is cut short")


@case("format")
def nifti_cut_short(f):
    data = _write(_image(f.array), f / "full.nii").read_bytes()
    (f / "full.nii").unlink()
    (f / "cut.nii").write_bytes(data[:-100])
    return refuse(f.with_moving(f / "cut.nii"), f / "cut.nii", problem="file is cut short")


@case("format")
def nrrd_header_without_data(f):
    data = _write(_image(f.array), f / "full.nrrd").read_bytes()
    (f / "full.nrrd").unlink()
    (f / "head.nrrd").write_bytes(data[: data.index(b"\n\n") + 2])
    return refuse(f.with_moving(f / "head.nrrd"), f / "head.nrrd", problem="file is cut short")


@case("format")
def mhd_without_its_raw_file(f):
    path = _write(_image(f.array), f / "m.mhd")
    (f / "m.raw").unlink()
    return refuse(f.with_moving(path), path, problem="its data file 'm.raw' is missing")


@case("format")
def gzip_crc_corrupt(f):
    data = bytearray(f.moving.read_bytes())
    data[-8] ^= 0xFF
    (f / "crc.nii.gz").write_bytes(bytes(data))
    return refuse(f.with_moving(f / "crc.nii.gz"), f / "crc.nii.gz", problem="compressed data is corrupt")


@case("format")
def folder_without_dicom_series(f):
    """The issue's case: two ITK WARNING lines came first."""
    (f / "empty").mkdir()
    return refuse(f.with_moving(f / "empty"), f / "empty", problem="folder holds no DICOM series")


@case("format")
def folder_of_junk_dcm_files(f):
    (f / "junk").mkdir()
    (f / "junk" / "a.dcm").write_bytes(np.random.default_rng(2).bytes(3000))
    (f / "junk" / "b.dcm").write_bytes(b"DICM" * 200)
    return refuse(f.with_moving(f / "junk"), f / "junk", problem="folder holds no DICOM series")


@case("format")
def dicom_series_with_a_missing_slice(f):
    folder = _dicom_series(f / "series", f.array)
    (folder / "slice007.dcm").unlink()
    return refuse(f.with_moving(folder), folder, problem="DICOM series has 1 missing slice(s)")


@case("format")
def device_file_as_input(f):
    return refuse(f.with_moving("/dev/null"), "/dev/null", problem="not a regular file")


@case("format")
def named_pipe_as_input(f):
    """A pipe nobody writes to: opening it would wait forever."""
    os.mkfifo(f / "pipe.nii")
    return refuse(f.with_moving(f / "pipe.nii"), f / "pipe.nii", problem="not a regular file")


@case("format")
def loop_of_symbolic_links(f):
    (f / "a.nii").symlink_to(f / "b.nii")
    (f / "b.nii").symlink_to(f / "a.nii")
    return refuse(f.with_moving(f / "a.nii"), f / "a.nii", problem="cannot be read")


@case("format")
def dangling_symbolic_link(f):
    (f / "gone.nii.gz").symlink_to(f / "deleted.nii.gz")
    return refuse(f.with_moving(f / "gone.nii.gz"), f / "gone.nii.gz", problem="file not found")


@case("format")
def missing_file(f):
    return refuse(f.with_moving(f / "nope.nii.gz"), f / "nope.nii.gz", problem="file not found")


@case("format")
def empty_file_name(f):
    argv = ["register", f.fixed, "", "-o", f / "t.h5", *RUN]
    return refuse(argv, "moving image", problem="the file name is empty")


# ---------------------------------------------------------------------------------------------- geometry
SPACING = "in its header"


@case("geometry")
def nifti_pixdim_zero(f):
    """The issue's case: ITK registered it on a 1 mm guess after 6 warning lines."""
    path = _nifti(f / "pix0.nii", f.array, pixdim=(0.0, 2.0, 2.0))
    return refuse(f.with_moving(path), path, "pixdim", problem="voxel spacing 0x2x2 mm")


@case("geometry")
def nifti_pixdim_negative(f):
    path = _nifti(f / "pixneg.nii", f.array, pixdim=(2.0, -2.0, 2.0))
    return refuse(f.with_moving(path), path, "pixdim", problem="voxel spacing 2x-2x2 mm")


@case("geometry")
def nifti_pixdim_nan(f):
    path = _nifti(f / "pixnan.nii", f.array, pixdim=(2.0, 2.0, float("nan")))
    return refuse(f.with_moving(path), path, "pixdim", problem="is not a positive number")


@case("geometry")
def nifti_gz_pixdim_zero_in_the_fixed_image(f):
    path = _nifti(f / "pix0.nii.gz", f.array, pixdim=(2.0, 2.0, 0.0))
    return refuse(f.register(path), "fixed image", path, problem="voxel spacing 2x2x0 mm")


@case("geometry")
def nifti_big_endian_pixdim_zero(f):
    path = _nifti(f / "big0.nii", f.array, pixdim=(0.0, 0.0, 0.0), order=">")
    return refuse(f.with_moving(path), path, problem="voxel spacing 0x0x0 mm")


@case("geometry")
def nifti_written_by_itk_with_pixdim_zero(f):
    """A header with an sform too (ITK's own files): pixdim 0 still refused."""
    path = _write(_image(f.array), f / "sform.nii")
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 80, 0.0)  # pixdim[1]
    path.write_bytes(bytes(data))
    return refuse(f.with_moving(path), path, problem="voxel spacing 0x2x2 mm")


@case("geometry")
def nrrd_zero_direction_vector(f):
    path = _write(_image(f.array), f / "zero.nrrd")
    _edit_text_header(path, b"(2,0,0) (0,2,0)", b"(0,0,0) (0,2,0)")
    return refuse(f.with_moving(path), path, "space directions", problem="voxel spacing 0x2x2 mm")


@case("geometry")
def nrrd_nan_direction_vector(f):
    path = _write(_image(f.array), f / "nandir.nrrd")
    _edit_text_header(path, b"(0,0,2)", b"(0,0,nan)")
    return refuse(f.with_moving(path), path, problem="is not a positive number")


@case("geometry")
def nrrd_spacings_zero(f):
    path = _write(_image(f.array), f / "spacings.nrrd")
    _edit_text_header(path, b"space directions: (2,0,0) (0,2,0) (0,0,2)\n", b"spacings: 2 0 2\n")
    _edit_text_header(path, b"space: left-posterior-superior\n", b"")
    _edit_text_header(path, b"space origin: (-20,10,5)\n", b"")
    return refuse(f.with_moving(path), path, "spacings", problem="voxel spacing 2x0x2 mm")


@case("geometry")
def mha_spacing_zero(f):
    path = _write(_image(f.array), f / "zero.mha")
    _edit_text_header(path, b"ElementSpacing = 2 2 2", b"ElementSpacing = 2 0 2")
    return refuse(f.with_moving(path), path, "ElementSpacing", problem="voxel spacing 2x0x2 mm")


@case("geometry")
def mha_spacing_negative(f):
    path = _write(_image(f.array), f / "neg.mha")
    _edit_text_header(path, b"ElementSpacing = 2 2 2", b"ElementSpacing = -2 2 2")
    return refuse(f.with_moving(path), path, problem="voxel spacing -2x2x2 mm")


@case("geometry")
def mhd_spacing_nan(f):
    path = _write(_image(f.array), f / "nan.mhd")
    _edit_text_header(path, b"ElementSpacing = 2 2 2", b"ElementSpacing = 2 nan 2")
    return refuse(f.with_moving(path), path, problem="is not a positive number")


@case("geometry")
def spacing_in_metres(f):
    path = _write(_image(f.array, spacing=(0.002, 0.002, 0.002)), f / "metres.mha")
    return refuse(f.with_moving(path), path, problem="outside 0.01-50 mm")


@case("geometry")
def spacing_too_coarse(f):
    path = _write(_image(f.array, spacing=(2.0, 2.0, 80.0)), f / "coarse.nrrd")
    return refuse(f.with_moving(path), path, problem="outside 0.01-50 mm")


@case("geometry")
def singular_direction(f):
    path = _write(_image(f.array), f / "singular.nrrd")
    _edit_text_header(path, b"(2,0,0) (0,2,0) (0,0,2)", b"(2,0,0) (2,0,0) (0,0,2)")
    return refuse(f.with_moving(path), path, problem="direction matrix is singular")


@case("geometry")
def skewed_direction(f):
    path = _write(_image(f.array), f / "skew.nrrd")
    _edit_text_header(path, b"(2,0,0) (0,2,0) (0,0,2)", b"(2,0,0) (1,2,0) (0,0,2)")
    return refuse(f.with_moving(path), path, problem="direction matrix is not orthonormal")


@case("geometry")
def too_small_for_the_pyramid(f):
    path = _write(_image(_blobs((18, 20, 6))), f / "small.nii.gz")
    return refuse(f.register(path), "fixed image", path, problem="too small for the registration pyramid")


@case("geometry")
def no_overlap_without_initialization(f):
    path = _write(_image(f.array, origin=(980.0, 10.0, 5.0)), f / "far.nii.gz")
    argv = f.with_moving(path, "--initialization", "none")
    return refuse(argv, "moving image", problem="does not overlap the fixed image")


# ------------------------------------------------------------------------------ label maps, masks, pairs
@case("values")
def labels_with_fractions(f):
    path = _write(_image(f.array * 1.5), f / "soft.nii.gz")
    argv = f.register(None, None, "--fixed-labels", f.fixed_labels, "--moving-labels", path)
    return refuse(argv, "moving labels", path, problem="non-integer values")


@case("values")
def labels_all_zero(f):
    path = _write(_image(np.zeros(f.array.shape, np.int16)), f / "zero_labels.nii.gz")
    argv = f.register(None, None, "--fixed-labels", path, "--moving-labels", f.moving_labels)
    return refuse(argv, "fixed labels", path, problem="holds no labels")


@case("values")
def labels_off_the_grid(f):
    path = _write(_image(f.labels_array, origin=(0.0, 0.0, 0.0)), f / "off.nii.gz")
    argv = f.register(None, None, "--fixed-labels", path, "--moving-labels", f.moving_labels)
    return refuse(argv, "fixed labels", path, problem="not on the same grid")


@case("values")
def labels_2d(f):
    path = _write(_image(f.labels_array[0]), f / "flat_labels.nrrd")
    argv = f.register(None, None, "--fixed-labels", f.fixed_labels, "--moving-labels", path)
    return refuse(argv, "moving labels", path, problem="a 3D image is required")


@case("values")
def only_the_fixed_labels(f):
    return refuse(f.register(None, None, "--fixed-labels", f.fixed_labels), "--moving-labels")


@case("values")
def empty_mask(f):
    path = _write(_image(np.zeros(f.array.shape, np.uint8)), f / "mask.nii.gz")
    return refuse(f.register(None, None, "--moving-mask", path), "moving mask", path, problem="empty")


@case("values")
def mask_with_fractions(f):
    path = _write(_image(f.array), f / "soft_mask.nii.gz")
    return refuse(f.register(None, None, "--fixed-mask", path), "fixed mask", path, problem="non-integer")


@case("values")
def fixed_and_moving_are_one_file(f):
    return refuse(f.register(f.fixed, f.fixed), "moving image", "fixed image", problem="is the same file")


@case("values")
def fixed_and_moving_one_file_through_a_link(f):
    (f / "link.nii.gz").symlink_to(f.fixed)
    return refuse(f.register(f.fixed, f / "link.nii.gz"), f / "link.nii.gz", problem="is the same file")


# ----------------------------------------------------------------------------------------------- options
OPTION_CASES = {
    "steps_huge": (["--steps", "100000"], "--steps", "must be an integer from 0 to 500, got 100000"),
    "steps_negative": (["--steps", "-1"], "--steps", "got -1"),
    "steps_not_an_integer": (["--steps", "1.5"], "--steps", "invalid int value"),
    "iterations_zero": (["--iterations", "0"], "--iterations", "must be an integer from 1 to 500"),
    "iterations_negative": (["--iterations", "-5"], "--iterations", "got -5"),
    "regularization_nan": (["--regularization", "nan"], "--regularization", "got nan"),
    "regularization_inf": (["--regularization", "inf"], "--regularization", "got inf"),
    "regularization_negative": (["--regularization", "-1"], "--regularization", "from 0 to 100"),
    "spacing_zero": (["--spacing", "0"], "--spacing", "from 0.25 to 20, got 0"),
    "spacing_negative": (["--spacing", "-2"], "--spacing", "got -2"),
    "spacing_nan": (["--spacing", "nan"], "--spacing", "got nan"),
    "max_memory_zero": (["--max-memory", "0"], "--max-memory", "got 0"),
    "max_memory_inf": (["--max-memory", "inf"], "--max-memory", "got inf"),
    "samples_zero": (["--samples", "0"], "--samples", "got 0"),
    "temperature_negative": (["--temperature", "-1"], "--temperature", "got -1"),
    "seed_negative": (["--seed", "-1"], "--seed", "got -1"),
    "quality_unknown": (["--quality", "best"], "--quality", "invalid choice"),
    "similarity_unknown": (["--similarity", "mi"], "--similarity", "invalid choice"),
    "initialization_unknown": (["--initialization", "bspline"], "--initialization", "invalid choice"),
    "device_unknown": (["--device", "tpu"], "--device", "got 'tpu'"),
    "device_bad_index": (["--device", "cuda:x"], "--device", "got 'cuda:x'"),
    "policy_unknown": (["--policy", "magic"], "--policy", "unknown policy 'magic'"),
    "samples_with_tto": (["--samples", "2"], "--samples", "does not sample trajectories"),
    "no_affine_contradicts": (["--no-affine", "--initialization", "affine"], "--no-affine", "contradicts"),
    "unknown_option": (["--bogus"], "--bogus", "unrecognized arguments"),
    "option_without_value": (["--steps"], "--steps", "expected one argument"),
    "uncertainty_without_samples": (["--uncertainty", "u.nii.gz"], "--uncertainty", "needs --samples K > 1"),
}


def _option_case(extra, name, problem):
    def make(f):
        argv = ["register", f / "fixed.nii.gz", f / "moving.nii.gz", "-o", f / "t.h5", *extra]
        if "--device" not in extra:
            argv += ["--device", "cpu"]
        # refused before any image is read: the images need not even exist
        return refuse(argv, name, problem=problem)

    return make


for _name, (_extra, _option, _problem) in OPTION_CASES.items():
    CASES[f"option_{_name}"] = ("options", _option_case(_extra, _option, _problem))


@case("options")
def missing_output_option(f):
    return refuse(["register", f.fixed, f.moving], "-o/--output", problem="required")


@case("options")
def no_arguments_at_all(f):
    return refuse(["register"], "required")


@case("options")
def config_file_missing(f):
    return refuse(f.register(None, None, "--config", f / "run.json"), "run.json", problem="cannot be read")


@case("options")
def config_file_not_json(f):
    (f / "run.json").write_text("{steps: 3")
    return refuse(f.register(None, None, "--config", f / "run.json"), "run.json", problem="not valid JSON")


@case("options")
def config_file_unknown_setting(f):
    (f / "run.json").write_text('{"stepz": 3}')
    return refuse(f.register(None, None, "--config", f / "run.json"), "run.json", problem="'stepz'")


@case("options")
def config_file_steps_out_of_range(f):
    (f / "run.json").write_text('{"steps": 100000}')
    return refuse(f.register(None, None, "--config", f / "run.json"), "--steps", problem="got 100000")


@case("options")
def config_file_is_a_list(f):
    (f / "run.json").write_text("[1, 2]")
    return refuse(f.register(None, None, "--config", f / "run.json"), "run.json", problem="JSON object")


# ------------------------------------------------------------------------------------- outputs and links
NEVER = "an output never replaces an input"
OUTPUT_TYPES = {
    "transform_as_image": (["-o", "t.nii.gz"], "-o/--output", "must end in .h5, .hdf5, .tfm, .txt"),
    "transform_as_mat": (["-o", "t.mat"], "-o/--output", "must end in .h5"),  # .mat: linear only
    "warped_xyz": (["--warped", "w.xyz"], "--warped", "must end in .nii.gz, .nii, .nrrd, .mha"),
    "warped_mhd": (["--warped", "w.mhd"], "--warped", "must end in .nii.gz"),
    "displacement_h5": (["--displacement", "d.h5"], "--displacement", "must end in .nii.gz"),
    "qc_nifti": (["--qc", "q.nii.gz"], "--qc", "must end in .png, .jpg, .jpeg, .pdf, .svg"),
    "report_txt": (["--report", "r.txt"], "--report", "must end in .json"),
    "save_config_yaml": (["--save-config", "c.yaml"], "--save-config", "must end in .json"),
    "weight_map_tfm": (["--weight-map", "w.tfm"], "--weight-map", "must end in .nii.gz"),
}


def _output_type_case(extra, name, problem):
    def make(f):
        if extra[0] == "-o":
            argv = [
                "register",
                f / "fixed.nii.gz",
                f / "moving.nii.gz",
                "-o",
                f / extra[1],
                "--device",
                "cpu",
            ]
        else:
            argv = [
                "register",
                f / "fixed.nii.gz",
                f / "moving.nii.gz",
                "-o",
                f / "t.h5",
                extra[0],
                f / extra[1],
            ]
        return refuse(argv, name, problem=problem)

    return make


for _name, (_extra, _option, _problem) in OUTPUT_TYPES.items():
    CASES[f"output_{_name}"] = ("outputs", _output_type_case(_extra, _option, _problem))


@case("outputs")
def output_folder_missing(f):
    argv = f.register(out="nowhere/t.h5")
    return refuse(argv, "-o/--output", f / "nowhere", problem="does not exist")


@case("outputs")
def output_is_a_folder(f):
    (f / "t.h5").mkdir()
    return refuse(f.register(None, None, "--overwrite"), f / "t.h5", problem="is a folder")


@case("outputs")
def output_folder_is_a_file(f):
    (f / "notdir").write_text("x")
    return refuse(f.register(out="notdir/t.h5"), "notdir", problem="is not a folder")


@case("outputs")
def existing_output_without_overwrite(f):
    (f / "t.h5").write_bytes(b"precious")
    return refuse(f.register(), "-o/--output", problem="file exists (use --overwrite")


@case("outputs")
def existing_warped_without_overwrite(f):
    (f / "w.nii.gz").write_bytes(b"precious")
    return refuse(f.register(None, None, "--warped", f / "w.nii.gz"), "--warped", problem="file exists")


@case("outputs")
def dangling_link_as_output(f):
    (f / "t.h5").symlink_to(f / "elsewhere.h5")
    return refuse(f.register(), "-o/--output", problem="file exists")


@case("outputs")
def loop_of_links_as_output(f):
    (f / "t.h5").symlink_to(f / "t.h5")
    return refuse(f.register(None, None, "--overwrite"), "-o/--output", problem="a loop of symbolic links")


@case("outputs")
def warped_onto_the_moving_image(f):
    argv = f.register(None, None, "--warped", f.moving, "--overwrite")
    return refuse(argv, "--warped", "moving image", problem=NEVER)


@case("outputs")
def displacement_onto_fixed_through_a_link(f):
    (f / "link.nii.gz").symlink_to(f.fixed)
    argv = f.register(None, None, "--displacement", f / "link.nii.gz", "--overwrite")
    return refuse(argv, "--displacement", "fixed image", problem=NEVER)


@case("outputs")
def weight_map_onto_hard_linked_labels(f):
    os.link(f.fixed_labels, f / "hard.nii.gz")
    argv = f.register(None, None, *f.labels(), "--weight-map", f / "hard.nii.gz", "--overwrite")
    return refuse(argv, "--weight-map", "fixed labels", problem=NEVER)


@case("outputs")
def warped_onto_the_raw_file_of_an_mhd(f):
    path = _write(_image(np.roll(f.array, 1, axis=1)), f / "m.mhd")
    argv = f.register(None, path, "--warped", f / "m.raw", "--overwrite")
    return refuse(argv, "--warped", problem=NEVER)


@case("outputs")
def two_outputs_one_file(f):
    argv = f.register(None, None, "--warped", f / "w.nii.gz", "--displacement", f / "w.nii.gz")
    return refuse(argv, "--displacement", "--warped", problem="the same file is also given")


@case("outputs")
def two_outputs_one_file_through_a_link(f):
    (f / "w_link.nii.gz").symlink_to(f / "w.nii.gz")
    argv = f.register(None, None, "--warped", f / "w.nii.gz", "--displacement", f / "w_link.nii.gz")
    return refuse(argv, "--displacement", problem="the same file is also given")


@case("outputs")
def transform_and_report_refused_by_the_last_output(f):
    """Only the last of several outputs is wrong: nothing at all is written."""
    argv = f.register(None, None, "--warped", f / "w.nii.gz", "--report", f / "r.json", "--qc", f / "q.tif")
    return refuse(argv, "--qc", problem="must end in .png")


# ------------------------------------------------------------------------------------------- permissions
@case("permissions")
def unreadable_moving_image(f):
    f.moving.chmod(0)
    return refuse(
        f.register(),
        "moving image",
        f.moving,
        problem="cannot be read (Permission denied)",
        unprivileged=True,
    )


@case("permissions")
def unreadable_fixed_labels(f):
    f.fixed_labels.chmod(0)
    argv = f.register(None, None, *f.labels())
    return refuse(argv, "fixed labels", problem="cannot be read (Permission denied)", unprivileged=True)


@case("permissions")
def unlistable_dicom_folder(f):
    folder = _dicom_series(f / "series", f.array)
    folder.chmod(0)
    return refuse(
        f.with_moving(folder), folder, problem="cannot be read (Permission denied)", unprivileged=True
    )


@case("permissions")
def input_in_a_folder_not_to_be_entered(f):
    (f / "locked").mkdir()
    shutil.copy(f.moving, f / "locked" / "m.nii.gz")
    (f / "locked").chmod(0o600)
    path = f / "locked" / "m.nii.gz"
    return refuse(f.with_moving(path), path, problem="cannot be read (Permission denied)", unprivileged=True)


@case("permissions")
def read_only_output_folder(f):
    """The issue's case: found at write time, with earlier outputs left behind and HDF5 diagnostics."""
    (f / "ro").mkdir()
    (f / "ro").chmod(0o555)
    argv = f.register(None, None, out="ro/t.h5")
    return refuse(
        argv, "-o/--output", f / "ro", problem="is not writable (Permission denied)", unprivileged=True
    )


@case("permissions")
def read_only_folder_of_one_output(f):
    (f / "ro").mkdir()
    (f / "ro").chmod(0o555)
    argv = f.register(None, None, "--warped", f / "ro" / "w.nii.gz", "--report", f / "r.json")
    return refuse(argv, "--warped", problem="is not writable", unprivileged=True)


@case("permissions")
def output_folder_not_to_be_entered(f):
    (f / "locked").mkdir()
    (f / "locked").chmod(0)
    argv = f.register(out="locked/t.h5")
    return refuse(argv, "-o/--output", problem="Permission denied", unprivileged=True)


@case("permissions")
def unreadable_config(f):
    (f / "run.json").write_text('{"steps": 1}')
    (f / "run.json").chmod(0)
    argv = f.register(None, None, "--config", f / "run.json")
    return refuse(argv, "run.json", problem="cannot be read (Permission denied)", unprivileged=True)


@case("permissions")
def unreadable_transform_to_evaluate(f):
    path = f.transform()
    path.chmod(0)
    return refuse(
        f.evaluate(path), "transform", path, problem="cannot be read (Permission denied)", unprivileged=True
    )


# ---------------------------------------------------------------------------------------------- evaluate
@case("evaluate")
def evaluate_corrupt_h5(f):
    """The issue's case: 25-40 lines of HDF5-DIAG."""
    data = f.transform().read_bytes()
    (f / "cut.h5").write_bytes(data[: len(data) // 2])
    (f / "t3d.h5").unlink()
    return refuse(f.evaluate(f / "cut.h5"), "transform", f / "cut.h5", problem="not a readable ITK transform")


@case("evaluate")
def evaluate_text_named_h5(f):
    (f / "t.h5").write_text("not a transform")
    return refuse(f.evaluate(f / "t.h5"), f / "t.h5", problem="not a readable ITK transform")


@case("evaluate")
def evaluate_2d_transform(f):
    """The issue's case: a traceback."""
    path = f.transform("t2d.h5", dimension=2)
    return refuse(f.evaluate(path), path, problem="a 3D transform is required, this one is 2D")


@case("evaluate")
def evaluate_2d_tfm(f):
    path = f.transform("t2d.tfm", dimension=2)
    return refuse(f.evaluate(path), path, problem="this one is 2D")


@case("evaluate")
def evaluate_transform_is_a_folder(f):
    (f / "t.h5").mkdir()
    return refuse(f.evaluate(f / "t.h5"), f / "t.h5", problem="is a folder")


@case("evaluate")
def evaluate_missing_transform(f):
    return refuse(f.evaluate(f / "none.h5"), f / "none.h5", problem="file not found")


@case("evaluate")
def evaluate_labels_word(f):
    return refuse(f.evaluate(f.transform(), "--labels", "cortex"), "--labels", problem="got 'cortex'")


@case("evaluate")
def evaluate_labels_negative(f):
    return refuse(f.evaluate(f.transform(), "--labels", "1,-2"), "--labels", problem="positive integers")


@case("evaluate")
def evaluate_label_in_neither_map(f):
    """Scored as NaN (and invalid JSON) before."""
    return refuse(f.evaluate(f.transform(), "--labels", "99"), "--labels", problem="label 99 is in neither")


@case("evaluate")
def evaluate_maps_share_no_label(f):
    path = _write(_image((f.labels_array * 7).astype(np.int16)), f / "sevens.nii.gz")
    return refuse(f.evaluate(f.transform(), moving_labels=path), path, problem="shares no label")


@case("evaluate")
def evaluate_image_as_labels(f):
    return refuse(f.evaluate(f.transform(), fixed_labels=f.fixed), "fixed labels", problem="non-integer")


@case("evaluate")
def evaluate_nan_nifti_labels(f):
    path = _write(_image(_with_nan(f.labels_array.astype(np.float32))), f / "nan_labels.nii")
    return refuse(f.evaluate(f.transform(), moving_labels=path), "moving labels", path, problem=NAN)


@case("evaluate")
def evaluate_without_transform_option(f):
    return refuse(["evaluate", "--fixed-labels", f.fixed_labels], "--transform", problem="required")


# -------------------------------------------------------------------------------------------------- view
@case("view")
def view_file_that_is_not_an_image(f):
    """The issue's case: served a page with an empty Fixed field."""
    (f / "notimage.nii.gz").write_text("hello")
    argv = ["view", f / "notimage.nii.gz", f.moving]
    return refuse(argv, "fixed image", f / "notimage.nii.gz", problem=NOT_READABLE, needs_web=True)


@case("view")
def view_fixed_equals_moving(f):
    return refuse(["view", f.fixed, f.fixed], "moving image", problem="is the same file", needs_web=True)


@case("view")
def view_nan_nifti(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.nii.gz")
    return refuse(["view", f.fixed, path], "moving image", path, problem=NAN, needs_web=True)


@case("view")
def view_label_map_that_is_an_image(f):
    argv = ["view", f.fixed, f.moving, "--fixed-labels", f.fixed_labels, "--moving-labels", f.moving]
    return refuse(argv, "moving labels", problem="non-integer values", needs_web=True)


@case("view")
def view_one_label_map_twice(f):
    argv = ["view", f.fixed, f.moving, "--fixed-labels", f.fixed_labels, "--moving-labels", f.fixed_labels]
    return refuse(argv, "moving labels", problem="is the same file", needs_web=True)


@case("view")
def view_missing_moving(f):
    return refuse(
        ["view", f.fixed, f / "nope.nii.gz"], f / "nope.nii.gz", problem="file not found", needs_web=True
    )


@case("view")
def view_steps_out_of_range(f):
    return refuse(["view", "--steps", "100000"], "--steps", problem="got 100000")


@case("view")
def view_regularization_nan(f):
    return refuse(["view", "--regularization", "nan"], "--regularization", problem="got nan")


@case("view")
def view_half_pair(f):
    return refuse(["view", f.fixed], "FIXED and MOVING")


@case("view")
def view_port_out_of_range(f):
    return refuse(["view", "--port", "70000"], "--port", problem="got 70000")


@case("view")
def view_data_dir_missing(f):
    return refuse(["view", "--data-dir", f / "none"], "--data-dir", problem="No such file", needs_web=True)


# -------------------------------------------------------------------------------- legitimate successes
@case("success")
def success_every_output_with_upper_case_suffixes(f):
    """ITK picks formats by lower-case suffixes only: T.H5 and W.NII.GZ are written and renamed."""
    names = ("T.H5", "W.NII.GZ", "D.MHA", "Q.PNG", "R.JSON")
    more = [
        "--warped",
        f / names[1],
        "--displacement",
        f / names[2],
        "--qc",
        f / names[3],
        "--report",
        f / names[4],
    ]
    return Expect(f.register(None, None, "--steps", "1", *more, out=names[0]), success=True, outputs=names)


@case("success")
def success_text_transform_replacing_an_old_one(f):
    (f / "t.tfm").write_text("old")
    argv = f.register(None, None, "--steps", "1", "--overwrite", out="t.tfm")
    return Expect(argv, success=True, outputs=("t.tfm",), changed=("t.tfm",))


@case("success")
def success_evaluate(f):
    return Expect(f.evaluate(f.transform()), success=True, json_stdout=True)


# ------------------------------------------------------------------------------------------------ running
def _tree(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: (link target, sha256 of a regular file, mode)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        target = os.readlink(path) if path.is_symlink() else None
        digest = None
        if not path.is_symlink() and path.is_file():
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                digest = "unreadable"
        out[str(path.relative_to(folder))] = (target, digest, path.lstat().st_mode)
    return out


def _read_back(path: Path) -> None:
    """The output is complete: read by ITK (under its name in lower case, which ITK's readers need)."""
    assert path.is_file(), path
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name.lower()
        shutil.copy(path, copy)
        name = copy.name
        if name.endswith((".h5", ".tfm", ".txt")):
            assert sitk.ReadTransform(str(copy)).GetDimension() == 3
        elif name.endswith((".nii.gz", ".nii", ".mha", ".nrrd")):
            assert sitk.ReadImage(str(copy)).GetDimension() == 3
        elif name.endswith(".json"):
            json.loads(copy.read_text())
        elif name.endswith(".png"):
            assert copy.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _unprivileged() -> tuple[list[str], str] | None:
    """A command prefix that runs a process without root's way past file permissions, and what it is:
    nothing for an ordinary user; as root, ``setpriv`` with every capability dropped (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH... and ``noroot``: the executed Python does not get them back), which is held to
    the owner's permission bits of the files this test makes exactly as an ordinary user is. (An account of
    its own would not do here: this Python lives under /root, mode 700, on CI and on the development
    machines, so another user cannot even start it.) None when neither is possible."""
    if os.geteuid() != 0:
        return [], "an ordinary user"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--securebits=+noroot,+noroot_locked", "--bounding-set=-all", "--inh-caps=-all", "--"]
    try:
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", "open('/proc/1/environ','rb').read()"],
            capture_output=True,
            timeout=30,
        )
    except OSError:
        return None
    if probe.returncode == 0:  # still allowed to read another process's secrets: not unprivileged
        return None
    return prefix, "root without capabilities"


UNPRIVILEGED = _unprivileged()


def _web_extra_missing() -> bool:
    from RLRegistrationWeb import missing_dependencies

    return bool(missing_dependencies())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(folder: Path, argv: list, prefix=(), timeout=120) -> subprocess.CompletedProcess:
    if argv and argv[0] == "view" and "--port" not in map(str, argv):
        argv = [*argv, "--port", _free_port()]
    return subprocess.run(
        [*prefix, *PYTHON, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=folder,
    )


@dataclass
class Outcome:
    """What one case did: its expectation, the process, and its folder's entries before and after."""

    expect: Expect
    folder: Path
    done: subprocess.CompletedProcess | None = None
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    skip: str | None = None


def _prepare(name: str, folder: Path) -> Outcome:
    folder.mkdir(parents=True)
    expect = CASES[name][1](Folder(folder))
    outcome = Outcome(expect, folder)
    if expect.needs_web and _web_extra_missing():
        outcome.skip = "the web extra is not installed (rlreg view refuses before it reads any file)"
    if expect.unprivileged and UNPRIVILEGED is None:
        outcome.skip = "no way to run a process without root's file permissions here (setpriv missing)"
    return outcome


def _execute(outcome: Outcome) -> Outcome:
    if outcome.skip:
        return outcome
    prefix = UNPRIVILEGED[0] if outcome.expect.unprivileged else []
    outcome.before = _tree(outcome.folder)
    try:
        outcome.done = _run(outcome.folder, outcome.expect.argv, prefix)
        outcome.after = _tree(outcome.folder)
    finally:
        for path in [outcome.folder, *outcome.folder.rglob("*")]:  # what a permission case locked
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
    return outcome


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """The cases this session selected, each in a folder of its own, prepared one after the other and run
    a few at a time (each case is its own process; most of a refusal's second is its imports)."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.name.startswith("test_catalogue_case[")
    ]
    base = tmp_path_factory.mktemp("catalogue")
    prepared = {name: _prepare(name, base / name) for name in selected}
    pool = ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1))
    futures = {name: pool.submit(_execute, outcome) for name, outcome in prepared.items()}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_catalogue_case(name, outcomes):
    outcome = outcomes[name].result(timeout=600)
    if outcome.skip:
        pytest.skip(outcome.skip)
    expect, done, before, after, folder = (
        outcome.expect,
        outcome.done,
        outcome.before,
        outcome.after,
        outcome.folder,
    )
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    if expect.success:
        assert done.returncode == 0, done.stderr
        assert not [line for line in lines if not line.startswith("rlreg: warning:")], done.stderr
        for output in expect.outputs:
            _read_back(folder / output)
        if expect.json_stdout:
            assert json.loads(done.stdout)["dice"] >= 0
        new = set(after) - set(before) - set(expect.outputs)
        assert not new, new  # no temporary left
        changed = {k for k in before if before[k] != after.get(k)} - set(expect.changed)
        assert not changed, changed
        return
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("rlreg: error: "), lines[0]
    for text in (*expect.names, expect.problem):
        assert text in lines[0], (text, lines[0])
    assert after == before  # no input changed, nothing written, no temporary left


def test_the_catalogue_covers_every_class_with_100_cases():
    kinds = [kind for kind, _ in CASES.values()]
    assert len(kinds) >= 100
    for kind in ("format", "geometry", "values", "options", "outputs", "permissions", "evaluate", "view"):
        assert kinds.count(kind) >= 5, kind


def test_refusing_an_option_reads_no_image_and_takes_under_3_s(tmp_path):
    """The images do not exist: a refusal of an option or an output comes before any file is read, and
    before torch is imported."""
    for extra in (["--steps", "100000"], ["--qc", tmp_path / "q.nii.gz"], ["-o", tmp_path / "t.xyz"]):
        argv = [
            "register",
            tmp_path / "fixed.nii.gz",
            tmp_path / "moving.nii.gz",
            "-o",
            tmp_path / "t.h5",
            *extra,
        ]
        start = time.perf_counter()
        done = _run(tmp_path, argv)
        seconds = time.perf_counter() - start
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert seconds < 3.0, seconds
    code = (
        "import sys; from RLRegistrationLib.frontends.cli import main; "
        "code = main(['register', 'f.nii.gz', 'm.nii.gz', '-o', 't.h5', '--steps', '100000']); "
        "print('torch' in sys.modules); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout.split() == ["False"], (done.stdout, done.stderr)


# ------------------------------------------------------------------------------------------------ signals
OUTPUTS = ("t.h5", "w.nii.gz", "d.nii.gz", "r.json")


def _outputs_argv(f: Folder, steps: int = 2) -> list:
    return [
        "register", f.fixed, f.moving, "-o", f / OUTPUTS[0], "--warped", f / OUTPUTS[1],
        "--displacement", f / OUTPUTS[2], "--report", f / OUTPUTS[3], "--overwrite",
        "--steps", str(steps), *RUN,
    ]  # fmt: skip


def _check_all_or_nothing(f: Folder, before: dict, done_code: int, stderr: str, signum: int) -> str:
    """The promise after a signal: one line, exit code 128 + the signal (or 0: finished first), every
    output new and valid or every output as before, no temporary file. Returns what happened."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and "FATAL" not in stderr, stderr
    after = _tree(f.dir)
    assert set(after) == set(before), set(after) ^ set(before)  # nothing new: no temporary, no backup
    replaced = [name for name in OUTPUTS if after[name] != before[name]]
    if done_code == 0:
        assert not lines and len(replaced) == len(OUTPUTS), stderr
        return "finished"
    assert done_code == 128 + signum, (done_code, stderr)
    assert len(lines) == 1, stderr
    if lines[0] == "rlreg: cancelled after all outputs were written (they are complete)":
        assert len(replaced) == len(OUTPUTS), replaced
        for name in OUTPUTS:
            _read_back(f / name)
        return "written"
    assert lines[0] == "rlreg: cancelled, nothing written", lines[0]
    assert not replaced, replaced  # the old outputs byte-identical
    return "nothing"


def _old_outputs(f: Folder) -> None:
    """Outputs of an earlier run (and the inputs, before the folder's checksums are taken)."""
    f.fixed, f.moving  # noqa: B018 - written on first use
    for name in OUTPUTS:
        (f / name).write_bytes(b"an earlier run's " + name.encode())


def _wait_for_the_handlers(process: subprocess.Popen) -> None:
    """Until the command has set its SIGTERM handler (``/proc``: caught signals), its first step: before
    it, in Python's own start (about 0.03 s), a signal meets Python's defaults."""
    status = Path(f"/proc/{process.pid}/status")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            caught = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            time.sleep(0.2)  # no /proc here: go by the clock
            return
        if int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.002)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_at_random_moments_of_a_run_leaves_all_outputs_or_none(signum, tmp_path):
    """Signals from the heavy imports (right after the handlers are set, and 0.3 s later) to the end of a
    small run with four outputs replacing older ones."""
    rng = random.Random(23 + signum)
    seen = set()
    for attempt, delay in enumerate([0.0, 0.3] + [rng.uniform(0.8, 5.0) for _ in range(3)]):
        f = Folder(tmp_path / f"run{attempt}")
        f.dir.mkdir()
        _old_outputs(f)
        before = _tree(f.dir)
        process = subprocess.Popen(
            [*PYTHON, *map(str, _outputs_argv(f))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=ENV, cwd=f.dir,
        )  # fmt: skip
        _wait_for_the_handlers(process)
        time.sleep(delay)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        seen.add(_check_all_or_nothing(f, before, process.returncode, stderr, signum))
    assert "nothing" in seen


#: runs ``rlreg`` with the writes slowed down: each output writer waits PAUSE_S first, and each rename into
#: place (``os.replace``) too when RENAMES is set; "WRITING" / "RENAMING" on stdout say when
SLOW_WRITES = """
import os, sys, time
import RLRegistrationLib.io.outputs as outputs
PAUSE_S, RENAMES = float(sys.argv[1]), sys.argv[2] == "renames"
writer = outputs.run_writer
def slow_writer(write, temporary):
    def slow(path):
        print("WRITING", flush=True)
        time.sleep(PAUSE_S)
        write(path)
    writer(slow, temporary)
outputs.run_writer = slow_writer
replace = os.replace
def slow_replace(a, b):
    if RENAMES and ".rlreg-" in str(a) and ".rlreg-" not in str(b):  # out of the staging folder
        print("RENAMING", flush=True)
        time.sleep(PAUSE_S)
    replace(a, b)
os.replace = slow_replace
sys.argv = ["rlreg", *sys.argv[3:]]
from RLRegistrationLib.frontends.cli import entry_point
sys.exit(entry_point())
"""


def _slow_run(f: Folder, signals: list[int], marker: str, pause: float, renames: bool) -> tuple[int, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITES, str(pause), "renames" if renames else "-", *map(str, _outputs_argv(f, 1))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=f.dir,
    )  # fmt: skip
    for line in process.stdout:
        if marker in line:
            break
    for signum in signals:
        process.send_signal(signum)
        time.sleep(0.05)
    process.stdout.read()
    return process.wait(timeout=60), process.stderr.read()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"])
def test_a_signal_during_the_writes_leaves_the_old_outputs(signum, tmp_path):
    """The issue's case: "cancelled, nothing written" while a new .h5 was left and an old warped image
    replaced. Here the second output is being written (its writer waits 3 s): the answer comes at once,
    nothing new is left, the older outputs are byte-identical."""
    f = Folder(tmp_path)
    _old_outputs(f)
    before = _tree(tmp_path)
    code, stderr = _slow_run(f, [signum], "WRITING", 3.0, renames=False)
    assert _check_all_or_nothing(f, before, code, stderr, signum) == "nothing"


def test_cancelling_a_long_write_answers_at_once(tmp_path):
    """Ctrl-C while a writer is in a long call: the command ends within a second, not when the write ends."""
    f = Folder(tmp_path)
    _old_outputs(f)
    before = _tree(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITES, "30", "-", *map(str, _outputs_argv(f, 1))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
    )  # fmt: skip
    for line in process.stdout:
        if "WRITING" in line:
            break
    sent = time.perf_counter()
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=60)
    assert time.perf_counter() - sent < 1.5
    assert _check_all_or_nothing(f, before, code, process.stderr.read(), signal.SIGINT) == "nothing"


def test_a_signal_while_the_outputs_are_put_in_place_is_held_until_all_are(tmp_path):
    """Ctrl-C, then SIGTERM, during the first rename: both wait until every output is in place; the
    command says the outputs are complete (exit code of the first signal), and no backup is left."""
    f = Folder(tmp_path)
    _old_outputs(f)
    before = _tree(tmp_path)
    code, stderr = _slow_run(f, [signal.SIGINT, signal.SIGTERM], "RENAMING", 0.5, renames=True)
    assert _check_all_or_nothing(f, before, code, stderr, signal.SIGINT) == "written"


def test_two_quick_signals_during_the_writes_still_leave_one_line_and_nothing(tmp_path):
    f = Folder(tmp_path)
    _old_outputs(f)
    before = _tree(tmp_path)
    code, stderr = _slow_run(f, [signal.SIGINT, signal.SIGINT, signal.SIGTERM], "WRITING", 3.0, renames=False)
    assert _check_all_or_nothing(f, before, code, stderr, signal.SIGINT) == "nothing"
