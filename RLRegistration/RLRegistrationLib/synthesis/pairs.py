"""Synthetic pairs and their geometry: crops, isotropic grids, downsampled label maps, smooth random
deformations, and the 1 mm validation pairs built from the shared SynthSeg label maps.

Array conventions: numpy arrays from SimpleITK are indexed (k, j, i) = (D, H, W); SimpleITK sizes and
indices are (i, j, k) = (x, y, z).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from .contrast import (
    as_rng,
    brain_mask,
    load_label_map,
    skull_strip_labels,
    smooth_random_field,
    synthesize_volume,
)

#: SimpleITK size (x, y, z) of validation crops; the numpy array shape is the reverse, (224, 192, 160).
VALIDATION_SIZE_XYZ = (160, 192, 224)


# Labels whose extent is ignored when centring the validation crop: the brainstem and the
# extra-ventricular CSF run down the spinal canal to the bottom of the field of view.
_CROP_CENTRE_EXCLUDE = (16, 24)


# -------------------------------------------------------------------------------------- grids and crops


def crop_or_pad_center(array: np.ndarray, shape: Sequence[int], pad_value: float = 0) -> np.ndarray:
    """Centre-crop or pad (with ``pad_value``) the trailing ``len(shape)`` axes of ``array`` to ``shape``.

    Leading axes (e.g. the vector component of a (3, D, H, W) field) are kept. Where the size difference
    is odd, the extra voxel is removed from / added at the end.
    """
    array = np.asarray(array)
    shape = tuple(int(s) for s in shape)
    if len(shape) > array.ndim:
        raise ValueError(f"target shape {shape} has more axes than the array {array.shape}")
    first = array.ndim - len(shape)
    slices = [slice(None)] * array.ndim
    pads = [(0, 0)] * array.ndim
    for offset, target in enumerate(shape):
        axis = first + offset
        size = array.shape[axis]
        if size >= target:
            start = (size - target) // 2
            slices[axis] = slice(start, start + target)
        else:
            before = (target - size) // 2
            pads[axis] = (before, target - size - before)
    out = array[tuple(slices)]
    if any(p != (0, 0) for p in pads):
        out = np.pad(out, pads, mode="constant", constant_values=pad_value)
    return out


def isotropic_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Empty reference image with isotropic ``spacing_mm``, same origin and direction as ``image``.

    The first voxel centre stays where it is (same origin); the size is chosen so that every voxel centre
    of ``image`` is covered: ``floor((n - 1) * old_spacing / spacing_mm) + 1`` per axis.
    """
    if spacing_mm <= 0:
        raise ValueError("spacing must be positive")
    size = [
        int(math.floor((n - 1) * sp / spacing_mm + 1e-6)) + 1
        for n, sp in zip(image.GetSize(), image.GetSpacing())
    ]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    grid.SetSpacing([float(spacing_mm)] * image.GetDimension())
    return grid


def downsample_labels(label_image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Nearest-neighbour resample of a label map to isotropic ``spacing_mm`` (see :func:`isotropic_grid`).

    Same origin and direction, same extent, same pixel type.
    """
    grid = isotropic_grid(label_image, spacing_mm)
    return sitk.Resample(
        label_image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label_image.GetPixelID()
    )


def downsample_image(image: sitk.Image, spacing_mm: float, antialias: bool = True) -> sitk.Image:
    """Linear resample of an intensity image onto :func:`isotropic_grid` (float32).

    With ``antialias``, a Gaussian of FWHM ``sqrt(new² - old²)`` mm is applied first (per axis), so the
    result looks like an acquisition at the coarser resolution.
    """
    grid = isotropic_grid(image, spacing_mm)
    source = sitk.Cast(image, sitk.sitkFloat32)
    if antialias:
        fwhm = [math.sqrt(max(spacing_mm**2 - sp**2, 0.0)) for sp in image.GetSpacing()]
        variance = [(f / (2.0 * math.sqrt(2.0 * math.log(2.0)))) ** 2 for f in fwhm]
        if max(variance) > 0:
            source = sitk.DiscreteGaussian(source, variance, 64, 0.01, True)
    return sitk.Resample(source, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def crop_image_xyz(image: sitk.Image, center_xyz: Sequence[float], size_xyz: Sequence[int]) -> sitk.Image:
    """Crop ``image`` to ``size_xyz`` voxels around the continuous index ``center_xyz``.

    The window is shifted to stay inside the image where it fits; where the image is smaller than the
    window it is zero-padded. Physical positions are kept (the origin is updated).
    """
    size_img = list(image.GetSize())
    lower_pad = [max(0, (int(t) - n + 1) // 2) for t, n in zip(size_xyz, size_img)]
    upper_pad = [max(0, int(t) - n) - lo for t, n, lo in zip(size_xyz, size_img, lower_pad)]
    if any(lower_pad) or any(upper_pad):
        image = sitk.ConstantPad(image, lower_pad, upper_pad, 0)
        center_xyz = [c + lo for c, lo in zip(center_xyz, lower_pad)]
        size_img = list(image.GetSize())
    starts = []
    for c, t, n in zip(center_xyz, size_xyz, size_img):
        start = int(round(c - (int(t) - 1) / 2.0))
        starts.append(min(max(start, 0), n - int(t)))
    return sitk.RegionOfInterest(image, [int(t) for t in size_xyz], starts)


def bounding_box_xyz(mask: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Inclusive (lower, upper) index bounding box, in SimpleITK (x, y, z) order, of a (k, j, i) mask."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("empty mask has no bounding box")
    lo = idx.min(axis=0)[::-1]
    hi = idx.max(axis=0)[::-1]
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


# ------------------------------------------------------------------------------------------ deformations


def random_smooth_deformation(
    shape: Sequence[int],
    rng: np.random.Generator | int | Sequence[int] | None = None,
    max_disp_vox: float = 3.0,
    control_spacing_vox: float = 8.0,
) -> np.ndarray:
    """Smooth random displacement field, float32 array (3, D, H, W), in voxels.

    Channels are ordered like the ITK index, (i, j, k) (the project convention, see ``geometry``): channel 0
    is the displacement along W/i, 1 along H/j, 2 along D/k. (The components are i.i.d., so the order only
    matters for documentation.) Standard-normal vectors on a control grid of about ``control_spacing_vox``
    voxels are upsampled trilinearly and scaled so that the largest vector length is exactly
    ``max_disp_vox``. Trilinear interpolation is a convex combination
    of control vectors, so neighbouring voxels differ by at most about
    ``2 * max_disp_vox / control_spacing_vox`` per component.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"expected a 3D shape, got {shape}")
    gen = as_rng(rng)
    field = smooth_random_field(shape, gen, control_spacing_vox, channels=3)
    norm = float(np.sqrt((field**2).sum(axis=0)).max())
    if norm > 0:
        field *= float(max_disp_vox) / norm
    return field.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------- validation data


