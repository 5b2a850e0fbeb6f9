"""Tests of RLRegistrationLib.spatial: warping, composition, integration, resampling and Jacobians."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RLRegistrationLib.fields import geometry, spatial

INTERIOR = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))


def test_warp_zero_field_is_identity(rng):
    image = torch.from_numpy(rng.random((1, 2, 6, 7, 8))).float()
    out = spatial.warp(image, torch.zeros(1, 3, 6, 7, 8))
    torch.testing.assert_close(out, image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_warp_integer_shift_is_exact(rng, mode):
    image = torch.from_numpy(rng.random((1, 1, 8, 9, 10))).float()
    u = torch.zeros(1, 3, 8, 9, 10)
    u[:, 0], u[:, 1], u[:, 2] = 2.0, -1.0, 3.0  # (i, j, k) voxels
    out = spatial.warp(image, u, mode=mode)
    # out[k, j, i] = image[k + 3, j - 1, i + 2] where that voxel exists
    torch.testing.assert_close(out[0, 0, 0:5, 1:9, 0:8], image[0, 0, 3:8, 0:8, 2:10], atol=1e-5, rtol=0)


def test_compose_matches_two_step_warp(blob_array, sinusoid_field):
    shape = (24, 26, 28)
    image = torch.from_numpy(blob_array(shape, seed=3, blobs=14, sigma=(3.0, 5.0)))[None, None]
    phi = sinusoid_field(shape, 3.0, seed=1, shortest_wavelength=12).tensor()
    a = sinusoid_field(shape, 2.5, seed=2, shortest_wavelength=12).tensor()
    two_step = spatial.warp(spatial.warp(image, phi), a)  # M o (id + phi) o (id + a)
    composed = spatial.warp(image, spatial.compose_displacements(a, phi))
    error = (two_step - composed)[INTERIOR].abs()
    # the tolerance is the double interpolation of the two-step image; wrong compositions are far worse
    assert float(error.max()) < 0.03 * float(image.max())
    for wrong in (spatial.compose_displacements(phi, a), a + phi):
        wrong_error = (two_step - spatial.warp(image, wrong))[INTERIOR].abs()
        assert float(error.mean()) < 0.3 * float(wrong_error.mean())


def test_compose_matches_analytic_composition(sinusoid_field):
    shape = (20, 22, 24)
    phi = sinusoid_field(shape, 2.5, seed=4)
    a = sinusoid_field(shape, 2.0, seed=5)
    x = phi.index_points()
    a_x = a.at(x)
    expected = a_x + phi.at(x + a_x)  # phi_t(x) = a(x) + phi(x + a(x))
    got = spatial.compose_displacements(a.tensor(), phi.tensor())[0].permute(1, 2, 3, 0).double()
    inner = (slice(3, -3),) * 3
    assert float((got - expected)[inner].abs().max()) < 0.03


def test_step_to_reach_composes_to_the_target(sinusoid_field):
    shape = (20, 22, 24)
    previous = sinusoid_field(shape, 2.5, seed=6, shortest_wavelength=16).tensor()
    target = previous + sinusoid_field(shape, 1.5, seed=7, shortest_wavelength=16).tensor()
    step = spatial.step_to_reach(previous, target, iterations=5)
    composed = spatial.compose_displacements(step, previous)
    assert float((composed - target).abs().max()) < 0.02  # voxels; the naive difference is far off
    naive = spatial.compose_displacements(target - previous, previous)
    assert float((naive - target).abs().max()) > 10 * float((composed - target).abs().max())
    # a constant previous field is reached exactly; from the identity the step is the target itself
    constant = torch.full((1, 3, *shape), 1.25)
    exact = spatial.step_to_reach(constant, target, iterations=1)
    torch.testing.assert_close(spatial.compose_displacements(exact, constant), target, atol=1e-5, rtol=0)
    torch.testing.assert_close(spatial.step_to_reach(torch.zeros_like(target), target), target)


def test_integrate_constant_velocity_is_translation():
    v = torch.zeros(1, 3, 6, 7, 8)
    v[:, 0], v[:, 1], v[:, 2] = 1.5, -0.75, 2.0
    torch.testing.assert_close(spatial.integrate_velocity(v), v, atol=1e-5, rtol=0)


def test_integrate_velocity_inverse_composes_to_identity(sinusoid_field):
    shape = (24, 24, 24)
    v = sinusoid_field(shape, 3.0, seed=6).tensor()
    forward = spatial.integrate_velocity(v)
    backward = spatial.integrate_velocity(-v)
    assert float(forward.abs().max()) > 1.5  # a real deformation
    residual = spatial.compose_displacements(backward, forward)  # (id + forward) o (id + backward)
    assert float(residual[INTERIOR].abs().max()) < 0.05
    residual2 = spatial.compose_displacements(forward, backward)
    assert float(residual2[INTERIOR].abs().max()) < 0.05


def test_resize_displacement_keeps_physical_map(make_grid, rotation_matrix):
    direction = rotation_matrix(10, 25, -30)
    old = make_grid((9, 7, 6), (2.0, 3.0, 2.5), (-12.0, 5.0, 30.0), direction)
    new_size = (17, 13, 11)
    new_spacing = [s * (o - 1) / (n - 1) for s, o, n in zip(old.spacing, old.size, new_size)]
    new = make_grid(new_size, new_spacing, old.origin, direction)
    a = rotation_matrix(3, -4, 6) @ np.diag([1.1, 0.95, 1.02])
    t = np.array([2.0, -1.5, 3.0])
    u_old = spatial.displacement_from_affine(a, t, old)
    resized = spatial.resize_displacement(u_old, new.shape)
    assert resized.shape == (1, 3, *new.shape)
    expected_mm = geometry.voxel_to_physical(spatial.displacement_from_affine(a, t, new), new)
    got_mm = geometry.voxel_to_physical(resized, new)
    torch.testing.assert_close(got_mm, expected_mm, atol=2e-3, rtol=0)


def _centred_grid(make_grid, reference, size, spacing, direction):
    centre = reference.physical_extent_corners().mean(axis=0)
    origin = centre - direction @ ((np.asarray(size) - 1) / 2.0 * np.asarray(spacing))
    return make_grid(size, spacing, origin, direction)


def test_resample_field_to_rotated_anisotropic_grid(make_grid, rotation_matrix):
    source = make_grid((10, 9, 8), (6.0, 6.0, 6.0), (-30.0, -20.0, 15.0), rotation_matrix(0, 5, 10))
    target = _centred_grid(make_grid, source, (9, 7, 6), (2.5, 1.5, 3.0), rotation_matrix(30, -20, 40))
    # the target lies inside the source grid (no border clamping involved)
    idx = (target.physical_extent_corners() - source.origin) @ np.linalg.inv(
        source.index_to_physical_matrix
    ).T
    assert np.all(idx > 0) and np.all(idx < np.asarray(source.size) - 1)
    a = rotation_matrix(4, 3, -6) @ np.diag([1.05, 0.97, 1.02])
    t = np.array([2.0, -3.0, 1.5])
    u_source = spatial.displacement_from_affine(a, t, source)
    out = spatial.resample_field_to_grid(u_source, source, target)
    assert out.shape == (1, 3, *target.shape)
    x = geometry.physical_points(target).double()
    expected = (x @ torch.from_numpy(a).T + torch.from_numpy(t) - x).permute(3, 0, 1, 2)[None]
    torch.testing.assert_close(out.double(), expected, atol=2e-3, rtol=0)


def test_displacement_from_affine_matches_sitk(oblique_grid, rotation_matrix):
    a = rotation_matrix(5, 0, -5) * 1.1
    t = np.array([1.0, 2.0, -3.0])
    u = spatial.displacement_from_affine(a, t, oblique_grid)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(a.ravel()))
    affine.SetTranslation(tuple(t))
    g = oblique_grid
    field = sitk.TransformToDisplacementField(
        affine, sitk.sitkVectorFloat64, g.size, g.origin, g.spacing, g.direction
    )
    expected = geometry.field_image_to_tensor(field)
    torch.testing.assert_close(geometry.voxel_to_physical(u, g), expected, atol=2e-3, rtol=0)


def test_jacobian_uniform_scaling_on_oblique_grid(oblique_grid):
    centre = oblique_grid.physical_extent_corners().mean(axis=0)
    u = spatial.displacement_from_affine(1.2 * np.eye(3), centre - 1.2 * centre, oblique_grid)
    det = spatial.jacobian_determinant(u, oblique_grid)
    assert det.shape == (1, 1, *oblique_grid.shape)
    torch.testing.assert_close(det, torch.full_like(det, 1.728), atol=1e-4, rtol=0)


def test_jacobian_rotation_and_general_affine(oblique_grid, rotation_matrix):
    rotation = rotation_matrix(10, -7, 25)
    det = spatial.jacobian_determinant(
        spatial.displacement_from_affine(rotation, np.array([3.0, -2.0, 1.0]), oblique_grid), oblique_grid
    )
    torch.testing.assert_close(det, torch.ones_like(det), atol=1e-4, rtol=0)
    a = np.array([[1.1, 0.2, 0.0], [-0.05, 0.9, 0.1], [0.15, 0.0, 1.25]])  # non-symmetric, det 1.2673
    det = spatial.jacobian_determinant(
        spatial.displacement_from_affine(a, np.zeros(3), oblique_grid), oblique_grid
    )
    torch.testing.assert_close(det, torch.full_like(det, float(np.linalg.det(a))), atol=1e-4, rtol=0)


def test_jacobian_nonlinear_field_matches_sitk_in_grid_axes(oblique_grid, sinusoid_field):
    """For a non-affine field, compare with SimpleITK's filter applied to vectors rotated into the grid axes."""
    field = sinusoid_field(oblique_grid.shape, 1.5, seed=7, shortest_wavelength=10).tensor().double()
    det = spatial.jacobian_determinant(field, oblique_grid)[0, 0].numpy()
    u_mm = geometry.voxel_to_physical(field, oblique_grid)
    u_grid_axes = torch.einsum("ba,nbdhw->nadhw", torch.from_numpy(oblique_grid.direction_matrix), u_mm)
    image = sitk.GetImageFromArray(u_grid_axes[0].permute(1, 2, 3, 0).numpy(), isVector=True)
    image.SetSpacing(oblique_grid.spacing)
    reference = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(image, True))
    assert float(np.abs(det - 1).max()) > 0.2  # a real deformation
    np.testing.assert_allclose(det[1:-1, 1:-1, 1:-1], reference[1:-1, 1:-1, 1:-1], atol=1e-4)


