"""Reading, validating, normalizing, resampling and affinely pre-aligning 3D images (SimpleITK).

Every check raises ``InputError`` with a one-line message that names the file and the problem.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, InputWarning
from ..fields.geometry import Grid, affine_to_matrix, flatten_linear
from .integrity import check_dicom_slices, check_file_integrity, unreadable_message
from .quiet import itk_warnings_off, quiet_native_stderr

# spacing outside these bounds (mm) is a header error (metres for millimetres, a missing unit), not anatomy
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 50.0
# warn when the thickest voxel axis is this many times the finest: the result is coarse along it
ANISOTROPY_WARNING_RATIO = 10.0
# voxels each axis needs: the pyramids halve the image (affine: shrink factor 2; deformable: the working
# grid at half resolution) and ITK's recursive Gaussian smoothing needs 4 voxels per axis at every level
MIN_PYRAMID_VOXELS = 8
# fixed and moving must share at least this fraction of the fixed image's foreground
MIN_OVERLAP_FRACTION = 0.05


def read_image(path: str | Path, role: str = "image") -> sitk.Image:
    """Read a 3D scalar image (NIfTI, NRRD, MHA/MHD, ... or a DICOM series folder) and validate it.

    ``role`` ("fixed image", "moving labels", ...) only makes error messages clearer.
    """
    image = _read(path, role)
    validate_image(image, f"{role} '{path}'")
    return image


def _read(path: str | Path, role: str) -> sitk.Image:
    path = Path(path)
    name = f"{role} '{path}'"
    check_readable(path, name)
    with itk_warnings_off():  # what they warn about is checked here, and said in one line
        if path.is_dir():
            return _read_dicom_series(path, role)
        with _lower_case_suffix(path) as readable:
            try:
                check_file_integrity(readable, name)  # ITK reads a cut-short file without a word
                return sitk.ReadImage(str(readable))
            except (RuntimeError, OSError) as error:
                raise InputError(unreadable_message(name, error)) from None


#: single-file formats that ITK finds by a lower-case suffix only (``SCAN.MHA``; ``t1.Nii.Gz`` even has
#: nifticlib print "mixed case extension ... is not valid"), images and transforms
SINGLE_FILE_SUFFIXES = (".nii.gz", ".nii", ".mha")
TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")


@contextlib.contextmanager
def _lower_case_suffix(path: Path, suffixes: tuple[str, ...] = SINGLE_FILE_SUFFIXES) -> Iterator[Path]:
    """``path``, or, when it ends in one of ``suffixes`` in other letters, a link to it whose suffix is in
    lower case (in a temporary folder of its own)."""
    suffix = next((s for s in suffixes if path.name.lower().endswith(s)), None)
    if suffix is None or path.name.endswith(suffix):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="rlreg-read-") as folder:
        alias = Path(folder) / f"image{suffix}"
        try:
            alias.symlink_to(path.resolve())
        except OSError:  # no symbolic links here: ITK gets the name as it is
            alias = path
        yield alias


def check_readable(path: Path, name: str) -> None:
    """``InputError`` when ``path`` does not exist, is not a regular file or folder, or this user may not
    read it (a file, or a folder to list: a DICOM series), named as such rather than as a corrupt file."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            os.listdir(path)
        elif not stat.S_ISREG(mode):  # a pipe or a device: opening it might wait forever
            raise InputError(f"{name}: not a regular file (a pipe or a device?)")
        else:
            with open(path, "rb"):
                pass
    except FileNotFoundError:
        raise InputError(f"{name}: file not found") from None
    except OSError as error:
        raise InputError(f"{name}: cannot be read ({error.strerror or error})") from None


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
    check_dicom_slices(list(files), f"{role} '{folder}'")  # ITK only warns about gaps
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(unreadable_message(f"{role} '{folder}'", error)) from None


