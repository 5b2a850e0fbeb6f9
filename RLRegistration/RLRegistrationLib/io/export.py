"""Writing results: ITK transforms (.h5), displacement fields and images.

Written transforms map a fixed point to a moving point (LPS mm): ``sitk.ReadTransform(path)`` gives back
``A o (id + u)`` and ``sitk.Resample(moving, fixed, transform)`` reproduces the warped image.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from ..fields.geometry import Grid
from .outputs import OutputSet
from .transform_files import write_transform_file


def write_transform(transform: sitk.Transform, path: str | Path, overwrite: bool = False) -> Path:
    """Write an ITK transform file (``.h5`` recommended: holds affine + displacement field, compacted by
    ``transform_files``), all or nothing (``outputs.OutputSet``); ``OutputError`` when it exists without
    ``overwrite`` or cannot be written."""
    outputs = OutputSet({"transform": path}, overwrite, option_names={"transform": "output"})
    outputs.check()
    outputs.write({"transform": lambda tmp: write_transform_file(transform, tmp)})
    return Path(path)


def write_image(image: sitk.Image, path: str | Path, overwrite: bool = False) -> Path:
    """Write an image (.nii.gz, .nii, .nrrd or .mha; compressed), all or nothing."""
    outputs = OutputSet({"image": path}, overwrite, option_names={"image": "output"})
    outputs.check()
    outputs.write({"image": lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True)})
    return Path(path)


def total_displacement(transform: sitk.Transform, grid: Grid) -> sitk.Image:
    """One displacement field (LPS mm, sitkVectorFloat64) on ``grid`` equal to ``transform(x) - x``:
    the affine and deformable parts flattened into a single field."""
    return sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        [int(s) for s in grid.size],
        grid.origin,
        grid.spacing,
        grid.direction,
    )
