"""Linear pre-alignment (fixed point -> moving point, LPS mm): rigid, then optionally affine, coarse to fine.

``prealign(fixed, moving, "affine")`` registers by Mattes mutual information (any contrast) on isotropic,
anti-aliased copies of both images, one SimpleITK registration per level: rigid at 8 and 4 mm, then
(``"affine"``) affine at 4, 2 and 1 mm. The finest level is the images' own spacing where that is coarser
than 1 mm. Each level draws a fixed number of random samples (deterministic for a seed, one ITK thread),
so the cost per level stays about the same however fine it is.

Robust start on whole-head images (different fields of view, neck, large offsets): the rigid stage starts
from each candidate centring (intensity moments of the images, restricted to the masks when given, and the
centres of their fields of view) and keeps the one with the best metric; when the moments cannot be
computed (an empty or constant image), the geometric centring is the only candidate. Masks (label maps,
nonzero = inside) restrict the metric to where they are set (``SetMetricFixedMask`` /
``SetMetricMovingMask``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..fields.geometry import Grid, affine_to_matrix, flatten_linear, working_grid
from ..io.imaging import AntialiasedCopies, resample_to_grid
from ..options import INITIALIZATIONS


@dataclass(frozen=True)
class PrealignSchedule:
    """Levels (isotropic spacing in mm, coarse to fine) of each stage and the optimizer budget per level."""

    rigid_levels_mm: tuple[float, ...] = (8.0, 4.0)
    affine_levels_mm: tuple[float, ...] = (4.0, 2.0, 1.0)
    finest_mm: float = 1.0  # never finer than this, nor than the images' own spacing
    samples: int = 60_000  # random metric samples per level (inside the fixed mask when given)
    iterations: int = 100
    histogram_bins: int = 32
    # True: ITK filters a gradient image of each pyramid copy (its default); False: gradients at the
    # samples only: faster, with equal or better affine Dice on training pairs 1-8
    # (``benchmarks/accuracy.py --methods affine,affine-gradient-filter``)
    image_gradient_filter: bool = False


def prealign(
    fixed: sitk.Image,
    moving: sitk.Image,
    mode: str = "affine",
    initial: sitk.Transform | None = None,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    seed: int = 0,
    schedule: PrealignSchedule | None = None,
    copies: AntialiasedCopies | None = None,
) -> sitk.AffineTransform:
    """Linear transform (fixed point -> moving point) of ``mode`` "affine", "rigid" or "none".

    ``initial`` (any linear transform, fixed -> moving) replaces the automatic centring; "none" returns it
    (identity without it). Masks are label images on any grid (nonzero = inside). ``copies``: where the
    smoothed images of the pyramid are kept (and found, when a caller made them already).
    """
    if mode not in INITIALIZATIONS:
        raise ValueError(f"unknown initialization '{mode}' (choose from {', '.join(INITIALIZATIONS)})")
    if mode == "none":
        return flatten_linear(initial)
    schedule = schedule or PrealignSchedule()
    masks = [None if m is None else sitk.Cast(m != 0, sitk.sitkUInt8) for m in (fixed_mask, moving_mask)]
    levels, affine_levels = pyramid_levels(fixed, moving, mode, schedule)
    pyramid = _Pyramid(fixed, moving, masks, copies, prefetch=[*levels, *affine_levels])
    candidates = _initial_candidates(pyramid.level(levels[0]), initial)
    runs = [_register(pyramid.level(levels[0]), _rigid_from(c), schedule, seed) for c in candidates]
    transform = min(runs, key=lambda run: run[1])[0]
    for spacing in levels[1:]:
        transform = _register(pyramid.level(spacing), transform, schedule, seed)[0]
    if affine_levels:
        transform = _affine_from(transform)
        for spacing in affine_levels:
            transform = _register(pyramid.level(spacing), transform, schedule, seed)[0]
    return flatten_linear(transform)


def pyramid_levels(
    fixed: sitk.Image, moving: sitk.Image, mode: str, schedule: PrealignSchedule
) -> tuple[list[float], list[float]]:
    """The spacings (mm, coarse to fine) of the rigid and the affine levels that ``prealign`` registers on:
    the schedule's, never finer than ``schedule.finest_mm`` nor than either image's finest spacing."""
    finest = max(schedule.finest_mm, _min_spacing(fixed), _min_spacing(moving))
    rigid = _levels(schedule.rigid_levels_mm, finest) if mode != "none" else []
    return rigid, _levels(schedule.affine_levels_mm, finest) if mode == "affine" else []


def prefetch_rigid_levels(
    copies: AntialiasedCopies, fixed: sitk.Image, moving: sitk.Image, mode: str
) -> None:
    """Start smoothing (``AntialiasedCopies.prefetch``) the images for the rigid levels of ``prealign``,
    which do not depend on the working grid (``PrealignSchedule.finest_mm``; where that grid is coarser
    than a level the copy is not used), while the caller goes on: ``registration.run_spec.build_session``
    makes the policy meanwhile (importing torch, reading weights)."""
    copies.prefetch([fixed, moving], pyramid_levels(fixed, moving, mode, PrealignSchedule())[0])


def _min_spacing(image: sitk.Image) -> float:
    return float(min(image.GetSpacing()))


def _levels(levels_mm: tuple[float, ...], finest: float) -> list[float]:
    """The schedule's spacings clipped at ``finest`` (mm), duplicates removed, coarse to fine."""
    return list(dict.fromkeys(max(float(s), finest) for s in levels_mm))


