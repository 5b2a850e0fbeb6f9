"""The local volume change det J, the overlays' robust ranges, the comparison images and the read-out's
sampling (``fields.metrics``, ``frontends.overlay_display``), and ``rlreg register --jacobian`` (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from RLRegistrationLib.fields.metrics import jacobian_image, jacobian_of_arrays, jacobian_of_field
from RLRegistrationLib.frontends import overlay_display as od
from RLRegistrationLib.frontends.cli import main
from RLRegistrationLib.io.sample_pair import SAMPLE_DIR


def _oblique_direction(angle_deg: float = 25.0) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return rotation @ np.diag([1.0, -1.0, 1.0])


def _points(shape, spacing, direction) -> np.ndarray:
    """Physical points (k, j, i, 3) of a grid with origin 0."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    index = np.stack([i, j, k], -1) * np.asarray(spacing)
    return index @ np.asarray(direction).T


def test_det_j_is_one_for_a_constant_or_zero_field():
    shape, spacing, direction = (7, 8, 9), (1.5, 0.8, 2.5), _oblique_direction()
    for vector in ((0.0, 0.0, 0.0), (3.0, -2.0, 7.5)):
        vectors = np.broadcast_to(np.array(vector), (*shape, 3))
        np.testing.assert_allclose(jacobian_of_arrays(vectors, spacing, direction), 1.0, atol=1e-12)


@pytest.mark.parametrize("oblique", [False, True])
def test_det_j_of_a_known_affine_scaling_is_its_determinant(oblique):
    """u(x) = (M - I) x: det J = det M everywhere, on oblique anisotropic grids too (physical space)."""
    shape, spacing = (6, 7, 8), (1.2, 0.9, 2.0)
    direction = _oblique_direction() if oblique else np.eye(3)
    matrix = np.array([[1.2, 0.1, 0.0], [0.0, 0.9, 0.05], [0.02, 0.0, 1.1]])
    points = _points(shape, spacing, direction)
    vectors = points @ (matrix - np.eye(3)).T
    det = jacobian_of_arrays(vectors, spacing, direction)
    np.testing.assert_allclose(det, np.linalg.det(matrix), rtol=1e-10)
    # the same through a SimpleITK field (LPS) and through RAS arrays (two axes flipped): same det J
    image = sitk.GetImageFromArray(vectors, isVector=True)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(direction.ravel()))
    np.testing.assert_allclose(jacobian_of_field(image), np.linalg.det(matrix), rtol=1e-5)
    flip = np.diag([-1.0, -1.0, 1.0])
    ras = jacobian_of_arrays(vectors @ flip, spacing, flip @ direction)
    np.testing.assert_allclose(ras, det, rtol=1e-10)
    written = jacobian_image(image)
    assert written.GetPixelID() == sitk.sitkFloat32 and written.GetSpacing() == image.GetSpacing()


def test_robust_range_and_det_j_window_and_colors():
    rng = np.random.default_rng(0)
    data = rng.uniform(0.0, 10.0, 100_000).astype(np.float32)
    data[:10] = 1e6  # a few extreme voxels do not flatten the colours
    low, high = od.robust_range(data)
    assert abs(low - 0.1) < 0.05 and abs(high - 9.9) < 0.05
    assert od.robust_range(np.full(10, 2.0)) == (2.0, 2.0 + 1e-3)
    assert od.robust_range(np.array([np.nan])) is None
    det = 1.0 + 0.1 * rng.standard_normal(10_000)
    low, high = od.jacobian_window(det)
    assert abs((low + high) / 2 - 1.0) < 1e-12 and 0.2 < high - low < 0.8
    det[0] = -0.5  # folding: the window reaches below 0 and those bins take the signal colour
    window = od.jacobian_window(det)
    assert window[0] < 0.0
    colors = od.jacobian_colors(window)
    centres = window[0] + (np.arange(256) + 0.5) * (window[1] - window[0]) / 256
    assert np.all(colors[centres <= 0] == od.FOLDING_RGBA)
    middle = colors[np.argmin(np.abs(centres - 1.0))]
    assert np.all(middle[:3] > 0.9)  # white at det J = 1
    assert colors[-1][0] > colors[-1][2] and colors[centres > 0][0][2] > colors[centres > 0][0][0]


def test_compare_images_and_linear_sampling():
    fixed = np.zeros((16, 16, 16), np.float32)
    fixed[:, :, 8:] = 100.0
    warped = np.roll(fixed, 2, axis=2)
    difference = od.compare_images(fixed, warped, "difference")
    assert (
        difference.max() == pytest.approx(1.0) and np.count_nonzero(difference) == 16 * 16 * 4
    )  # the roll wraps: 2 columns at each edge
    checker = od.compare_images(fixed, warped, "checkerboard", (8, 8, 8))
    assert np.array_equal(checker[:8, :8, :8], od.normalized(fixed)[:8, :8, :8])
    assert np.array_equal(checker[8:, :8, :8], od.normalized(warped)[8:, :8, :8])
    with pytest.raises(ValueError, match="unknown comparison"):
        od.compare_images(fixed, warped, "blend")
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    assert od.sample_linear(array, np.array([2, 3, 1])) == array[1, 3, 2]
    assert od.sample_linear(array, np.array([2.5, 3, 1])) == pytest.approx(
        (array[1, 3, 2] + array[1, 3, 3]) / 2
    )
    assert od.sample_linear(array, np.array([6.0, 0, 0])) is None


def test_register_writes_the_jacobian_and_refuses_an_existing_one(tmp_path, capsys):
    out, jacobian = tmp_path / "t.h5", tmp_path / "detj.nii.gz"
    argv = ["register", str(SAMPLE_DIR / "fixed.nii.gz"), str(SAMPLE_DIR / "moving.nii.gz"), "-o", str(out)]
    argv += ["--jacobian", str(jacobian), "--steps", "1", "--iterations", "2", "--device", "cpu", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    det = sitk.ReadImage(str(jacobian))
    fixed = sitk.ReadImage(str(SAMPLE_DIR / "fixed.nii.gz"))
    assert det.GetPixelID() == sitk.sitkFloat32 and det.GetSize() == fixed.GetSize()
    values = sitk.GetArrayFromImage(det)
    assert 0.5 < float(np.median(values)) < 1.5 and np.isfinite(values).all()
    before = jacobian.stat().st_mtime_ns
    out.unlink()
    assert main(argv) == 2
    assert "--jacobian" in capsys.readouterr().err and not out.exists()
    assert jacobian.stat().st_mtime_ns == before
