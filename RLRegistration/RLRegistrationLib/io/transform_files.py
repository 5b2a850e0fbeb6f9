"""ITK transform files as this project writes them: a ``.h5`` whose large parameter arrays (the displacement
field) are stored as float32, rounded to ``QUANTUM_MM`` and compressed (gzip with byte shuffling) instead
of ITK's uncompressed doubles. ITK's HDF5 reader converts them back to doubles, so SimpleITK, ANTs and Slicer read the same
transform (``Testing/test_transform_files.py``): a 1 mm brain field takes a few tens of MB, not 165 MB.
Other suffixes (``.tfm``, ``.txt``, ``.mat``) are written by ITK as they are.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HDF5_SUFFIXES = (".h5", ".hdf5")
#: parameter arrays with more values than this are stored as compressed float32
COMPACT_ABOVE = 4096
#: their values are rounded to a multiple of this (mm; ``RegistrationSession.result`` rounds the field so
#: already, so the file holds the result exactly): at most 0.0005 mm from the computed field, and the low
#: mantissa bits become zeros that compress (a 1 mm whole-head field: 75 -> 37 MB)
QUANTUM_MM = 2.0**-10


def write_transform_file(transform: sitk.Transform, path: str | Path) -> None:
    """Write ``transform`` to ``path`` (the format from the suffix); a ``.h5`` is compacted where h5py is
    installed (a dependency of the library; inside Slicer without it, ITK's plain file is kept)."""
    path = Path(path)
    sitk.WriteTransform(transform, str(path))
    if path.suffix.lower() in HDF5_SUFFIXES and importlib.util.find_spec("h5py") is not None:
        compact_hdf5(path)


def compact_hdf5(path: str | Path) -> None:
    """Rewrite an ITK ``.h5`` transform file with its large float arrays as compressed float32 (a new file
    renamed over the old one: HDF5 does not give back the space of a replaced dataset)."""
    import h5py

    path = Path(path)
    compact = path.with_name(f".{path.name}.compact-{os.getpid()}")
    try:
        with h5py.File(path, "r") as source, h5py.File(compact, "w") as target:
            _copy_attributes(source, target)
            for name in source:
                _copy(source, target, name)
        os.replace(compact, path)
    finally:
        if compact.exists():
            compact.unlink()


def _copy_attributes(source, target) -> None:
    for key, value in source.attrs.items():
        target.attrs[key] = value


def _copy(source, target, name: str) -> None:
    import h5py

    item = source[name]
    if isinstance(item, h5py.Group):
        group = target.create_group(name)
        _copy_attributes(item, group)
        for child in item:
            _copy(item, group, child)
        return
    if item.dtype.kind == "f" and item.size > COMPACT_ABOVE:
        data = (np.round(np.asarray(item[...], dtype=np.float64) / QUANTUM_MM) * QUANTUM_MM).astype(
            np.float32
        )
        dataset = target.create_dataset(
            name, data=data, compression="gzip", compression_opts=4, shuffle=True, chunks=True
        )
        _copy_attributes(item, dataset)
        return
    source.copy(item, target, name=name)


def write_field_transform(
    path: str | Path, affine: sitk.Transform, field_mm: np.ndarray, grid, chunk_slices: int = 8
) -> None:
    """Write ``A o (id + u)`` (``affine`` A; ``field_mm`` u: (k, j, i, 3) float32 LPS mm on ``grid``, a
    ``geometry.Grid``) as ITK would write that composite transform to ``path`` (a ``.h5``), with the field
    stored compressed float32 (rounded to ``QUANTUM_MM``) and written ``chunk_slices`` slices at a time: no
    double copy of the field is ever made. ITK's readers (SimpleITK, ANTs, Slicer) read it as a
    ``CompositeTransform`` of an ``AffineTransform`` and a ``DisplacementFieldTransform``."""
    import h5py

    matrix = np.asarray(affine.GetMatrix(), dtype=np.float64)
    text = h5py.string_dtype("ascii")
    with h5py.File(path, "w") as handle:
        for name, value in (
            ("HDFVersion", f"HDF5 library version: {'.'.join(map(str, h5py.h5.get_libversion()))}"),
            ("ITKVersion", sitk.Version.ITKVersionString()),
            ("OSName", platform.system()),
            ("OSVersion", platform.release()),
        ):
            handle.create_dataset(name, data=np.array([value.encode("ascii", "replace")], dtype=text))
        group = handle.create_group("TransformGroup")
        composite = group.create_group("0")
        composite.create_dataset(
            "TransformType", data=np.array([b"CompositeTransform_double_3_3"], dtype=text)
        )
        linear = group.create_group("1")
        linear.create_dataset("TransformType", data=np.array([b"AffineTransform_double_3_3"], dtype=text))
        linear.create_dataset(
            "TransformFixedParameters", data=np.asarray(affine.GetFixedParameters(), np.float64)
        )
        linear.create_dataset(
            "TransformParameters",
            data=np.concatenate([matrix, np.asarray(affine.GetTranslation(), np.float64)]),
        )
        deformable = group.create_group("2")
        deformable.create_dataset(
            "TransformType", data=np.array([b"DisplacementFieldTransform_double_3_3"], dtype=text)
        )
        fixed = [*grid.size, *grid.origin, *grid.spacing, *grid.direction]
        deformable.create_dataset("TransformFixedParameters", data=np.asarray(fixed, dtype=np.float64))
        plane = int(np.prod(field_mm.shape[1:]))
        values = deformable.create_dataset(
            "TransformParameters",
            shape=(field_mm.size,),
            dtype=np.float32,
            compression="gzip",
            compression_opts=4,
            shuffle=True,
            chunks=(min(field_mm.size, 1 << 20),),
        )
        for k in range(0, field_mm.shape[0], chunk_slices):
            block = np.asarray(field_mm[k : k + chunk_slices], dtype=np.float32)
            block = np.round(block / np.float32(QUANTUM_MM)) * np.float32(QUANTUM_MM)
            values[k * plane : k * plane + block.size] = block.ravel()
