"""Tests of RLRegistrationLib.synthesis on small synthetic label maps (no shared data needed)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from RLRegistrationLib import synthesis
from RLRegistrationLib.fields.metrics import evaluation_labels

WM, GM, CSF, SKULL, SCALP = 2, 3, 24, 507, 509
SAMPLE_FILES = ("fixed.nii.gz", "moving.nii.gz", "fixed_labels.nii.gz", "moving_labels.nii.gz")


def make_head(shape=(32, 32, 32)) -> np.ndarray:
    """Concentric 'head': WM core, GM shell, CSF shell, skull, scalp, background corners."""
    grid = np.indices(shape, dtype=np.float64)
    center = (np.asarray(shape, dtype=np.float64) - 1) / 2
    r = np.sqrt(((grid - center.reshape(3, 1, 1, 1)) ** 2).sum(axis=0))
    labels = np.zeros(shape, dtype=np.uint16)
    labels[r < 15.5] = SCALP
    labels[r < 13.5] = SKULL
    labels[r < 11.5] = CSF
    labels[r < 9.5] = GM
    labels[r < 6.5] = WM
    return labels


def label_means(image: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    return {int(v): float(image[labels == v].mean()) for v in np.unique(labels)}


# ------------------------------------------------------------------------------------------- synthesis


def test_deterministic_for_seed():
    labels = make_head()
    a = synthesis.synthesize_image(labels, "random", np.random.default_rng(7))
    b = synthesis.synthesize_image(labels, "random", np.random.default_rng(7))
    c = synthesis.synthesize_image(labels, "random", np.random.default_rng(8))
    assert a.dtype == np.float32 and a.shape == labels.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(
        synthesis.synthesize_image(labels, "t1", 3), synthesis.synthesize_image(labels, "t1", 3)
    )


@pytest.mark.parametrize("contrast", ["t1", "t2", "random"])
@pytest.mark.parametrize("skull_strip", [True, False])
def test_output_range(contrast, skull_strip):
    image = synthesis.synthesize_image(
        make_head(), contrast, np.random.default_rng(0), skull_strip=skull_strip
    )
    assert image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.max() > 0.5


def test_t1_ordering_and_t2_reversed():
    labels = make_head()
    t1 = label_means(synthesis.synthesize_image(labels, "t1", np.random.default_rng(1)), labels)
    t2 = label_means(synthesis.synthesize_image(labels, "t2", np.random.default_rng(1)), labels)
    assert t1[WM] > t1[GM] > t1[CSF]
    assert t2[CSF] > t2[GM] > t2[WM]


def test_skull_strip_zeroes_outside_brain():
    labels = make_head()
    outside = ~synthesis.brain_mask(labels)
    assert outside.any() and (labels >= 500).any()
    stripped = synthesis.synthesize_image(labels, "t1", np.random.default_rng(2), skull_strip=True)
    assert np.all(stripped[outside] == 0)
    assert np.all(stripped[labels == WM] > 0)
    full = synthesis.synthesize_image(labels, "t1", np.random.default_rng(2), skull_strip=False)
    assert full[labels == SCALP].mean() > 0.1


def test_brain_mask():
    labels = np.array([0, 2, 24, 499, 500, 507])
    np.testing.assert_array_equal(synthesis.brain_mask(labels), [False, True, True, True, False, False])
    np.testing.assert_array_equal(synthesis.skull_strip_labels(labels), [0, 2, 24, 499, 0, 0])


def test_contrast_table():
    labels = [0, 2, 3, 4, 24, 99, 507, 777]
    t1 = synthesis.contrast_table("t1", labels)
    assert t1[0] == 0.0
    assert 0.85 <= t1[2] <= 0.9 and 0.55 <= t1[3] <= 0.6 and 0.15 <= t1[4] <= 0.2
    assert t1[99] == pytest.approx(t1[3], abs=0.05)  # unknown brain label: grey-ish
    assert 0.0 <= t1[777] <= 1.0
    assert synthesis.contrast_table("t1", [777])[777] == t1[777]  # seeded by the label
    t2 = synthesis.contrast_table("T2", labels)
    assert t2[24] > t2[3] > t2[2]
    r1 = synthesis.contrast_table("random", labels, np.random.default_rng(5))
    r2 = synthesis.contrast_table("random", labels, np.random.default_rng(5))
    assert r1 == r2 and r1[0] == 0.0
    assert all(0.0 <= v <= 1.0 for v in r1.values())
    with pytest.raises(ValueError):
        synthesis.contrast_table("flair", labels)


def test_explicit_contrast_dict():
    labels = make_head()
    image = synthesis.synthesize_image(
        labels, {WM: 0.2, GM: 0.9, CSF: 0.5}, 0, noise_std=0, bias_strength=0, blur_sigma_vox=0, texture_std=0
    )
    means = label_means(image, labels)
    assert means[GM] == pytest.approx(1.0) and means[WM] == pytest.approx(0.2 / 0.9, abs=1e-5)


def test_synthesize_image_rejects_bad_labels():
    with pytest.raises(ValueError):
        synthesis.synthesize_image(np.full((4, 4, 4), 1.5), "t1", 0)
    with pytest.raises(ValueError):
        synthesis.synthesize_image(np.zeros((4, 4)), "t1", 0)


def test_synthesize_volume_keeps_geometry():
    label_image = sitk.GetImageFromArray(make_head((24, 28, 32)))
    label_image.SetSpacing((1.5, 2.0, 2.5))
    label_image.SetOrigin((10.0, -20.0, 30.0))
    label_image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    image = synthesis.synthesize_volume(label_image, contrast="t1", rng=np.random.default_rng(0))
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == label_image.GetSize()
    assert image.GetSpacing() == label_image.GetSpacing()
    assert image.GetOrigin() == label_image.GetOrigin()
    assert image.GetDirection() == label_image.GetDirection()


# ---------------------------------------------------------------------------------------- grids, crops


def test_crop_or_pad_center():
    a = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    out = synthesis.crop_or_pad_center(a, (3, 8, 7))
    assert out.shape == (3, 8, 7)
    np.testing.assert_array_equal(out[:, 1:7, :], a[1:4])
    assert np.all(out[:, 0] == 0) and np.all(out[:, 7] == 0)
    field = np.ones((3, 4, 4, 4))
    assert synthesis.crop_or_pad_center(field, (2, 6, 4)).shape == (3, 2, 6, 4)


def test_downsample_labels_geometry():
    labels = make_head((31, 32, 33))
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin((1.0, 2.0, 3.0))
    image.SetDirection((1, 0, 0, 0, 0, -1, 0, -1, 0))
    down = synthesis.downsample_labels(image, 2.0)
    assert down.GetSpacing() == (2.0, 2.0, 2.0)
    assert down.GetOrigin() == image.GetOrigin() and down.GetDirection() == image.GetDirection()
    assert down.GetSize() == (17, 16, 16)
    assert down.GetPixelID() == image.GetPixelID()
    # Nearest neighbour on a 2x grid with the same origin picks every other voxel exactly.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(down), labels[::2, ::2, ::2])


def test_crop_image_keeps_physical_positions():
    labels = make_head((40, 36, 30))
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin((-5.0, 7.0, 2.0))
    image.SetSpacing((1.0, 1.2, 0.8))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    cropped = synthesis.crop_image_xyz(image, (20.0, 15.0, 25.0), (20, 44, 10))
    assert cropped.GetSize() == (20, 44, 10)
    for index in [(0, 0, 0), (5, 10, 3), (19, 43, 9)]:
        point = cropped.TransformIndexToPhysicalPoint(index)
        source = image.TransformPhysicalPointToIndex(point)
        inside = all(0 <= s < n for s, n in zip(source, image.GetSize()))
        assert cropped[index] == (image[source] if inside else 0)


# ------------------------------------------------------------------------------------------ deformation


def test_random_smooth_deformation():
    shape = (20, 24, 28)
    field = synthesis.random_smooth_deformation(
        shape, np.random.default_rng(0), max_disp_vox=3.0, control_spacing_vox=6.0
    )
    assert field.shape == (3, *shape) and field.dtype == np.float32
    magnitude = np.sqrt((field**2).sum(axis=0))
    assert magnitude.max() == pytest.approx(3.0, rel=1e-5)
    # Smooth: neighbouring voxels differ by at most ~2 * max_disp / control spacing per component.
    for axis in (1, 2, 3):
        assert np.abs(np.diff(field, axis=axis)).max() <= 2 * 3.0 / 6.0 * 1.5
    again = synthesis.random_smooth_deformation(
        shape, np.random.default_rng(0), max_disp_vox=3.0, control_spacing_vox=6.0
    )
    np.testing.assert_array_equal(field, again)
    # Much smoother than white noise of the same amplitude.
    noise = np.random.default_rng(1).standard_normal(field.shape)
    rough = np.abs(np.diff(noise, axis=1)).mean() / noise.std()
    assert np.abs(np.diff(field, axis=1)).mean() / field.std() < 0.3 * rough


# ------------------------------------------------------------------------------------------- shipped data


def test_eval_labels():
    labels = evaluation_labels()
    assert len(labels) == 30 and len(set(labels)) == 30
    assert {2, 3, 4, 41, 42, 43, 16, 24} <= set(labels)


def test_sample_pair_files():
    from RLRegistrationLib.io.sample_pair import SAMPLE_DIR as folder

    sizes = [(folder / name).stat().st_size for name in SAMPLE_FILES]
    assert sum(sizes) < 2 * 1024 * 1024
    eval_labels = set(evaluation_labels())
    for role in ("fixed", "moving"):
        image = sitk.ReadImage(str(folder / f"{role}.nii.gz"))
        labels = sitk.ReadImage(str(folder / f"{role}_labels.nii.gz"))
        assert image.GetSize() == labels.GetSize()
        np.testing.assert_allclose(image.GetSpacing(), labels.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(image.GetOrigin(), labels.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), labels.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(image.GetSpacing(), (2.0, 2.0, 2.0), atol=1e-5)
        array = sitk.GetArrayFromImage(image)
        label_array = sitk.GetArrayFromImage(labels)
        assert array.dtype == np.int16 and 0 <= array.min() and array.max() <= 1000
        assert label_array.max() < 500  # skull-stripped
        assert len(eval_labels & set(np.unique(label_array).tolist())) >= 25
        # Brain voxels are bright, background is dark.
        assert array[label_array > 0].mean() > 5 * max(array[label_array == 0].mean(), 1.0)
    fixed = sitk.ReadImage(str(folder / "fixed.nii.gz"))
    moving = sitk.ReadImage(str(folder / "moving.nii.gz"))
    assert not np.allclose(fixed.GetOrigin(), moving.GetOrigin())