def subject_path(shared_dir: Path, subject: int) -> Path:
    """Path of SynthSeg training label map ``subject`` under ``shared_dir`` (the shared data folder)."""
    shared_dir = Path(shared_dir)
    folder = shared_dir / "synthseg" if (shared_dir / "synthseg").is_dir() else shared_dir
    return folder / f"training_seg_{int(subject):02d}.nii.gz"


def validation_pair(
    fixed_subject: int,
    moving_subject: int,
    shared_dir: str | Path,
    contrast_fixed: str | Mapping[int, float] = "t1",
    contrast_moving: str | Mapping[int, float] = "t1",
    seed: int = 0,
) -> tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image]:
    """1 mm validation pair synthesized from two SynthSeg label maps (``validation_image``, roles 0 and 1).

    ``shared_dir`` is the shared data folder (``../shared/data``, holding ``synthseg/``) or the
    ``synthseg`` folder itself.

    Returns ``(fixed_image, moving_image, fixed_labels, moving_labels)``: float32 images in [0, 1] and
    UInt16 label maps with the original FreeSurfer values (0 outside the brain).
    """
    fixed_img, fixed_lab = validation_image(fixed_subject, shared_dir, contrast_fixed, seed, role=0)
    moving_img, moving_lab = validation_image(moving_subject, shared_dir, contrast_moving, seed, role=1)
    return fixed_img, moving_img, fixed_lab, moving_lab


def validation_image(
    subject: int,
    shared_dir: str | Path,
    contrast: str | Mapping[int, float] = "t1",
    seed: int = 0,
    role: int = 0,
) -> tuple[sitk.Image, sitk.Image]:
    """(image, labels) of one side of a validation pair (``role`` 0 fixed, 1 moving).

    The subject is skull-stripped (labels >= 500 -> 0), synthesized with ``contrast`` (seeded by ``seed``,
    the subject and ``role``) and cropped to :data:`VALIDATION_SIZE_XYZ` (numpy shape (224, 192, 160))
    around the centre of its brain bounding box (brainstem and extra-ventricular CSF, which run down the
    spinal canal, are ignored for the centre). Cropping keeps physical positions.
    """
    path = subject_path(Path(shared_dir), subject)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: validation pairs need the shared SynthSeg label maps "
            "(../shared/data/synthseg/training_seg_XX.nii.gz); pass shared_dir pointing at ../shared/data"
        )
    labels_img = load_label_map(path)
    labels = skull_strip_labels(sitk.GetArrayFromImage(labels_img))
    stripped = sitk.GetImageFromArray(labels)
    stripped.CopyInformation(labels_img)

    core = brain_mask(labels) & ~np.isin(labels, _CROP_CENTRE_EXCLUDE)
    lo, hi = bounding_box_xyz(core if core.any() else brain_mask(labels))
    center = [(a + b) / 2.0 for a, b in zip(lo, hi)]

    rng = np.random.default_rng([int(seed), int(subject), int(role)])
    image = synthesize_volume(stripped, contrast=contrast, rng=rng, skull_strip=True)
    return crop_image_xyz(image, center, VALIDATION_SIZE_XYZ), crop_image_xyz(
        stripped, center, VALIDATION_SIZE_XYZ
    )
