"""Is an image file complete and what its header says? Compressed streams read to their end, data size
against the header, the header's voxel spacing, NaN/Inf voxels of NIfTI files, and the slices of a DICOM
series (none missing or duplicated, uniform spacing).

ITK reads a cut-short ``.nii.gz`` or ``.nii`` without a word (the missing voxels become 0), reads NaN and
Inf voxels of a NIfTI file as 0 (nifticlib replaces them), takes a zero or negative NIfTI ``pixdim`` as
1 mm (and a negative MetaImage spacing as a flip), and only warns about a DICOM series with a missing
slice, so these checks run on the file itself before the image is read. Each problem is an ``InputError``
naming the file and the numbers.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

_CHUNK = 1 << 20
_GZIP = 31  # zlib window bits: gzip wrapper
_ZLIB_OR_GZIP = 47
# DICOM slice gaps may differ from their median by this much (mm, or this fraction of the median) before
# the series counts as non-uniform: positions are often written with two decimals
DICOM_GAP_TOLERANCE_MM = 0.02
DICOM_GAP_TOLERANCE_FRACTION = 0.01
#: NIfTI data types whose voxels may be NaN or Inf (float32, float64), as numpy types without byte order
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
COMPLEX_PIXELS = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)


def check_file_integrity(path: str | Path, name: str) -> None:
    """Raise ``InputError`` (prefixed with ``name``) when ``path`` is cut short or its data does not match its
    header: gzip streams (``.gz``) and the compressed NRRD/MHA encodings are read to their end; the voxel data
    of NIfTI (``.nii``, ``.nii.gz``, ``.hdr``/``.img``), NRRD and MHA/MHD (also a detached data file) must
    have the size the header gives. Other formats pass unchecked (ITK reads them as it can)."""
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        io = reader.GetImageIOFromFileName(str(path))
        check_header_spacing(path, io, name)  # before ITK reads the header: it guesses or refuses
        reader.ReadImageInformation()
    except RuntimeError as error:
        with open(path, "rb") as stream:
            gzipped = stream.read(2) == b"\x1f\x8b"
        if gzipped:
            _stream_length(path, 0, name, _GZIP)  # a cut-short or corrupt stream says so
        raise InputError(unreadable_message(name, error)) from None
    if io == "NiftiImageIO":
        _check_nifti(path, reader, name)
    elif io == "NrrdImageIO":
        _check_nrrd(path, reader, name)
    elif io == "MetaImageIO":
        _check_meta(path, reader, name)
    elif path.name.lower().endswith(".gz"):
        _stream_length(path, 0, name, _GZIP)


def unreadable_message(name: str, error: Exception) -> str:
    """The one-line message for a file ITK cannot read; a direction ITK refuses is named as such."""
    if "Bad direction, determinant is 0" in str(error):
        return f"{name}: direction matrix is singular (determinant 0): the grid axes are not independent"
    return f"{name}: not a readable image (unknown format or corrupt file)"


def check_header_spacing(path: Path, io: str, name: str) -> None:
    """``InputError`` when the voxel spacing a NIfTI (``pixdim``), NRRD (``space directions`` lengths or
    ``spacings``) or MetaImage (``ElementSpacing``) header gives a spatial axis is zero, negative or not a
    number: ITK would take 1 mm, flip the axis, or refuse the file without saying why."""
    if io == "NiftiImageIO":
        header = nifti_header(path)
        if header is None or not 1 <= header["dim"][0] <= 7:
            return
        spacing = header["pixdim"][1 : 1 + min(3, header["dim"][0])]
        where = "pixdim"
    elif io == "NrrdImageIO":
        fields, _ = _text_header(path, ":")
        spacing, where = _nrrd_spacing(fields), "space directions"
        if spacing is None:
            spacing, where = _nrrd_listed_spacing(fields), "spacings"
    elif io == "MetaImageIO":
        fields, _ = _text_header(path, "=", last_key="elementdatafile")
        where = "ElementSpacing" if "elementspacing" in fields else "ElementSize"
        spacing = _numbers(fields.get("elementspacing", fields.get("elementsize", "")))
    else:
        return
    if spacing and not all(math.isfinite(v) and v > 0 for v in spacing):
        shown = "x".join(f"{v:g}" for v in spacing)
        raise InputError(f"{name}: voxel spacing {shown} mm in its header ({where}) is not a positive number")


def _numbers(text: str) -> list[float] | None:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        return None


def _nrrd_domain_axes(fields: dict[str, str], count: int) -> list[bool]:
    kinds = fields.get("kinds", "").split()
    if len(kinds) != count:
        return [True] * count
    return [k.lower() in ("domain", "space") for k in kinds]


def _nrrd_spacing(fields: dict[str, str]) -> list[float] | None:
    """Lengths of the NRRD ``space directions`` vectors of the spatial axes (``none`` = not spatial)."""
    text = fields.get("space directions")
    if text is None:
        return None
    lengths = []
    for token in re.findall(r"\(([^)]*)\)|none", text):
        if token:
            vector = _numbers(token)
            if vector is None:
                lengths.append(math.nan)
            else:
                lengths.append(
                    math.sqrt(sum(c * c for c in vector)) if all(map(math.isfinite, vector)) else math.nan
                )
    return lengths


def _nrrd_listed_spacing(fields: dict[str, str]) -> list[float] | None:
    values = _numbers(fields.get("spacings", ""))
    if not values:
        return None
    domain = _nrrd_domain_axes(fields, len(values))
    return [v for v, spatial in zip(values, domain) if spatial]


def nifti_header(path: Path) -> dict | None:
    """The fields of a NIfTI-1 or NIfTI-2 header (``.nii``, ``.nii.gz``, ``.hdr``) these checks use:
    ``dim``, ``datatype``, ``pixdim``, ``vox_offset`` and ``byteorder`` ("<" or ">"); None when the file
    does not start with one."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as stream:
            raw = stream.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for order in "<>":
        if len(raw) >= 348 and struct.unpack(order + "i", raw[:4])[0] == 348:
            return {
                "byteorder": order,
                "dim": struct.unpack(order + "8h", raw[40:56]),
                "datatype": struct.unpack(order + "h", raw[70:72])[0],
                "pixdim": struct.unpack(order + "8f", raw[76:108]),
                "vox_offset": struct.unpack(order + "f", raw[108:112])[0],
            }
        if len(raw) >= 540 and struct.unpack(order + "i", raw[:4])[0] == 540:
            return {
                "byteorder": order,
                "dim": struct.unpack(order + "8q", raw[16:80]),
                "datatype": struct.unpack(order + "h", raw[12:14])[0],
                "pixdim": struct.unpack(order + "8d", raw[104:168]),
                "vox_offset": struct.unpack(order + "q", raw[168:176])[0],
            }
    return None


