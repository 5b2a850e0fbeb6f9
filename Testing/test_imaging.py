"""Tests of RLRegistrationLib.imaging: reading and validation, DICOM series, normalization, resampling and
affine pre-alignment."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.fields.geometry import Grid
from RLRegistrationLib.io import imaging


def _write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def _volume(rng, shape=(6, 7, 8), dtype=np.float32) -> sitk.Image:
    image = sitk.GetImageFromArray(rng.random(shape).astype(dtype))
    image.SetSpacing((0.9, 1.1, 2.0))
    return image


# ----------------------------------------------------------------------------------------------------------
# read_image: errors name the file and the problem


def _bad_inputs(tmp_path, rng):
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    fake_nifti = tmp_path / "fake.nii.gz"
    fake_nifti.write_text("not an image either\n")
    nan = rng.random((5, 6, 7)).astype(np.float32)
    nan[2, 3, 4] = np.nan
    return {
        "missing": (str(tmp_path / "missing.nii.gz"), "not found"),
        "text": (str(text), "not a readable image"),
        "fake_nifti": (str(fake_nifti), "not a readable image"),
        "2d": (
            _write(sitk.GetImageFromArray(rng.random((6, 7)).astype(np.float32)), tmp_path / "flat2d.nii.gz"),
            "2D",
        ),
        "flat_3d": (
            _write(
                sitk.GetImageFromArray(rng.random((1, 6, 7)).astype(np.float32)), tmp_path / "one_slice.nrrd"
            ),
            "flat axis",
        ),
        "4d": (
            _write(
                sitk.GetImageFromArray(rng.random((2, 3, 4, 5)).astype(np.float32), isVector=False),
                tmp_path / "four.nii.gz",
            ),
            "4D",
        ),
        "vector": (
            _write(
                sitk.GetImageFromArray(rng.random((4, 5, 6, 3)).astype(np.float32), isVector=True),
                tmp_path / "vector.mha",
            ),
            "3 components",
        ),
        "constant": (
            _write(sitk.GetImageFromArray(np.full((4, 5, 6), 7.0, np.float32)), tmp_path / "constant.nii.gz"),
            "constant",
        ),
        # NRRD, not NIfTI: ITK's NIfTI reader turns NaN into 0
        "nan": (_write(sitk.GetImageFromArray(nan), tmp_path / "nan.nrrd"), "1 NaN or Inf"),
        "empty_folder": (str((tmp_path / "empty").resolve()), "no DICOM series"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "text", "fake_nifti", "2d", "flat_3d", "4d", "vector", "constant", "nan", "empty_folder"],
)
def test_read_image_errors_name_file_and_problem(tmp_path, rng, case):
    (tmp_path / "empty").mkdir()
    path, problem = _bad_inputs(tmp_path, rng)[case]
    with pytest.raises(InputError) as error:
        imaging.read_image(path, role="fixed image")
    message = str(error.value)
    assert path in message
    assert problem in message
    assert message.startswith("fixed image '")
    assert "\n" not in message


def test_read_image_valid_volume(tmp_path, rng):
    image = _volume(rng)
    image.SetOrigin((1.0, -2.0, 3.0))
    back = imaging.read_image(_write(image, tmp_path / "ok.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert back.GetSpacing() == pytest.approx(image.GetSpacing())
    assert back.GetOrigin() == pytest.approx(image.GetOrigin())


def _write_dicom_series(volume: sitk.Image, folder) -> None:
    """Write an int16 volume as one DICOM file per slice with position, orientation and spacing tags."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = volume.GetDirection()
    study, series = "1.2.826.0.1.3680043.2.1125.1.77", "1.2.826.0.1.3680043.2.1125.1.78"
    for k in range(volume.GetDepth()):
        image_slice = volume[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series}.{k + 1}",
            "0020|000d": study,
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0028|0030": f"{volume.GetSpacing()[1]:.6f}\\{volume.GetSpacing()[0]:.6f}",  # row\column spacing
            "0018|0050": f"{volume.GetSpacing()[2]:.6f}",
        }
        for key, value in tags.items():
            image_slice.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(image_slice)