@dataclass
class _Level:
    fixed: sitk.Image
    moving: sitk.Image
    fixed_mask: sitk.Image | None
    moving_mask: sitk.Image | None
    inside_voxels: int  # fixed voxels the metric may sample (inside the fixed mask when given)


class _Pyramid:
    """Isotropic anti-aliased copies of the pair at each spacing, made once (float32), each smoothed from
    the images themselves (``copies`` keeps the smoothed images, shared with the session's working grid and
    do-no-harm check). Smoothing each level from the next finer copy instead saved 0.2 s per level but
    moved a clinical T1/FLAIR pre-alignment by up to 0.1 mm (``benchmarks/RESULTS.md``, issue 25).

    The images of the ``prefetch`` levels are smoothed in order on a background thread
    (``AntialiasedCopies.prefetch``): ITK's smoothing releases the GIL, so the finer copies are made on a
    core that the single-threaded registration of the coarser levels leaves idle. A level is resampled from
    its copies when it is asked for. The copies are the same on any thread, so the result does not change."""

    def __init__(
        self,
        fixed: sitk.Image,
        moving: sitk.Image,
        masks: list[sitk.Image | None],
        copies: AntialiasedCopies | None = None,
        prefetch: list[float] | None = None,
    ):
        self.fixed, self.moving, self.masks = fixed, moving, masks
        self.copies = copies if copies is not None else AntialiasedCopies()
        self.copies.prefetch([fixed, moving], prefetch or [])
        self._levels: dict[float, _Level] = {}

    def level(self, spacing_mm: float) -> _Level:
        if spacing_mm not in self._levels:
            fixed = _isotropic(self.fixed, spacing_mm, self.copies)
            moving = _isotropic(self.moving, spacing_mm, self.copies)
            fixed_mask, moving_mask = self.masks
            inside = int(np.prod(fixed.GetSize()))
            if fixed_mask is not None:
                on_grid = sitk.Resample(fixed_mask, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
                inside = max(1, int(sitk.GetArrayViewFromImage(on_grid).sum()))
            self._levels[spacing_mm] = _Level(fixed, moving, fixed_mask, moving_mask, inside)
        return self._levels[spacing_mm]


def _isotropic(image: sitk.Image, spacing_mm: float, copies: AntialiasedCopies | None = None) -> sitk.Image:
    """``image`` resampled (anti-aliased, float32) on an isotropic grid of ``spacing_mm`` covering it (the
    smoothed image from ``copies`` when given)."""
    grid = working_grid(Grid.from_image(image), spacing_mm, multiple=1)
    return resample_to_grid(image, grid, copies=copies)


def _initial_candidates(level: _Level, initial: sitk.Transform | None) -> list[sitk.Transform]:
    """Starting transforms of the rigid stage: ``initial`` alone when given, else the moments centring
    (when it can be computed) and the field-of-view centring."""
    if initial is not None:
        return [initial]
    fixed, moving = level.fixed, level.moving
    if level.fixed_mask is not None:
        fixed = _masked(fixed, level.fixed_mask)
    if level.moving_mask is not None:
        moving = _masked(moving, level.moving_mask)
    candidates = []
    try:
        candidates.append(
            sitk.CenteredTransformInitializer(
                fixed, moving, sitk.VersorRigid3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
            )
        )
    except RuntimeError:
        pass  # zero mass (empty image): only the geometric centring is possible
    candidates.append(
        sitk.CenteredTransformInitializer(
            fixed, moving, sitk.VersorRigid3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
    )
    return candidates


def _masked(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """``image`` with voxels outside ``mask`` (resampled onto its grid, nearest) set to 0."""
    on_grid = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.Mask(image, on_grid)


def _rigid_from(transform: sitk.Transform) -> sitk.VersorRigid3DTransform:
    """A rigid transform starting at ``transform``: its rotation part (the nearest rotation of its
    matrix) and its translation, about the same centre when it has one."""
    matrix, translation = affine_to_matrix(transform)
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    center = np.asarray(getattr(transform, "GetCenter", lambda: (0.0, 0.0, 0.0))(), dtype=np.float64)
    rigid = sitk.VersorRigid3DTransform()
    rigid.SetCenter(center.tolist())
    rigid.SetMatrix(rotation.ravel().tolist())
    # x -> R (x - c) + c + t' must equal x -> M x + b at the rotation: t' = b + R c - c
    rigid.SetTranslation((translation + rotation @ center - center).tolist())
    return rigid


def _affine_from(transform: sitk.Transform) -> sitk.AffineTransform:
    """The same mapping as an AffineTransform, keeping the centre of rotation (better-conditioned steps)."""
    matrix, translation = affine_to_matrix(transform)
    center = np.asarray(transform.GetCenter(), dtype=np.float64)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(center.tolist())
    affine.SetMatrix(matrix.ravel().tolist())
    affine.SetTranslation((translation + matrix @ center - center).tolist())
    return affine


def _register(
    level: _Level, start: sitk.Transform, schedule: PrealignSchedule, seed: int
) -> tuple[sitk.Transform, float]:
    """One single-resolution Mattes MI registration from ``start``; (transform, its metric value on the
    level's samples), never worse than ``start``'s."""
    method = _mattes_method(level, schedule, seed)
    method.SetInitialTransform(start, inPlace=False)
    # one thread: with several, ITK's thread pool sums the metric in a varying order and the same pair
    # gives a different transform from run to run. The metric is made inside Execute with ITK's global
    # default, which the method's own SetNumberOfThreads does not reach. (The pyramid copies, made
    # before, are the same with any number of threads and use them all.)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        start_value = method.MetricEvaluate(level.fixed, level.moving)
        result = method.Execute(level.fixed, level.moving)
        method.SetInitialTransform(result, inPlace=False)
        value = method.MetricEvaluate(level.fixed, level.moving)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if value > start_value:
        # the optimizer ended worse than it began (on the same samples): it left the basin, e.g. the
        # affine stage of a T1/T2 pair shearing away from a good rigid start; keep the start
        return start, float(start_value)
    if isinstance(result, sitk.CompositeTransform):
        result = result.GetBackTransform() if result.GetNumberOfTransforms() == 1 else result
    return _typed(result, start), float(value)


def _mattes_method(level: _Level, schedule: PrealignSchedule, seed: int) -> sitk.ImageRegistrationMethod:
    """The Mattes MI registration of one pyramid level (metric, samples, masks, optimizer), without its
    initial transform."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=schedule.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(min(1.0, schedule.samples / level.inside_voxels), seed + 1)
    if level.fixed_mask is not None:
        method.SetMetricFixedMask(level.fixed_mask)
    if level.moving_mask is not None:
        method.SetMetricMovingMask(level.moving_mask)
    method.SetInterpolator(sitk.sitkLinear)
    # by default image gradients at the samples only: ITK otherwise filters a gradient image of the
    # whole moving (and fixed) copy per level, most of the time of the 1 mm level for 60 000 samples
    method.SetMetricUseFixedImageGradientFilter(schedule.image_gradient_filter)
    method.SetMetricUseMovingImageGradientFilter(schedule.image_gradient_filter)
    spacing = float(level.fixed.GetSpacing()[0])
    method.SetOptimizerAsRegularStepGradientDescent(
        # first steps of a quarter voxel of this level: at a full voxel the affine stage jumped into
        # degenerate (flipped, sheared) optima of the sampled MI on a brain pair
        learningRate=0.25 * spacing,
        minStep=0.0025 * spacing,
        numberOfIterations=schedule.iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def _typed(result: sitk.Transform, start: sitk.Transform) -> sitk.Transform:
    """The optimized transform as the class it started as (Execute returns a generic Transform)."""
    kind = sitk.VersorRigid3DTransform if isinstance(start, sitk.VersorRigid3DTransform) else None
    if kind is None:
        return sitk.AffineTransform(result)
    return sitk.VersorRigid3DTransform(result)