class _NonFiniteCounter:
    """Counts NaN and Inf values of ``dtype`` in a byte stream fed in pieces, after ``skip`` bytes and
    for ``length`` bytes."""

    def __init__(self, dtype: str, skip: int, length: int):
        self.dtype = np.dtype(dtype)
        self.skip, self.left = skip, length
        self.carry = b""
        self.count = 0

    def __call__(self, piece: bytes) -> None:
        if self.skip:
            if len(piece) <= self.skip:
                self.skip -= len(piece)
                return
            piece, self.skip = piece[self.skip :], 0
        if self.left <= 0:
            return
        piece = piece[: self.left]
        self.left -= len(piece)
        data = self.carry + piece if self.carry else piece
        usable = len(data) - len(data) % self.dtype.itemsize
        self.carry = data[usable:]
        if usable:
            values = np.frombuffer(data, dtype=self.dtype, count=usable // self.dtype.itemsize)
            self.count += int(values.size - np.count_nonzero(np.isfinite(values)))


def _voxel_bytes(reader: sitk.ImageFileReader) -> int:
    """Bytes of voxel data the header describes, from ITK's reading of the header (a complex voxel is one
    component of twice the size, though the reader counts its real and imaginary parts as two)."""
    component = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID()).GetSizeOfPixelComponent()
    components = 1 if reader.GetPixelID() in COMPLEX_PIXELS else reader.GetNumberOfComponents()
    return int(np.prod(reader.GetSize(), dtype=np.int64)) * components * component


def _cut_short(name: str, have: int, need: int, what: str = "voxel data") -> InputError:
    return InputError(
        f"{name}: file is cut short: it holds {have:,} bytes of {what}, its header describes {need:,} "
        "(a partly copied file?)"
    )


