"""Masks that restrict the similarity to a region (label maps: nonzero = inside).

``conform_mask`` checks a mask against its image and returns it as a UInt8 {0, 1} image on the image's
grid: a mask on another grid is resampled (nearest neighbour, in physical space) with a ``MaskWarning``;
a mask with non-integer values, an empty mask, or one that does not overlap its image raises
``InputError`` naming it. ``mask_to_grid`` puts a conformed mask on a working grid (through a transform,
fixed point -> mask point) as a float32 image in [0, 1].
"""

from __future__ import annotations

import warnings

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, InputWarning
from ..fields.geometry import Grid
from .imaging import same_grid


class MaskWarning(InputWarning):
    """A mask was usable only after a change (resampled onto its image's grid)."""


def conform_mask(mask: sitk.Image, image: sitk.Image, name: str) -> sitk.Image:
    """``mask`` as UInt8 {0, 1} on ``image``'s grid; ``name`` ("fixed mask 'f.nii.gz'") for messages."""
    if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: a 3D scalar label map is required")
    array = sitk.GetArrayViewFromImage(mask)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise InputError(f"{name}: not a label map (non-integer values); nonzero voxels mark the region")
    if not np.any(array):
        raise InputError(f"{name}: mask is empty (all zero)")
    inside = sitk.Cast(mask != 0, sitk.sitkUInt8)
    if not same_grid(inside, image):
        warnings.warn(
            f"{name}: not on its image's grid; resampled onto it (nearest neighbour)",
            MaskWarning,
            stacklevel=2,
        )
        inside = sitk.Resample(inside, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        if not np.any(sitk.GetArrayViewFromImage(inside)):
            raise InputError(f"{name}: mask does not overlap its image (no voxel inside after resampling)")
    return inside


def mask_to_grid(mask: sitk.Image, grid: Grid, transform: sitk.Transform | None = None) -> sitk.Image:
    """Fraction of each ``grid`` voxel inside ``mask`` (float32, [0, 1]), sampled at ``transform``(x): the
    {0, 1} mask smoothed to the grid's spacing (anti-aliased) and resampled linearly."""
    from .imaging import resample_to_grid

    return resample_to_grid(sitk.Cast(mask, sitk.sitkFloat32), grid, transform)