def validate_image(image: sitk.Image, name: str, labels: bool = False) -> None:
    """Raise ``InputError`` unless ``image`` is a usable 3D scalar image with finite, non-constant voxels."""
    if image.GetDimension() != 3:
        raise InputError(f"{name}: a 3D image is required, this one is {image.GetDimension()}D")
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(
            f"{name}: complex-valued voxels; a real-valued image is required (e.g. the magnitude)"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: a scalar image is required, this one has {image.GetNumberOfComponentsPerPixel()} "
            "components per voxel (vector/RGB)"
        )
    if min(image.GetSize()) < 2:
        raise InputError(
            f"{name}: a 3D volume is required, size {image.GetSize()} has a flat axis (2D image?)"
        )
    check_grid_geometry(image, name)
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{name}: contains {bad} NaN or Inf voxels")
    if not labels and float(array.max()) == float(array.min()):
        raise InputError(f"{name}: image is empty or constant (all voxels = {float(array.min()):g})")
    if not labels:
        _warn_anisotropy(image, name)


def check_grid_geometry(image: sitk.Image, name: str) -> None:
    """Raise ``InputError`` for a degenerate grid: spacing outside [``MIN_SPACING_MM``, ``MAX_SPACING_MM``],
    or a direction matrix that is singular or not orthonormal (skewed or scaled axes)."""
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    if not np.all(spacing > 0):
        raise InputError(f"{name}: spacing {_mm(spacing)} mm is not positive")
    if spacing.min() < MIN_SPACING_MM or spacing.max() > MAX_SPACING_MM:
        raise InputError(
            f"{name}: spacing {_mm(spacing)} mm is outside {MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm "
            "(wrong units in the header?)"
        )
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    determinant = float(np.linalg.det(direction))
    if abs(determinant) < 1e-6:
        raise InputError(f"{name}: direction matrix is singular (determinant {determinant:.3g})")
    deviation = float(np.abs(direction.T @ direction - np.eye(3)).max())
    if deviation > 1e-3:
        raise InputError(
            f"{name}: direction matrix is not orthonormal (largest deviation of D^T D from the identity: "
            f"{deviation:.3f}): the grid axes are skewed or scaled"
        )


def _mm(values) -> str:
    return "x".join(f"{v:g}" for v in values)


def _warn_anisotropy(image: sitk.Image, name: str) -> None:
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    ratio = spacing.max() / spacing.min()
    if ratio >= ANISOTROPY_WARNING_RATIO:
        axis = "ijk"[int(np.argmax(spacing))]
        warnings.warn(
            f"{name}: voxels are {ratio:.1f}x thicker along axis {axis} ({spacing.max():g} mm) than along "
            f"the finest axis ({spacing.min():g} mm): the result will be coarse along {axis}",
            InputWarning,
            stacklevel=3,
        )


def check_pyramid_size(image: sitk.Image, name: str) -> None:
    """Raise ``InputError`` when an axis has fewer than ``MIN_PYRAMID_VOXELS`` voxels."""
    if min(image.GetSize()) < MIN_PYRAMID_VOXELS:
        raise InputError(
            f"{name}: size {_mm(image.GetSize())} voxels is too small for the registration pyramid "
            f"(at least {MIN_PYRAMID_VOXELS} voxels along each axis)"
        )


def foreground_overlap(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None) -> float:
    """Fraction of the fixed image's foreground that maps (``transform``: fixed point -> moving point) onto
    the moving image's foreground, on a coarse grid (about 32 voxels along the longest axis).

    Foreground: above 10 % of the image's robust intensity window (0.5-99.5 percentiles).
    """
    from ..fields.geometry import working_grid

    reference = Grid.from_image(fixed)
    extent = np.asarray(reference.size) * np.asarray(reference.spacing)
    coarse = working_grid(reference, max(float(extent.max()) / 32.0, min(reference.spacing)), multiple=1)

    def foreground(image: sitk.Image, through: sitk.Transform | None) -> np.ndarray:
        lo, hi = intensity_window(image)
        mask = image > lo + 0.1 * (hi - lo)  # uint8, no float copy of a large image
        sampled = resample_to_grid(mask, coarse, through, sitk.sitkNearestNeighbor, default_value=0)
        return sitk.GetArrayViewFromImage(sampled) > 0

    fixed_fg = foreground(fixed, None)
    if not fixed_fg.any():
        return 1.0
    moving_fg = foreground(moving, flatten_linear(transform))
    return float((fixed_fg & moving_fg).sum() / fixed_fg.sum())