def test_read_dicom_series_folder_round_trip(tmp_path, rng, rotation_matrix):
    array = rng.integers(-500, 1500, (6, 10, 12)).astype(np.int16)
    volume = sitk.GetImageFromArray(array)
    volume.SetSpacing((0.8, 0.9, 2.5))
    volume.SetOrigin((-30.0, 12.5, 40.0))
    volume.SetDirection(tuple(rotation_matrix(0, 0, 20).ravel()))
    _write_dicom_series(volume, tmp_path / "series")
    back = imaging.read_image(tmp_path / "series")
    assert back.GetSize() == (12, 10, 6)
    np.testing.assert_allclose(back.GetSpacing(), (0.8, 0.9, 2.5), atol=1e-4)
    np.testing.assert_allclose(back.GetOrigin(), (-30.0, 12.5, 40.0), atol=1e-3)
    np.testing.assert_allclose(back.GetDirection(), volume.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)


# ----------------------------------------------------------------------------------------------------------
# label maps


def test_read_label_map_rejects_non_integer_floats(tmp_path):
    array = np.zeros((5, 6, 7), np.float32)
    array[1:3, 2:4, 3:5] = 2.5
    path = _write(sitk.GetImageFromArray(array), tmp_path / "soft.nii.gz")
    with pytest.raises(InputError, match="non-integer") as error:
        imaging.read_label_map(path)
    assert path in str(error.value)


def test_read_label_map_integer_types(tmp_path):
    array = np.zeros((5, 6, 7), np.int16)
    array[1:3, 2:4, 3:5] = 17
    labels = imaging.read_label_map(_write(sitk.GetImageFromArray(array), tmp_path / "labels.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), array)
    path = _write(sitk.GetImageFromArray(np.zeros((5, 6, 7), np.int16)), tmp_path / "zeros.nii.gz")
    with pytest.raises(InputError, match="no labels"):
        imaging.read_label_map(path)


LABEL_FLOAT_SCRIPT = """
import numpy as np
import SimpleITK as sitk
from RLRegistrationLib import imaging
from RLRegistrationLib.errors import InputError

folder = {folder!r}
for repeat in range(3):
    array = np.zeros((20, 20, 20), np.float32)
    array[3:9, 4:12, 5:15] = 3.0
    sitk.WriteImage(sitk.GetImageFromArray(array), folder + "/float_labels.nii.gz")
    labels = imaging.read_label_map(folder + "/float_labels.nii.gz")
    assert labels.GetPixelID() == sitk.sitkInt32, labels.GetPixelIDTypeAsString()
    assert np.array_equal(sitk.GetArrayFromImage(labels), array.astype(np.int32))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20, 20), np.float32)), folder + "/float_zeros.nii.gz")
    try:
        imaging.read_label_map(folder + "/float_zeros.nii.gz")
    except InputError as error:
        assert "no labels" in str(error)
    else:
        raise SystemExit("an all-zero float label map was accepted")
print("ok")
"""


def test_read_label_map_float_maps(tmp_path, run_isolated):
    # run in a fresh interpreter: reading freed memory can crash the process
    result = run_isolated(LABEL_FLOAT_SCRIPT.replace("{folder!r}", repr(str(tmp_path))))
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_check_same_geometry(rng):
    image = _volume(rng)
    labels = sitk.Cast(image > 0.5, sitk.sitkUInt8)
    imaging.check_same_geometry(image, labels, "fixed labels")
    labels.SetOrigin((0.0, 0.0, 0.01))
    with pytest.raises(InputError, match="fixed labels: label map is not on the same grid"):
        imaging.check_same_geometry(image, labels, "fixed labels")


# ----------------------------------------------------------------------------------------------------------
# intensities and resampling


def test_intensity_window_and_normalize():
    image = sitk.GetImageFromArray(np.arange(1000, dtype=np.float32).reshape(10, 10, 10))
    lo, hi = imaging.intensity_window(image)
    assert (lo, hi) == pytest.approx((4.995, 994.005))
    assert imaging.intensity_window(image, 10, 90) == pytest.approx((99.9, 899.1))
    normalized = imaging.normalize_intensity(sitk.GetArrayViewFromImage(image), (lo, hi))
    assert normalized.dtype == np.float32
    assert normalized.min() == 0.0 and normalized.max() == 1.0
    assert normalized[0, 0, 0] == 0.0 and normalized[-1, -1, -1] == 1.0
    assert normalized[5, 0, 0] == pytest.approx((500 - lo) / (hi - lo), rel=1e-6)
    assert np.all(np.diff(normalized.ravel()) >= 0)
    # a mostly constant image: the percentiles collapse, the window falls back to min/max
    sparse = np.zeros((10, 10, 10), np.float32)
    sparse[0, 0, :2] = (5.0, -3.0)
    assert imaging.intensity_window(sitk.GetImageFromArray(sparse)) == (-3.0, 5.0)
    # subsampling of large volumes stays close to the exact percentiles
    big = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32))
    exact = np.percentile(sitk.GetArrayViewFromImage(big), [0.5, 99.5])
    assert imaging.intensity_window(big, max_samples=10_000) == pytest.approx(tuple(exact), abs=0.15)