def test_sample_image_at_points_matches_sitk_resample(
    oblique_grid, make_grid, rotation_matrix, blob_array, image_on_grid
):
    image = image_on_grid(blob_array(oblique_grid.shape, seed=2, blobs=8, sigma=(1.5, 3.0)), oblique_grid)
    target = _centred_grid(
        make_grid, oblique_grid, (11, 9, 10), (1.1, 0.9, 1.3), rotation_matrix(-25, 10, 50)
    )
    points = geometry.physical_points(target)
    got = spatial.sample_image_at_points(geometry.image_to_tensor(image), oblique_grid, points)[0, 0].numpy()
    expected = sitk.GetArrayFromImage(
        sitk.Resample(
            image, target.reference_image(), sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0
        )
    )
    index = (points.double().numpy() - oblique_grid.origin) @ np.linalg.inv(
        oblique_grid.index_to_physical_matrix
    ).T
    inside = np.all((index >= 0) & (index <= np.asarray(oblique_grid.size) - 1), axis=-1)
    assert inside.mean() > 0.3
    assert (~inside).any()
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-4)


def test_sample_image_at_points_padding(oblique_grid, blob_array, image_on_grid):
    image = geometry.image_to_tensor(image_on_grid(blob_array(oblique_grid.shape, seed=1), oblique_grid))
    inside = geometry.physical_points(oblique_grid)[2:4, 2:4, 2:4]
    outside = inside + torch.tensor([500.0, 0.0, 0.0])
    np.testing.assert_allclose(
        spatial.sample_image_at_points(image, oblique_grid, inside, padding_value=-7.0)[0, 0].numpy(),
        image[0, 0, 2:4, 2:4, 2:4].numpy(),
        atol=1e-4,
    )
    np.testing.assert_allclose(
        spatial.sample_image_at_points(image, oblique_grid, outside, padding_value=-7.0).numpy(),
        -7.0,
        atol=1e-6,
    )
    np.testing.assert_allclose(spatial.sample_image_at_points(image, oblique_grid, outside).numpy(), 0.0)


def test_jacobian_in_slabs_equals_the_whole_field_at_once(oblique_grid, sinusoid_field):
    """Slab by slab (each with its neighbour slices) gives the same central differences as the whole field,
    borders included, for any slab thickness."""
    field = sinusoid_field(oblique_grid.shape, 1.5, seed=3, shortest_wavelength=6).tensor().double()
    whole = spatial.jacobian_determinant(field, oblique_grid, slab=10_000)
    assert float((whole - 1).abs().max()) > 0.2
    for slab in (1, 2, 5):
        torch.testing.assert_close(
            spatial.jacobian_determinant(field, oblique_grid, slab=slab), whole, atol=1e-12, rtol=0
        )