def check_overlap(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform | None,
    initialization: str,
    names: tuple[str, str] = ("fixed image", "moving image"),
) -> float:
    """Raise ``InputError`` when less than ``MIN_OVERLAP_FRACTION`` of the fixed image's foreground meets the
    moving image's foreground through ``transform`` (fixed point -> moving point, linear); returns the
    fraction. ``initialization`` is "affine" (the pre-alignment ran), "initial" (a given transform only) or
    "none" (identity); it chooses the advice in the message."""
    fraction = foreground_overlap(fixed, moving, transform)
    if fraction >= MIN_OVERLAP_FRACTION:
        return fraction
    matrix, translation = affine_to_matrix(flatten_linear(transform))
    centre = matrix @ _centre(fixed) + translation
    distance = float(np.linalg.norm(centre - _centre(moving)))
    after = {"affine": "after the affine pre-alignment", "initial": "after the initial transform"}.get(
        initialization, "without initialization"
    )
    advice = (
        "the affine pre-alignment did not bring them together: check that both show the same region, or "
        "start from a rigid/affine initial transform"
        if initialization == "affine"
        else "use the affine pre-alignment, or a rigid/affine initial transform that brings them together"
    )
    raise InputError(
        f"{names[1]}: does not overlap the fixed image: {100 * fraction:.1f} % of the "
        f"fixed image's foreground lies on the moving image's foreground {after} (at least "
        f"{100 * MIN_OVERLAP_FRACTION:.0f} % needed; image centres {distance:.0f} mm apart); {advice}"
    )


def _centre(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))


def read_transform(path: str | Path, role: str = "transform") -> sitk.Transform:
    """A 3D ITK transform file (``.h5``, ``.tfm``, ``.txt``, ``.mat``); ``InputError`` naming the file when it
    is missing, unreadable or not 3D (ITK's and HDF5's own diagnostics are not printed)."""
    path = Path(path)
    try:
        is_folder = path.is_dir()
    except OSError:
        is_folder = False
    if is_folder:
        raise InputError(f"{role} '{path}': is a folder, a transform file is needed")
    check_readable(path, f"{role} '{path}'")
    try:
        with (
            quiet_native_stderr(),
            itk_warnings_off(),
            _lower_case_suffix(path, TRANSFORM_SUFFIXES) as readable,
        ):
            transform = sitk.ReadTransform(str(readable))
    except RuntimeError:
        raise InputError(f"{role} '{path}': not a readable ITK transform file") from None
    if transform.GetDimension() != 3:
        raise InputError(
            f"{role} '{path}': a 3D transform is required, this one is {transform.GetDimension()}D"
        )
    return transform


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


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Same size, and origin/spacing/direction within 1e-3 (mm, or unitless for the direction)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-3)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-3)
    )


