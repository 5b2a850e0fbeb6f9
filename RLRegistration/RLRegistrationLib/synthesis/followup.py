"""Same-subject follow-up pairs with a known transform, synthesized from one whole-head label map.

The subject's SynthSeg map (brain labels and the extra-cerebral classes >= 500: skull, scalp, neck) is
cropped to the head and resampled to ``spacing_mm``: that is the *moving* (baseline) label map, with its
neck. The true transform ``T(x) = R(x + d(x))`` (fixed point -> moving point, LPS mm) is a small rigid
motion ``R`` about the brain centre after a smooth deformation ``d`` of a few mm. The *fixed* (follow-up)
label map is the moving one sampled through ``T`` on a grid with less neck (the field of view ends
``neck_cut_mm`` higher). Each label map gets its own T1-like image (``synthesis.synthesize_volume``, whole
head, own bias field, texture and noise). Both maps keep all labels; Dice is scored on brain labels and
the end-point error ``|T_est(x) - T(x)|`` inside the fixed brain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .contrast import brain_mask, load_label_map, synthesize_volume
from .pairs import bounding_box_xyz, downsample_labels, random_smooth_deformation, subject_path


@dataclass
class FollowUpPair:
    """Images (float32), label maps (UInt16) and the true transform (fixed point -> moving point)."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_labels: sitk.Image
    moving_labels: sitk.Image
    truth: sitk.CompositeTransform


def follow_up_pair(
    subject: int,
    shared_dir: str | Path,
    seed: int = 0,
    spacing_mm: float = 1.5,
    rotation_deg: float = 3.0,
    translation_mm: float = 5.0,
    max_displacement_mm: float = 3.0,
    neck_cut_mm: float = 30.0,
) -> FollowUpPair:
    """A same-subject pair of SynthSeg subject ``subject`` (``../shared/data`` or its ``synthseg`` folder).

    Rotation angles are drawn uniformly in ±``rotation_deg`` per axis, the translation in
    ±``translation_mm`` per axis, the deformation with its largest vector ``max_displacement_mm`` (control
    points about 32 mm apart); all from ``seed`` and the subject.
    """
    path = subject_path(Path(shared_dir), subject)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: follow-up pairs need the shared SynthSeg label maps")
    return follow_up_from_labels(
        load_label_map(path),
        [int(seed), int(subject)],
        spacing_mm,
        rotation_deg,
        translation_mm,
        max_displacement_mm,
        neck_cut_mm,
    )


def follow_up_from_labels(
    labels: sitk.Image,
    seed: int | list[int] = 0,
    spacing_mm: float = 1.5,
    rotation_deg: float = 3.0,
    translation_mm: float = 5.0,
    max_displacement_mm: float = 3.0,
    neck_cut_mm: float = 30.0,
) -> FollowUpPair:
    """:func:`follow_up_pair` of a whole-head label map (UInt16 image, any grid); ``seed`` seeds all draws."""
    seed = [int(v) for v in np.atleast_1d(seed)]
    rng = np.random.default_rng([*seed, 7])
    moving_labels = downsample_labels(_head_crop(labels), spacing_mm)
    fixed_grid = _without_neck(moving_labels, neck_cut_mm)
    truth = _true_transform(moving_labels, fixed_grid, rng, rotation_deg, translation_mm, max_displacement_mm)
    fixed_labels = sitk.Resample(
        moving_labels, fixed_grid, truth, sitk.sitkNearestNeighbor, 0, moving_labels.GetPixelID()
    )
    images = [
        synthesize_volume(labels, contrast="t1", rng=[*seed, role], skull_strip=False)
        for role, labels in ((0, fixed_labels), (1, moving_labels))
    ]
    return FollowUpPair(images[0], images[1], fixed_labels, moving_labels, truth)


def _head_crop(labels: sitk.Image, margin: int = 4) -> sitk.Image:
    """The label map cropped to the bounding box of its nonzero voxels plus ``margin`` voxels."""
    lo, hi = bounding_box_xyz(sitk.GetArrayViewFromImage(labels) > 0)
    size = labels.GetSize()
    start = [max(0, a - margin) for a in lo]
    stop = [min(n - 1, b + margin) for b, n in zip(hi, size)]
    return sitk.RegionOfInterest(labels, [b - a + 1 for a, b in zip(start, stop)], start)


def _without_neck(image: sitk.Image, cut_mm: float) -> sitk.Image:
    """Reference grid of ``image`` less ``cut_mm`` at its inferior end (LPS: -z) along the index axis
    closest to the head-foot direction."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[2])))  # index axis most aligned with z
    cut = int(round(cut_mm / image.GetSpacing()[axis]))
    size, start = list(image.GetSize()), [0, 0, 0]
    size[axis] -= cut
    if direction[2, axis] > 0:  # index increases upwards: the inferior end is at index 0
        start[axis] = cut
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(image.GetSpacing())
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.TransformIndexToPhysicalPoint(start))
    return grid


def _true_transform(
    labels: sitk.Image,
    fixed_grid: sitk.Image,
    rng: np.random.Generator,
    rotation_deg: float,
    translation_mm: float,
    max_displacement_mm: float,
) -> sitk.CompositeTransform:
    """``T(x) = R(x + d(x))``: ``d`` a smooth field on a 4 mm grid over the fixed grid (LPS mm), ``R``
    rigid about the brain centre of ``labels``."""
    brain = np.argwhere(brain_mask(sitk.GetArrayViewFromImage(labels)))
    centre = labels.TransformContinuousIndexToPhysicalPoint(brain.mean(axis=0)[::-1].tolist())
    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    rigid = sitk.Euler3DTransform(centre, *angles, tuple(rng.uniform(-translation_mm, translation_mm, 3)))
    coarse_spacing = 4.0
    extent = np.asarray(fixed_grid.GetSize()) * np.asarray(fixed_grid.GetSpacing())
    size = [int(np.ceil(e / coarse_spacing)) + 1 for e in extent]
    vectors = random_smooth_deformation(size[::-1], rng, max_displacement_mm, control_spacing_vox=8.0)
    field = sitk.GetImageFromArray(np.moveaxis(vectors, 0, -1).astype(np.float64), isVector=True)
    field.SetSpacing([coarse_spacing] * 3)
    field.SetDirection(fixed_grid.GetDirection())
    field.SetOrigin(fixed_grid.GetOrigin())
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(rigid)
    composite.AddTransform(sitk.DisplacementFieldTransform(field))
    return composite