def _stream_length(
    data_file: Path, offset: int, name: str, wbits: int, expected: int | None = None, sink=None
) -> int:
    """Decompressed length of the zlib/gzip stream(s) starting ``offset`` bytes into ``data_file``, read to
    the end (zlib checks the gzip CRC and length); ``InputError`` when a stream is cut short or corrupt.
    ``sink`` (when given) receives the decompressed bytes in pieces."""
    decompressor = zlib.decompressobj(wbits)
    total = 0
    try:
        with open(data_file, "rb") as stream:
            stream.seek(offset)
            while chunk := stream.read(_CHUNK):
                while chunk:
                    piece = decompressor.decompress(chunk)
                    total += len(piece)
                    if sink is not None and piece:
                        sink(piece)
                    if not decompressor.eof:
                        break
                    # a gzip file may hold several members one after the other
                    chunk = decompressor.unused_data if wbits == _GZIP else b""
                    if chunk:
                        decompressor = zlib.decompressobj(wbits)
                if decompressor.eof and wbits != _GZIP:
                    break
            piece = decompressor.flush()
            total += len(piece)
            if sink is not None and piece:
                sink(piece)
    except zlib.error as error:
        raise InputError(f"{name}: compressed data is corrupt ({error})") from None
    if not decompressor.eof:
        need = f", its header describes {expected:,}" if expected is not None else ""
        raise InputError(
            f"{name}: compressed data is cut short: the stream ends before its end-of-stream marker after "
            f"{total:,} bytes{need} (a partly copied file?)"
        )
    return total


def _check_nifti(path: Path, reader: sitk.ImageFileReader, name: str) -> None:
    meta = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    try:
        dims = [int(meta[f"dim[{i}]"]) for i in range(1, int(meta["dim[0]"]) + 1)]
        voxels = int(np.prod(dims, dtype=np.int64)) * int(meta["bitpix"]) // 8
        offset = int(float(meta["vox_offset"]))
    except (KeyError, ValueError):
        return  # a header ITK read differently: nothing to compare
    original = path
    lower = path.name.lower()
    if lower.endswith((".hdr", ".hdr.gz")):  # header/image pair: the voxels are in the .img file
        stem = path.name[: -len(".hdr.gz")] if lower.endswith(".gz") else path.stem
        candidates = [path.with_name(stem + suffix) for suffix in (".img", ".img.gz", ".IMG")]
        data = next((c for c in candidates if c.exists()), None)
        if data is None:
            raise InputError(f"{name}: its image file '{candidates[0].name}' is missing")
        path, offset = data, 0
    header = nifti_header(original)
    counter = None
    if header is not None and header["datatype"] in NIFTI_FLOAT_TYPES:
        counter = _NonFiniteCounter(
            header["byteorder"] + NIFTI_FLOAT_TYPES[header["datatype"]], offset, voxels
        )
    if path.name.lower().endswith(".gz"):
        have = _stream_length(path, 0, name, _GZIP, offset + voxels, sink=counter) - offset
    else:
        have = path.stat().st_size - offset
        if counter is not None and have >= voxels:
            with open(path, "rb") as stream:
                while piece := stream.read(_CHUNK):
                    counter(piece)
    if have < voxels:
        raise _cut_short(name, max(have, 0), voxels)
    if counter is not None and counter.count:
        # ITK's NIfTI reader hands these voxels back as 0: only the file itself shows them
        raise InputError(f"{name}: contains {counter.count} NaN or Inf voxels")