def test_resample_to_grid_identity_keeps_values(oblique_grid, blob_array, image_on_grid):
    image = image_on_grid(blob_array(oblique_grid.shape, seed=4), oblique_grid)
    out = imaging.resample_to_grid(image, oblique_grid)
    assert Grid.from_image(out) == oblique_grid
    assert out.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(image), atol=1e-5)
    labels = sitk.Cast(image > 0.3, sitk.sitkUInt8)
    out = imaging.resample_to_grid(labels, oblique_grid, interpolator=sitk.sitkNearestNeighbor)
    assert out.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(labels))


def test_resample_to_grid_transform_direction(oblique_grid, blob_array, image_on_grid):
    """The transform maps grid points to image points: a shift of +2 voxels along i reads i + 2."""
    array = blob_array(oblique_grid.shape, seed=5)
    image = image_on_grid(array, oblique_grid)
    offset = oblique_grid.index_to_physical_matrix @ np.array([2.0, 0.0, 0.0])
    out = sitk.GetArrayFromImage(
        imaging.resample_to_grid(
            image, oblique_grid, sitk.TranslationTransform(3, tuple(offset)), default_value=-1
        )
    )
    np.testing.assert_allclose(out[..., :-2], array[..., 2:], atol=1e-5)
    np.testing.assert_array_equal(out[..., -2:], -1.0)


def test_resample_to_coarser_grid_is_antialiased(make_grid):
    fine = make_grid((32, 32, 32), (1.0, 1.0, 1.0), (0, 0, 0))
    checker = ((np.indices(fine.shape).sum(axis=0) % 2) * 2 - 1).astype(np.float32)  # +-1, Nyquist
    image = fine.apply_to(sitk.GetImageFromArray(checker))
    coarse = make_grid((8, 8, 8), (4.0, 4.0, 4.0), (1.0, 1.0, 1.0))
    smooth = sitk.GetArrayFromImage(imaging.resample_to_grid(image, coarse))
    aliased = sitk.GetArrayFromImage(imaging.resample_to_grid(image, coarse, antialias=False))
    assert np.abs(aliased).mean() > 0.5
    assert np.abs(smooth).mean() < 0.2 * np.abs(aliased).mean()


# ----------------------------------------------------------------------------------------------------------
# affine pre-alignment


def _prealign_case(blob_array):
    array = blob_array((40, 40, 40), seed=0, blobs=30, sigma=(1.5, 3.0))
    fixed = sitk.GetImageFromArray(array)
    fixed.SetSpacing((2.0, 2.0, 2.0))
    fixed.SetOrigin((-40.0, -35.0, 10.0))
    truth = sitk.Euler3DTransform()
    truth.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([19.5, 19.5, 19.5]))
    truth.SetRotation(*np.deg2rad([5.0, 0.0, 0.0]))
    truth.SetTranslation((4.0, 0.0, 0.0))
    # moving(truth(x)) = fixed(x): truth maps fixed points to moving points
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    return fixed, moving, truth


