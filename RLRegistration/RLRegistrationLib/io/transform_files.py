"""ITK transform files as this project writes them: a ``.h5`` whose large parameter arrays (the displacement
field) are stored as float32, rounded to ``QUANTUM_MM`` and compressed (gzip with byte shuffling) instead
of ITK's uncompressed doubles. ITK's HDF5 reader converts them back to doubles, so SimpleITK, ANTs and Slicer read the same
transform (``Testing/test_transform_files.py``): a 1 mm brain field takes a few tens of MB, not 165 MB.
Other suffixes (``.tfm``, ``.txt``, ``.mat``) are written by ITK as they are.
"""

from __future__ import annotations

import importlib.util
import os
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