def _text_header(path: Path, separator: str, last_key: str | None = None) -> tuple[dict[str, str], int]:
    """(fields, byte offset of the data) of a text header: NRRD ends at a blank line, MetaImage after its
    ``ElementDataFile`` line."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as stream:
        for raw in stream:
            offset += len(raw)
            line = raw.decode("latin-1").strip()
            if not line and last_key is None:
                break
            if line.startswith("#") or separator not in line:
                continue
            key, value = line.split(separator, 1)
            fields[key.strip().lower()] = value.strip()
            if last_key is not None and key.strip().lower() == last_key:
                break
    return fields, offset


def _check_nrrd(path: Path, reader: sitk.ImageFileReader, name: str) -> None:
    fields, offset = _text_header(path, ":")
    encoding = fields.get("encoding", "raw").lower()
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is not None:
        if " " in data_file or data_file.upper().startswith("LIST"):
            return  # a list or pattern of data files: not checked
        data_path, offset = path.parent / data_file, 0
        if not data_path.exists():
            raise InputError(f"{name}: its data file '{data_file}' is missing")
    else:
        data_path = path
    expected = _voxel_bytes(reader)
    skip = int(fields.get("byte skip", "0") or 0)
    if encoding in ("gzip", "gz"):
        have = _stream_length(data_path, offset, name, _GZIP, expected)  # skips apply to decompressed data
        have -= max(skip, 0)
    elif encoding == "raw":
        have = data_path.stat().st_size - offset - max(skip, 0)
    else:
        return  # text, hex or bzip2 encodings: ITK's reader checks them as it parses
    if have < expected:
        raise _cut_short(name, max(have, 0), expected)


def _check_meta(path: Path, reader: sitk.ImageFileReader, name: str) -> None:
    fields, offset = _text_header(path, "=", last_key="elementdatafile")
    data_file = fields.get("elementdatafile", "LOCAL")
    if data_file.upper() != "LOCAL":
        if data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file:
            return  # one file per slice: not checked
        data_path, offset = path.parent / data_file, 0
        if not data_path.exists():
            raise InputError(f"{name}: its data file '{data_file}' is missing")
    else:
        data_path = path
    offset += max(int(fields.get("headersize", "0") or 0), 0)
    expected = _voxel_bytes(reader)
    if fields.get("compresseddata", "false").lower() == "true":
        compressed = data_path.stat().st_size - offset
        declared = int(fields.get("compresseddatasize", "0") or 0)
        if declared and compressed < declared:
            raise _cut_short(name, compressed, declared, "compressed data")
        have = _stream_length(data_path, offset, name, _ZLIB_OR_GZIP, expected)
    else:
        have = data_path.stat().st_size - offset
    if have < expected:
        raise _cut_short(name, max(have, 0), expected)


def data_files(path: Path) -> list[Path]:
    """The files an image input is read from: itself, plus its detached data file (MHD ``ElementDataFile``,
    NRRD ``data file``, the ``.img`` of a ``.hdr``); for a folder (DICOM series), the files in it."""
    try:
        if path.is_dir():
            return [path, *(p for p in path.iterdir() if p.is_file())]
    except OSError:  # a folder this user may not list: reading it will say so
        return [path]
    files = [path]
    lower = path.name.lower()
    try:
        if lower.endswith(".mhd"):
            fields, _ = _text_header(path, "=", last_key="elementdatafile")
            detached = fields.get("elementdatafile", "LOCAL")
            if detached.upper() != "LOCAL":
                files.append(path.parent / detached)
        elif lower.endswith(".nhdr"):
            fields, _ = _text_header(path, ":")
            detached = fields.get("data file", fields.get("datafile"))
            if detached:
                files.append(path.parent / detached)
        elif lower.endswith(".hdr"):
            files.extend(path.with_name(path.stem + suffix) for suffix in (".img", ".img.gz"))
    except OSError:
        pass
    return files


def check_dicom_slices(files: list[str], name: str) -> None:
    """Refuse a DICOM series whose slices are missing, duplicated, or unevenly spaced (beyond
    ``DICOM_GAP_TOLERANCE_MM`` or ``DICOM_GAP_TOLERANCE_FRACTION`` of the median gap); ITK only warns.

    Positions come from each file's Image Position (Patient) along the normal of its Image Orientation.
    """
    positions = []
    normal = None
    for file in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(file)
        reader.LoadPrivateTagsOff()
        try:
            reader.ReadImageInformation()
            position = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
            if normal is None:
                cosines = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
                normal = np.cross(cosines[:3], cosines[3:])
        except (RuntimeError, ValueError):
            return  # no usable position tags (e.g. a single multi-frame file): ITK's own geometry stands
        positions.append(float(np.dot(normal, position)))
    if len(positions) < 2:
        return
    order = np.sort(np.asarray(positions))
    gaps = np.diff(order)
    duplicates = int((gaps <= DICOM_GAP_TOLERANCE_MM).sum())
    if duplicates:
        at = order[1:][gaps <= DICOM_GAP_TOLERANCE_MM][0]
        raise InputError(
            f"{name}: DICOM series of {len(files)} files has {duplicates} duplicated slice(s) "
            f"(two slices at {at:.2f} mm along the slice normal)"
        )
    spacing = float(np.median(gaps))
    tolerance = max(DICOM_GAP_TOLERANCE_MM, DICOM_GAP_TOLERANCE_FRACTION * spacing)
    multiples = np.round(gaps / spacing)
    missing = multiples >= 2
    if missing.any() and np.all(np.abs(gaps - multiples * spacing) <= tolerance):
        first = int(np.argmax(missing))
        raise InputError(
            f"{name}: DICOM series has {int((multiples[missing] - 1).sum())} missing slice(s): a gap of "
            f"{gaps[first]:.2f} mm after the slice at {order[first]:.2f} mm, {spacing:.2f} mm elsewhere"
        )
    if np.abs(gaps - spacing).max() > tolerance:
        raise InputError(
            f"{name}: DICOM slice spacing is not uniform: gaps from {gaps.min():.2f} to {gaps.max():.2f} mm "
            f"(median {spacing:.2f} mm, tolerance {tolerance:.3g} mm)"
        )