def check_same_geometry(image: sitk.Image, labels: sitk.Image, name: str) -> None:
    """Labels must sit on the image's grid (``same_grid``)."""
    if not same_grid(image, labels):
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
    """Map ``window`` (low, high) to [0, 1] and clip: robust per-image normalization (docs/ARCHITECTURE.md §3)."""
    lo, hi = window
    return np.clip((np.asarray(array, dtype=np.float32) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def antialiased(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` (float32) Gaussian-smoothed for resampling on a grid of ``spacing_mm`` (mm): per axis a
    sigma of ``sqrt(r² - 1) / 2`` of its own voxel, ``r`` the ratio of the spacings; unchanged where the
    grid is not coarser. Smooth once and resample with ``antialias=False`` to sample one image many times."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    ratio = spacing_mm / np.asarray(image.GetSpacing())
    sigma = np.sqrt(np.maximum(ratio**2 - 1.0, 0.0)) * 0.5 * np.asarray(image.GetSpacing())
    if not np.any(sigma > 0):
        return image
    return sitk.SmoothingRecursiveGaussian(image, [float(s) for s in np.maximum(sigma, 1e-3)])


class AntialiasedCopies:
    """Anti-aliased copies of images (``antialiased``) for grids of given spacings, each made once: the
    pre-alignment's pyramid, the working grid and the do-no-harm check ask for the same copies of the same
    two images. Keyed by the image object, which it holds (so that its id stays its own): one per
    registration, dropped when the copies are no longer needed.

    ``prefetch`` makes copies on a background thread (ITK's smoothing releases the GIL), e.g. while the
    caller imports torch and reads a policy's weights; ``get`` of a copy still being made waits for it. Any
    thread may call ``get``: a copy is made once, by whichever thread asks first."""

    def __init__(self):
        self._copies: dict[tuple[int, float], tuple[sitk.Image, Future]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(image: sitk.Image, spacing_mm: float) -> tuple[int, float]:
        return id(image), round(float(spacing_mm), 6)

    def prefetch(self, images: list[sitk.Image], spacings_mm: list[float]) -> None:
        """Start making the copies of ``images`` for each of ``spacings_mm`` (in that order) on a thread of
        their own, which ends when they are made."""
        worker = None
        with self._lock:
            for spacing in spacings_mm:
                for image in images:
                    key = self._key(image, spacing)
                    if key in self._copies:  # made, being made, or already queued
                        continue
                    if worker is None:
                        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="antialiased-copies")
                    self._copies[key] = (image, worker.submit(antialiased, image, spacing))
        if worker is not None:
            worker.shutdown(wait=False)  # the queued copies are still made; the thread then ends

    def get(self, image: sitk.Image, spacing_mm: float) -> sitk.Image:
        """``antialiased(image, spacing_mm)``, made on the first call for this image and spacing (or by
        ``prefetch``)."""
        key = self._key(image, spacing_mm)
        with self._lock:
            entry = self._copies.get(key)
            mine = entry is None
            if mine:
                entry = self._copies[key] = (image, Future())
        future = entry[1]
        if mine:
            try:
                future.set_result(antialiased(image, spacing_mm))
            except BaseException as error:  # a later get raises it too; this one raises it now
                future.set_exception(error)
                raise
        return future.result()


def block_mean(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` (float32) averaged over blocks of about ``spacing_mm`` (mm) per axis (``BinShrink``): a
    cheap anti-aliasing before sampling it on a grid that coarse, e.g. to find where it has content."""
    factors = [max(1, int(spacing_mm // s)) for s in image.GetSpacing()]
    image = sitk.Cast(image, sitk.sitkFloat32)
    return image if factors == [1, 1, 1] else sitk.BinShrink(image, factors)


def resample_to_grid(
    image: sitk.Image,
    grid: Grid,
    transform: sitk.Transform | None = None,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
    antialias: bool = True,
    copies: AntialiasedCopies | None = None,
) -> sitk.Image:
    """Resample ``image`` onto ``grid`` through ``transform`` (grid point -> image point), float32.

    With ``antialias`` the image is Gaussian-smoothed first when the grid is coarser than the image (taken
    from ``copies`` when given: smoothed once for every grid of that spacing).
    """
    source = image
    if interpolator != sitk.sitkNearestNeighbor:
        spacing = float(np.asarray(grid.spacing).min())
        if not antialias:
            source = sitk.Cast(image, sitk.sitkFloat32)
        else:
            source = copies.get(image, spacing) if copies is not None else antialiased(image, spacing)
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
    from ..fields.geometry import working_grid

    extent = (np.asarray(image.GetSize()) - 1) * np.asarray(image.GetSpacing())
    spacing = max(min(spacing_mm, float(extent.min()) / 40.0), float(min(image.GetSpacing())))
    return resample_to_grid(image, working_grid(Grid.from_image(image), spacing, multiple=1))