def _central_points(fixed, count=50):
    index = np.random.default_rng(1).uniform(8, 31, (count, 3))
    return [fixed.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in index]


def test_affine_prealign_recovers_known_transform(blob_array):
    fixed, moving, truth = _prealign_case(blob_array)
    estimate = imaging.affine_prealign(fixed, moving, seed=1)
    assert isinstance(estimate, sitk.AffineTransform)
    points = _central_points(fixed)
    before = max(np.linalg.norm(np.subtract(p, truth.TransformPoint(p))) for p in points)
    errors = [
        np.linalg.norm(np.subtract(estimate.TransformPoint(p), truth.TransformPoint(p))) for p in points
    ]
    assert before > 4.0
    assert max(errors) < 1.5


def test_affine_prealign_default_seed_is_reproducible(blob_array):
    fixed, moving, _ = _prealign_case(blob_array)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    runs = [imaging.affine_prealign(fixed, moving) for _ in range(3)]
    for other in runs[1:]:  # bit for bit: the metric runs on one thread
        assert other.GetParameters() == runs[0].GetParameters()
        assert other.GetFixedParameters() == runs[0].GetFixedParameters()
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads  # ITK's default restored


def test_affine_prealign_explicit_seed_is_reproducible(blob_array):
    fixed, moving, _ = _prealign_case(blob_array)
    first = imaging.affine_prealign(fixed, moving, seed=3)
    second = imaging.affine_prealign(fixed, moving, seed=3)
    for p in _central_points(fixed, 20):
        np.testing.assert_allclose(second.TransformPoint(p), first.TransformPoint(p), atol=1e-4)


def test_affine_prealign_uses_initial_transform(blob_array):
    """Starting from the true transform, the result stays near it (and flattens composites to an affine)."""
    fixed, moving, truth = _prealign_case(blob_array)
    initial = sitk.CompositeTransform([sitk.TranslationTransform(3, (1.0, 0.0, 0.0)), truth])
    start = sitk.CompositeTransform([sitk.TranslationTransform(3, (-1.0, 0.0, 0.0)), initial])
    estimate = imaging.affine_prealign(fixed, moving, initial=start, seed=1)
    errors = [
        np.linalg.norm(np.subtract(estimate.TransformPoint(p), truth.TransformPoint(p)))
        for p in _central_points(fixed)
    ]
    assert max(errors) < 1.5


# ----------------------------------------------------------------------------------------------------------
# what ITK's readers do not say: NaN/Inf voxels of NIfTI files, a header's zero spacing, complex voxels


def _blob(shape=(10, 11, 12)) -> np.ndarray:
    index = np.indices(shape, dtype=np.float32)
    return np.exp(-((index - 5.0) ** 2).sum(0) / 20.0).astype(np.float32)


@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz", "a64.nii.gz", "inf.nii", "a.hdr"])
def test_nifti_nan_and_inf_voxels_are_refused(tmp_path, name):
    """ITK's NIfTI reader (nifticlib) hands NaN and Inf voxels back as 0: the file itself is read."""
    array = _blob().astype(np.float64 if "64" in name else np.float32)
    array[1, 2, 3] = np.inf if name.startswith("inf") else np.nan
    array[4, 4, 4] = -np.inf
    path = _write(sitk.GetImageFromArray(array), tmp_path / name)
    assert np.isfinite(sitk.GetArrayViewFromImage(sitk.ReadImage(path))).all()  # what ITK gives
    with pytest.raises(InputError, match=r"'.*': contains 2 NaN or Inf voxels$"):
        imaging.read_image(path, "moving image")


def _patched_nifti(tmp_path, pixdim) -> str:
    import struct

    path = _write(sitk.GetImageFromArray(_blob()), tmp_path / "pix.nii")
    data = bytearray(open(path, "rb").read())
    struct.pack_into("<3f", data, 80, *pixdim)
    open(path, "wb").write(bytes(data))
    return path


