"""Reading, validating, normalizing, resampling and affinely pre-aligning 3D images (SimpleITK).

Every check raises ``InputError`` with a one-line message that names the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid, flatten_linear


def read_image(path: str | Path, role: str = "image") -> sitk.Image:
    """Read a 3D scalar image (NIfTI, NRRD, MHA/MHD, ... or a DICOM series folder) and validate it.

    ``role`` ("fixed image", "moving labels", ...) only makes error messages clearer.
    """
    image = _read(path, role)
    validate_image(image, f"{role} '{path}'")
    return image


def _read(path: str | Path, role: str) -> sitk.Image:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} '{path}': file not found")
    try:
        return _read_dicom_series(path, role) if path.is_dir() else sitk.ReadImage(str(path))
    except (RuntimeError, OSError):
        raise InputError(f"{role} '{path}': not a readable image (unknown format or corrupt file)") from None


def _read_dicom_series(folder: Path, role: str) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{role} '{folder}': folder holds no DICOM series")
    if len(series) > 1:
        # the largest series is the usual choice; say so rather than guess silently
        sizes = {s: len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)) for s in series}
        chosen = max(sizes, key=sizes.get)
    else:
        chosen = series[0]
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), chosen)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def validate_image(image: sitk.Image, name: str, labels: bool = False) -> None:
    """Raise ``InputError`` unless ``image`` is a usable 3D scalar image with finite, non-constant voxels."""
    if image.GetDimension() != 3:
        raise InputError(f"{name}: a 3D image is required, this one is {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: a scalar image is required, this one has {image.GetNumberOfComponentsPerPixel()} "
            "components per voxel (vector/RGB)"
        )
    if min(image.GetSize()) < 2:
        raise InputError(
            f"{name}: a 3D volume is required, size {image.GetSize()} has a flat axis (2D image?)"
        )
    if not np.all(np.asarray(image.GetSpacing()) > 0):
        raise InputError(f"{name}: spacing {image.GetSpacing()} is not positive")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{name}: contains {bad} NaN or Inf voxels")
    if not labels and float(array.max()) == float(array.min()):
        raise InputError(f"{name}: image is empty or constant (all voxels = {float(array.min()):g})")


def read_label_map(path: str | Path, role: str = "labels") -> sitk.Image:
    """Read an integer label map (3D); float files with integer values are accepted."""
    image = _read(path, role)
    validate_image(image, f"{role} '{path}'", labels=True)
    array = sitk.GetArrayFromImage(image)  # a copy: the image may be replaced by its cast below
    if np.issubdtype(array.dtype, np.floating):
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{role} '{path}': label map has non-integer values")
        image = sitk.Cast(image, sitk.sitkInt32)
    if not np.any(array):
        raise InputError(f"{role} '{path}': label map holds no labels (all zero)")
    return image


def check_same_geometry(image: sitk.Image, labels: sitk.Image, name: str) -> None:
    """Labels must sit on the image's grid (same size, and origin/spacing/direction within 1e-3)."""
    same = (
        image.GetSize() == labels.GetSize()
        and np.allclose(image.GetSpacing(), labels.GetSpacing(), atol=1e-3)
        and np.allclose(image.GetOrigin(), labels.GetOrigin(), atol=1e-3)
        and np.allclose(image.GetDirection(), labels.GetDirection(), atol=1e-3)
    )
    if not same:
        raise InputError(
            f"{name}: label map is not on the same grid as its image (size/origin/spacing/direction)"
        )


def intensity_window(image: sitk.Image, low: float = 0.5, high: float = 99.5, max_samples: int = 2_000_000):
    """(low, high) intensity percentiles of an image, from a deterministic subsample for large volumes."""
    array = sitk.GetArrayViewFromImage(image).ravel()
    step = max(1, array.size // max_samples)
    sample = np.asarray(array[::step], dtype=np.float64)
    lo, hi = np.percentile(sample, [low, high])
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    return float(lo), float(hi)


def normalize_intensity(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map ``window`` (low, high) to [0, 1] and clip: robust per-image normalization (DESIGN.md §3)."""
    lo, hi = window
    return np.clip((np.asarray(array, dtype=np.float32) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def resample_to_grid(
    image: sitk.Image,
    grid: Grid,
    transform: sitk.Transform | None = None,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
    antialias: bool = True,
) -> sitk.Image:
    """Resample ``image`` onto ``grid`` through ``transform`` (grid point -> image point), float32.

    With ``antialias`` the image is Gaussian-smoothed first when the grid is coarser than the image.
    """
    source = image
    if interpolator != sitk.sitkNearestNeighbor:
        source = sitk.Cast(image, sitk.sitkFloat32)
        if antialias:
            ratio = np.asarray(grid.spacing).min() / np.asarray(image.GetSpacing())
            sigma = np.sqrt(np.maximum(ratio**2 - 1.0, 0.0)) * 0.5 * np.asarray(image.GetSpacing())
            if np.any(sigma > 0):
                source = sitk.SmoothingRecursiveGaussian(source, [float(s) for s in np.maximum(sigma, 1e-3)])
    reference = grid.reference_image(source.GetPixelID())
    return sitk.Resample(
        source,
        reference,
        transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity),
        interpolator,
        default_value,
    )


def affine_prealign(
    fixed: sitk.Image,
    moving: sitk.Image,
    initial: sitk.Transform | None = None,
    seed: int = 0,
    spacing_mm: float = 4.0,
) -> sitk.AffineTransform:
    """Affine transform (fixed point -> moving point) by Mattes mutual information, two resolutions.

    Both images are first resampled (anti-aliased) to an isotropic ``spacing_mm`` grid and registered there
    at 2x and 1x that spacing: the deformable stage refines the rest, and this keeps it to seconds. Starts
    from ``initial`` when given, else from a moments-based centring.
    """
    fixed_c = _isotropic_copy(fixed, spacing_mm)
    moving_c = _isotropic_copy(moving, spacing_mm)
    if initial is None:
        try:
            initial = sitk.CenteredTransformInitializer(
                fixed_c, moving_c, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
            )
        except RuntimeError:
            initial = sitk.CenteredTransformInitializer(
                fixed_c, moving_c, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.GEOMETRY
            )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed + 1)  # SimpleITK's seed 0 means "wall clock"
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4,
        numberOfIterations=200,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-7,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([spacing_mm, spacing_mm / 2])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(flatten_linear(initial), inPlace=False)
    # one thread: with several, ITK's thread pool sums the metric in a varying order and the same pair gave
    # a different transform from run to run (parameters differing by up to 3e-4). The metric is made inside
    # Execute with ITK's global default, which the method's own SetNumberOfThreads does not reach.
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        return flatten_linear(method.Execute(fixed_c, moving_c))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _isotropic_copy(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """The image resampled (anti-aliased, float32) on an isotropic grid of ``spacing_mm`` or finer: at least
    40 voxels across the smallest extent, never finer than the image itself."""
    from .geometry import working_grid

    extent = (np.asarray(image.GetSize()) - 1) * np.asarray(image.GetSpacing())
    spacing = max(min(spacing_mm, float(extent.min()) / 40.0), float(min(image.GetSpacing())))
    return resample_to_grid(image, working_grid(Grid.from_image(image), spacing, multiple=1))
