"""Tests of RLRegistrationLib.geometry: grids, LPS/RAS and unit conversions, against SimpleITK."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RLRegistrationLib.fields import geometry
from RLRegistrationLib.fields.geometry import Grid


def _index_points(grid: Grid) -> np.ndarray:
    """(D, H, W, 3) integer indices (i, j, k) of every voxel."""
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    return np.stack([ii, jj, kk], axis=-1)


def test_grid_from_image_round_trip(oblique_grid):
    image = oblique_grid.reference_image()
    grid = Grid.from_image(image)
    assert grid == oblique_grid
    assert grid.shape == sitk.GetArrayViewFromImage(image).shape == (8, 10, 12)
    again = Grid.from_image(grid.reference_image(sitk.sitkInt16))
    assert again == grid
    assert geometry.image_to_tensor(image).shape == (1, 1, *grid.shape)


def test_affine_matches_sitk_index_to_point(oblique_grid, rng):
    image = oblique_grid.reference_image()
    for index in rng.uniform(-2, 12, (10, 3)):
        expected = image.TransformContinuousIndexToPhysicalPoint(index.tolist())
        got = oblique_grid.affine() @ np.append(index, 1.0)
        np.testing.assert_allclose(got[:3], expected, atol=1e-9)
        assert got[3] == 1.0


def test_physical_points_equal_sitk(oblique_grid):
    image = oblique_grid.reference_image()
    points = geometry.physical_points(oblique_grid).numpy()
    assert points.shape == (*oblique_grid.shape, 3)
    index = _index_points(oblique_grid)
    expected = np.array(
        [image.TransformIndexToPhysicalPoint([int(v) for v in idx]) for idx in index.reshape(-1, 3)]
    ).reshape(points.shape)
    np.testing.assert_allclose(points, expected, atol=1e-4)
    # the corners reported by the grid are the same voxel centres
    corners = oblique_grid.physical_extent_corners()
    for c in [(0, 0, 0), (11, 9, 7), (11, 0, 7), (0, 9, 0)]:
        point = image.TransformIndexToPhysicalPoint(c)
        assert np.min(np.linalg.norm(corners - point, axis=1)) < 1e-9


def _to_working_index(points: np.ndarray, grid: Grid) -> np.ndarray:
    return (points - np.asarray(grid.origin)) @ np.linalg.inv(grid.index_to_physical_matrix).T


def test_working_grid_multiple_isotropic_centred_covering(oblique_grid):
    work = geometry.working_grid(oblique_grid, spacing_mm=1.0, multiple=16)
    assert all(s % 16 == 0 and s >= 16 for s in work.size)
    assert work.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(work.direction_matrix, oblique_grid.direction_matrix, atol=1e-12)
    # centred: same physical centre
    centre_ref = oblique_grid.physical_extent_corners().mean(axis=0)
    centre_work = work.physical_extent_corners().mean(axis=0)
    np.testing.assert_allclose(centre_work, centre_ref, atol=1e-9)
    # covers the field of view: every reference corner voxel lies inside the working grid's cells
    idx = _to_working_index(oblique_grid.physical_extent_corners(), work)
    assert np.all(idx >= -0.5 - 1e-9) and np.all(idx <= np.asarray(work.size) - 0.5 + 1e-9)
    # not wastefully large: one block of 16 less would not cover the extent (16.5, 7.2, 15.4 mm)
    extent = (np.asarray(oblique_grid.size) - 1) * np.asarray(oblique_grid.spacing)
    assert np.all((np.asarray(work.size) - 16 - 1) * 1.0 < extent)


def test_working_grid_size_for_larger_reference(make_grid, rotation_matrix):
    reference = make_grid((100, 80, 30), (1.0, 1.2, 3.0), (10, -20, 5), rotation_matrix(0, 0, 30))
    work = geometry.working_grid(reference, spacing_mm=2.0, multiple=16)
    # fields of view 100, 96, 90 mm at 2 mm -> 50, 48, 45 voxels -> 64, 48, 48
    assert work.size == (64, 48, 48)
    assert work.spacing == (2.0, 2.0, 2.0)


def test_working_grid_max_voxels_cap(make_grid):
    reference = make_grid((100, 80, 60), (1.0, 1.0, 1.0), (0, 0, 0))
    free = geometry.working_grid(reference, spacing_mm=1.0, multiple=16)
    assert np.prod(free.size) > 48**3
    capped = geometry.working_grid(reference, spacing_mm=1.0, multiple=16, max_voxels=48**3)
    assert np.prod(capped.size) <= 48**3
    assert all(s % 16 == 0 for s in capped.size)
    assert capped.spacing[0] > 1.0 and len(set(capped.spacing)) == 1
    idx = _to_working_index(reference.physical_extent_corners(), capped)
    assert np.all(idx >= -0.5 - 1e-9) and np.all(idx <= np.asarray(capped.size) - 0.5 + 1e-9)


def test_working_grid_impossible_cap_raises(make_grid):
    reference = make_grid((20, 20, 20), (1.0, 1.0, 1.0), (0, 0, 0))

    def _timeout(signum, frame):
        raise TimeoutError("working_grid did not return within 1 s")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(ValueError):
            geometry.working_grid(reference, spacing_mm=1.0, multiple=16, max_voxels=1000)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_voxel_physical_round_trip(oblique_grid, rng):
    u_vox = torch.from_numpy(rng.normal(size=(1, 3, 4, 5, 6))).double()
    u_mm = geometry.voxel_to_physical(u_vox, oblique_grid)
    expected = np.einsum("ab,nbdhw->nadhw", oblique_grid.index_to_physical_matrix, u_vox.numpy())
    np.testing.assert_allclose(u_mm.numpy(), expected, atol=1e-12)
    # vector of one voxel along i is the first column of direction * spacing_i
    e_i = torch.zeros(1, 3, 1, 1, 1, dtype=torch.float64)
    e_i[0, 0] = 1.0
    np.testing.assert_allclose(
        geometry.voxel_to_physical(e_i, oblique_grid)[0, :, 0, 0, 0].numpy(),
        oblique_grid.direction_matrix[:, 0] * 1.5,
        atol=1e-12,
    )
    back = geometry.physical_to_voxel(u_mm, oblique_grid)
    np.testing.assert_allclose(back.numpy(), u_vox.numpy(), atol=1e-10)


def test_physical_to_normalized_corners(oblique_grid):
    image = oblique_grid.reference_image()
    size = np.asarray(oblique_grid.size)
    for corner in [(0, 0, 0), (1, 0, 0), (0, 1, 1), (1, 1, 1), (1, 0, 1)]:
        index = np.asarray(corner) * (size - 1)
        point = torch.tensor(
            image.TransformIndexToPhysicalPoint([int(v) for v in index]), dtype=torch.float64
        )
        normalized = geometry.physical_to_normalized(point, oblique_grid).numpy()
        np.testing.assert_allclose(normalized, 2.0 * np.asarray(corner) - 1.0, atol=1e-9)
    # the centre maps to 0
    centre = oblique_grid.physical_extent_corners().mean(axis=0)
    np.testing.assert_allclose(
        geometry.physical_to_normalized(torch.from_numpy(centre), oblique_grid).numpy(), 0.0, atol=1e-9
    )


def test_voxel_to_normalized_scaling():
    u = torch.ones(1, 3, 5, 9, 17)
    n = geometry.voxel_to_normalized(u)
    # channel i spans W=17 voxels, j spans H=9, k spans D=5
    np.testing.assert_allclose(n[0, :, 0, 0, 0].numpy(), [2 / 16, 2 / 8, 2 / 4], atol=1e-7)


def test_ijk_to_ras_matrix_matches_sitk_with_lps_flip(oblique_grid, rng):
    image = oblique_grid.reference_image()
    m = geometry.ijk_to_ras_matrix(oblique_grid)
    np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    for index in rng.integers(0, 8, (6, 3)):
        lps = np.asarray(image.TransformIndexToPhysicalPoint([int(v) for v in index]))
        ras = (m @ np.append(index, 1.0))[:3]
        np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)
    origin_ras, spacing, direction_ras = geometry.ras_grid_from_lps(oblique_grid)
    np.testing.assert_allclose(m[:3, :3], direction_ras @ np.diag(spacing), atol=1e-12)
    np.testing.assert_allclose(m[:3, 3], origin_ras, atol=1e-12)


def test_lps_vectors_to_ras_flips_first_two():
    v = np.arange(12.0).reshape(2, 2, 3)
    out = geometry.lps_vectors_to_ras(v)
    np.testing.assert_array_equal(out[..., 0], -v[..., 0])
    np.testing.assert_array_equal(out[..., 1], -v[..., 1])
    np.testing.assert_array_equal(out[..., 2], v[..., 2])
    assert v[0, 0, 1] == 1.0  # input untouched


def test_affine_to_matrix_with_centre(rotation_matrix, rng):
    transform = sitk.AffineTransform(3)
    a = rotation_matrix(5, -10, 8) @ np.diag([1.1, 0.9, 1.05])
    a[0, 1] += 0.05  # shear
    transform.SetMatrix(tuple(a.ravel()))
    transform.SetTranslation((3.0, -4.0, 2.5))
    transform.SetCenter((10.0, -20.0, 30.0))
    matrix, t = geometry.affine_to_matrix(transform)
    np.testing.assert_allclose(matrix, a, atol=1e-12)
    centre = np.array([10.0, -20.0, 30.0])
    np.testing.assert_allclose(t, np.array([3.0, -4.0, 2.5]) + centre - a @ centre, atol=1e-9)
    for x in rng.uniform(-100, 100, (5, 3)):
        np.testing.assert_allclose(matrix @ x + t, transform.TransformPoint(x.tolist()), atol=1e-9)
    identity_m, identity_t = geometry.affine_to_matrix(None)
    np.testing.assert_array_equal(identity_m, np.eye(3))
    np.testing.assert_array_equal(identity_t, np.zeros(3))


def test_field_image_tensor_round_trip(oblique_grid, rng):
    field = torch.from_numpy(rng.normal(size=(1, 3, *oblique_grid.shape))).float()
    image = geometry.field_tensor_to_image(field, oblique_grid)
    assert image.GetNumberOfComponentsPerPixel() == 3
    assert Grid.from_image(image) == oblique_grid
    # voxel (k=1, j=2, i=3) holds the vector of tensor position [:, :, 1, 2, 3]
    np.testing.assert_allclose(image.GetPixel(3, 2, 1), field[0, :, 1, 2, 3].numpy(), atol=1e-6)
    np.testing.assert_allclose(geometry.field_image_to_tensor(image).numpy(), field.numpy(), atol=1e-6)
    scalar = geometry.tensor_to_image(field[:, :1], oblique_grid)
    assert scalar.GetPixel(3, 2, 1) == pytest.approx(float(field[0, 0, 1, 2, 3]))