@pytest.mark.parametrize(
    "pixdim, shown",
    [((0.0, 1.0, 1.0), "0x1x1"), ((1.0, -2.0, 1.0), "1x-2x1"), ((1.0, 1.0, np.nan), "1x1xnan")],
)
def test_nifti_pixdim_that_is_not_positive_is_refused_without_itk_warnings(tmp_path, capfd, pixdim, shown):
    """ITK took such a header as 1 mm after printing six warning lines."""
    path = _patched_nifti(tmp_path, pixdim)
    with pytest.raises(InputError) as error:
        imaging.read_image(path, "fixed image")
    assert str(error.value) == (
        f"fixed image '{path}': voxel spacing {shown} mm in its header (pixdim) is not a positive number"
    )
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "suffix, old, new, where",
    [
        (".mha", b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1", "ElementSpacing"),
        (".mha", b"ElementSpacing = 1 1 1", b"ElementSpacing = -1 1 1", "ElementSpacing"),
        (".nrrd", b"(1,0,0) (0,1,0)", b"(0,0,0) (0,1,0)", "space directions"),
    ],
)
def test_header_spacing_that_is_not_positive_is_refused(tmp_path, suffix, old, new, where):
    path = _write(sitk.GetImageFromArray(_blob()), tmp_path / f"image{suffix}")
    data = open(path, "rb").read()
    assert old in data
    open(path, "wb").write(data.replace(old, new, 1))
    with pytest.raises(InputError, match=f"in its header \\({where}\\) is not a positive number"):
        imaging.read_image(path)


def test_a_negative_nrrd_direction_is_a_flip_not_a_negative_spacing(tmp_path):
    path = _write(sitk.GetImageFromArray(_blob()), tmp_path / "flip.nrrd")
    data = open(path, "rb").read().replace(b"(1,0,0) (0,1,0)", b"(-1,0,0) (0,1,0)", 1)
    open(path, "wb").write(data)
    image = imaging.read_image(path)
    assert image.GetSpacing() == (1.0, 1.0, 1.0) and image.GetDirection()[0] == -1.0


@pytest.mark.parametrize("name", ["complex.nii.gz", "complex.nrrd"])
def test_complex_voxels_are_refused_naming_the_file(tmp_path, recwarn, name):
    path = _write(sitk.GetImageFromArray(_blob().astype(np.complex64)), tmp_path / name)
    with pytest.raises(InputError, match=f"fixed image '{path}': complex-valued voxels"):
        imaging.read_image(path, "fixed image")
    assert not [w for w in recwarn if "Complex" in type(w.message).__name__]


@pytest.mark.parametrize("name", ["UP.MHA", "Mixed.Nii.Gz", "UP.NII"])
def test_image_suffixes_in_other_letters_are_read(tmp_path, capfd, name):
    path = tmp_path / name
    lower = _write(sitk.GetImageFromArray(_blob()), tmp_path / f"copy{name[name.index('.') :].lower()}")
    path.write_bytes(open(lower, "rb").read())
    assert imaging.read_image(path).GetSize() == (12, 11, 10)
    assert capfd.readouterr().err == ""  # nifticlib's "mixed case extension" lines


def test_a_pipe_or_a_device_is_refused_without_opening_it(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.nii")
    with pytest.raises(InputError, match="not a regular file"):
        imaging.read_image(tmp_path / "pipe.nii")
    with pytest.raises(InputError, match="'/dev/null': not a regular file"):
        imaging.read_image("/dev/null")


def test_transform_errors_are_one_line_without_hdf5_diagnostics(tmp_path, capfd):
    path = tmp_path / "t.h5"
    sitk.WriteTransform(sitk.TranslationTransform(3, (1.0, 2.0, 3.0)), str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="not a readable ITK transform file"):
        imaging.read_transform(path)
    sitk.WriteTransform(sitk.TranslationTransform(2, (1.0, 2.0)), str(tmp_path / "t2.TFM".lower()))
    (tmp_path / "t2.TFM").write_bytes((tmp_path / "t2.tfm").read_bytes())
    with pytest.raises(InputError, match="a 3D transform is required, this one is 2D"):
        imaging.read_transform(tmp_path / "t2.TFM")
    assert capfd.readouterr().err == ""
