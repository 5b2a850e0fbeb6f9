"""The catalogue's machinery (issue 23): a case's folder of small images, what it expects, and how a
case runs as a real process (as an unprivileged one where it needs to be). Cases register with ``@case``."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from web_app_support import free_port

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


def _dicom_series(folder: Path, array: np.ndarray, z_positions=None) -> Path:
    """One int16 DICOM file per slice of ``array`` (k, j, i), 2 mm pixels; ``z_positions``: (k, z mm) per
    file, in order (a slice may be left out or repeated; default every slice, 2.5 mm apart from z = 5)."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.78"
    if z_positions is None:
        z_positions = [(k, 5 + 2.5 * k) for k in range(array.shape[0])]
    for number, (k, z) in enumerate(z_positions):
        image_slice = sitk.GetImageFromArray((1000 * array[k : k + 1]).astype(np.int16))[:, :, 0]
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series}.{number + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.77",
            "0020|000e": series,
            "0020|0013": str(number + 1),
            "0020|0032": f"-20\\10\\{z:.3f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "2\\2",
        }
        for key, value in tags.items():
            image_slice.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{number:03d}.dcm"))
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


def _run(folder: Path, argv: list, prefix=(), timeout=120) -> subprocess.CompletedProcess:
    if argv and argv[0] == "view" and "--port" not in map(str, argv):
        argv = [*argv, "--port", free_port()]
    return subprocess.run(
        [*prefix, *PYTHON, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=folder,
    )


NOT_READABLE = "not a readable image"
NAN = "NaN or Inf voxels"
