"""What needs registering: the part of the fixed image's field of view where either image has something
(the head, the body, or the masks when given), so that the working grid covers that box and not the air
around it. A whole-head MRI keeps most of its field of view; a scan with air around the head shrinks by up
to half, and with it every tensor of the registration.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from ..fields.geometry import Grid, working_grid
from ..io.imaging import block_mean, resample_to_grid

#: the region is found on a grid this coarse (mm), then grown by ``MARGIN_MM`` on every side
COARSE_MM = 4.0
MARGIN_MM = 16.0


def _inside(
    image: sitk.Image, grid: Grid, transform: sitk.Transform | None, mask: sitk.Image | None
) -> np.ndarray:
    """Where ``image`` (or ``mask``, when given) has something on ``grid``: above a tenth of its robust
    intensity range (CT's air at -1000 included), resampled through ``transform``."""
    spacing = float(min(grid.spacing))
    if mask is not None:
        inside = resample_to_grid(block_mean(mask, spacing), grid, transform, antialias=False)
        return sitk.GetArrayViewFromImage(inside) > 0.25
    values = sitk.GetArrayViewFromImage(image).ravel()
    low, high = (float(v) for v in np.percentile(values[:: max(1, values.size // 500_000)], [0.5, 99.5]))
    # block means, not a Gaussian: the box only needs where the content is, at a tenth of the time
    coarse = block_mean(image, spacing)
    resampled = sitk.GetArrayFromImage(
        resample_to_grid(coarse, grid, transform, default_value=low, antialias=False)
    )
    return resampled > low + 0.1 * (high - low)


def registration_region(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform | None = None,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(low, high): the box (mm, along the fixed image's axes, from its field of view's centre) holding
    the fixed image's and the moving image's content (through ``transform``, fixed point -> moving point),
    grown by ``MARGIN_MM``; None when neither has any."""
    coarse = working_grid(Grid.from_image(fixed), COARSE_MM, multiple=1)
    occupied = _inside(fixed, coarse, None, fixed_mask) | _inside(moving, coarse, transform, moving_mask)
    if not occupied.any():
        return None
    low, high = [], []
    for axis in range(3):  # array axis 2 - axis is grid axis ``axis``
        rest = tuple(a for a in range(3) if a != 2 - axis)
        where = np.nonzero(occupied.any(axis=rest))[0]
        centre = (coarse.size[axis] - 1) / 2.0
        low.append((where.min() - centre) * coarse.spacing[axis] - MARGIN_MM)
        high.append((where.max() - centre) * coarse.spacing[axis] + MARGIN_MM)
    return np.asarray(low), np.asarray(high)


def cropped_working_grid(
    reference: Grid,
    spacing_mm: float,
    region: tuple[np.ndarray, np.ndarray] | None,
    multiple: int = 16,
    max_voxels: int | None = None,
) -> tuple[Grid, Grid]:
    """(lattice, grid): the working lattice over the whole field of view at the finest spacing from
    ``spacing_mm`` up (5 % at a time) whose part covering ``region`` (``registration_region``; None: all)
    holds at most ``max_voxels`` voxels, and that part, a sub-grid of the lattice with every dimension a
    multiple of ``multiple`` (or the lattice's own)."""
    if max_voxels is not None and max_voxels < multiple**3:
        raise ValueError(f"max_voxels={max_voxels} is below the smallest possible grid ({multiple}^3)")
    spacing = float(spacing_mm)
    while True:
        lattice = working_grid(reference, spacing, multiple=multiple)
        grid = _crop(lattice, region, multiple)
        if max_voxels is None or int(np.prod(grid.size)) <= max_voxels:
            return lattice, grid
        spacing *= 1.05


def _crop(lattice: Grid, region: tuple[np.ndarray, np.ndarray] | None, multiple: int) -> Grid:
    if region is None:
        return lattice
    start, size = [], []
    for axis in range(3):
        n = lattice.size[axis]
        centre = (n - 1) / 2.0
        first = max(0, math.floor(region[0][axis] / lattice.spacing[axis] + centre))
        last = min(n - 1, math.ceil(region[1][axis] / lattice.spacing[axis] + centre))
        length = min(n, max(multiple, math.ceil((last - first + 1) / multiple) * multiple))
        first = min(max(0, first - (length - (last - first + 1)) // 2), n - length)
        start.append(first)
        size.append(length)
    offset = lattice.index_to_physical_matrix @ np.asarray(start, dtype=np.float64)
    return Grid(
        tuple(int(s) for s in size),
        lattice.spacing,
        tuple(float(o) for o in np.asarray(lattice.origin) + offset),
        lattice.direction,
    )
