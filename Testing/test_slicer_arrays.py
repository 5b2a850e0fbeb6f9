"""The RAS grid-transform arrays built for Slicer move points exactly as the ITK transform (.h5) does.

* identity RAS direction (LPS direction diag(-1, -1, 1)): the arrays go into a real ``vtk.vtkGridTransform``
  through the same ``vtk_displacement_grid`` helper the Slicer module uses;
* rotated grid: pip ``vtk`` has no ``vtkOrientedGridTransform`` (it lives in Slicer's vtkAddon), so the numpy
  copy of its lookup (``transform_points_ras``) is used, itself checked against vtk in the first case;
* round trip through a written ``.h5``; affine + deformation flattened into one field.

vtkGridTransform computes the interpolation fraction in 16-bit fixed point (1/65536 of a voxel), so vtk is
compared at 1e-4 mm; the numpy lookup and ITK agree to 1e-6 mm.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from grid_lookup import transform_points_ras

from RLRegistrationLib.fields.geometry import Grid
from RLRegistrationLib.io.export import total_displacement
from RLRegistrationLib.io.slicer_arrays import homogeneous, ras_arrays, slicer_grid_arrays
from RLRegistrationMRML.transform_grids import vtk_displacement_grid

vtk = pytest.importorskip("vtk")

FLIP = np.array([-1.0, -1.0, 1.0])
VTK_ATOL = 1e-4  # mm: vtkGridTransform's 1/65536-voxel fixed-point interpolation fraction


def smooth_displacement(grid: Grid, amplitude_mm: float, seed: int) -> sitk.Image:
    """Smooth random LPS displacement (mm) on ``grid``, sitkVectorFloat64."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(0, 1, n) for n in grid.shape), indexing="ij")
    vectors = np.zeros((*grid.shape, 3))
    for c in range(3):
        a, b, ph = rng.uniform(1, 3, 3), rng.uniform(-1, 1, 3), rng.uniform(0, 2 * np.pi)
        vectors[..., c] = amplitude_mm * np.sin(a[0] * i + a[1] * j + a[2] * k + ph) * (0.5 + 0.5 * b[c])
    return grid.apply_to(sitk.GetImageFromArray(vectors, isVector=True))


def inside_points_lps(grid: Grid, n: int, seed: int, margin: float = 0.6) -> np.ndarray:
    """Random LPS points well inside the grid (continuous indices away from the border)."""
    rng = np.random.default_rng(seed)
    index = rng.uniform(margin, np.asarray(grid.size) - 1 - margin, (n, 3))
    return index @ grid.index_to_physical_matrix.T + np.asarray(grid.origin)


def itk_points(transform: sitk.Transform, points_lps: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(tuple(p)) for p in points_lps])


def vtk_points(transform, points_ras: np.ndarray) -> np.ndarray:
    return np.array([transform.TransformPoint(*p) for p in points_ras])


def vtk_grid_transform(arrays):
    image = vtk_displacement_grid(arrays)
    transform = vtk.vtkGridTransform()
    transform.SetDisplacementGridData(image)
    transform.SetInterpolationModeToLinear()
    return transform


@pytest.fixture
def ras_identity_grid(make_grid) -> Grid:
    # LPS direction diag(-1, -1, 1) is the identity in RAS: what a plain vtkGridTransform can represent
    return make_grid((9, 8, 7), (1.5, 2.0, 2.5), (12.0, -20.0, 7.5), np.diag([-1.0, -1.0, 1.0]))


def test_identity_direction_vtk_grid_transform_matches_itk(ras_identity_grid):
    grid = ras_identity_grid
    displacement = smooth_displacement(grid, 3.0, seed=1)
    arrays = slicer_grid_arrays(displacement)
    np.testing.assert_allclose(arrays.direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(arrays.origin, FLIP * np.asarray(grid.origin))

    itk = sitk.DisplacementFieldTransform(sitk.Image(displacement))
    points_lps = inside_points_lps(grid, 40, seed=2)
    expected_ras = itk_points(itk, points_lps) * FLIP
    got = vtk_points(vtk_grid_transform(arrays), points_lps * FLIP)
    np.testing.assert_allclose(got, expected_ras, atol=VTK_ATOL)
    np.testing.assert_allclose(transform_points_ras(points_lps * FLIP, arrays), expected_ras, atol=1e-6)
    # grid nodes themselves: RAS vectors are the LPS vectors with the first two components negated
    node = np.asarray(grid.origin)
    np.testing.assert_allclose(
        vtk_points(vtk_grid_transform(arrays), (node * FLIP)[None])[0] - node * FLIP,
        np.asarray(sitk.GetArrayViewFromImage(displacement)[0, 0, 0]) * FLIP,
        atol=1e-9,
    )


def test_numpy_lookup_matches_vtk_inside_and_outside(ras_identity_grid):
    grid = ras_identity_grid
    arrays = slicer_grid_arrays(smooth_displacement(grid, 2.0, seed=3))
    transform = vtk_grid_transform(arrays)
    rng = np.random.default_rng(4)
    # inside, on the border and well outside (vtkGridTransform clamps to the border there)
    index = rng.uniform(-3, np.asarray(grid.size) + 2, (60, 3))
    points_ras = (index @ grid.index_to_physical_matrix.T + np.asarray(grid.origin)) * FLIP
    np.testing.assert_allclose(
        transform_points_ras(points_ras, arrays), vtk_points(transform, points_ras), atol=VTK_ATOL
    )


def test_vectors_must_be_point_data_scalars(ras_identity_grid):
    """The trap seen in other extensions: vectors set with SetVectors leave the transform at identity."""
    arrays = slicer_grid_arrays(smooth_displacement(ras_identity_grid, 2.0, seed=5))
    image = vtk_displacement_grid(arrays)
    assert image.GetPointData().GetScalars().GetNumberOfComponents() == 3
    assert image.GetDimensions() == ras_identity_grid.size

    wrong = vtk.vtkImageData()
    wrong.DeepCopy(image)
    vectors = wrong.GetPointData().GetScalars()
    wrong.GetPointData().SetScalars(None)
    wrong.GetPointData().SetVectors(vectors)
    transform = vtk.vtkGridTransform()
    transform.SetDisplacementGridData(wrong)
    transform.SetInterpolationModeToLinear()
    point = tuple(np.asarray(ras_identity_grid.origin) * FLIP + 3.0)
    good = vtk_grid_transform(arrays).TransformPoint(*point)
    assert not np.allclose(good, point)
    assert np.allclose(transform.TransformPoint(*point), point)


def test_rotated_grid_numpy_oriented_lookup_matches_itk(oblique_grid):
    grid = oblique_grid
    displacement = smooth_displacement(grid, 4.0, seed=6)
    arrays = slicer_grid_arrays(displacement)
    np.testing.assert_allclose(arrays.direction, np.diag(FLIP) @ grid.direction_matrix)
    itk = sitk.DisplacementFieldTransform(sitk.Image(displacement))
    points_lps = inside_points_lps(grid, 50, seed=7)
    np.testing.assert_allclose(
        transform_points_ras(points_lps * FLIP, arrays), itk_points(itk, points_lps) * FLIP, atol=1e-6
    )
    # a float32 copy (what the panel puts in Slicer) stays within display precision
    arrays32 = ras_arrays(sitk.GetArrayViewFromImage(displacement), grid, np.float32)
    assert arrays32.vectors.dtype == np.float32
    np.testing.assert_allclose(
        transform_points_ras(points_lps * FLIP, arrays32), itk_points(itk, points_lps) * FLIP, atol=1e-4
    )


def test_h5_round_trip_gives_the_same_points(oblique_grid, tmp_path, rotation_matrix):
    grid = oblique_grid
    displacement = smooth_displacement(grid, 3.0, seed=8)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple((1.05 * rotation_matrix(4, -3, 6)).ravel()))
    affine.SetTranslation((2.5, -1.0, 3.0))
    affine.SetCenter(tuple(np.asarray(grid.origin) + 5))
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    composite.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(displacement)))

    path = tmp_path / "result.h5"
    sitk.WriteTransform(composite, str(path))
    reloaded = sitk.ReadTransform(str(path))

    # affine and deformation flattened into one field on the fixed grid
    arrays = slicer_grid_arrays(total_displacement(composite, grid))

    points_lps = inside_points_lps(grid, 40, seed=9)
    expected = itk_points(composite, points_lps)
    np.testing.assert_allclose(itk_points(reloaded, points_lps), expected, atol=1e-9)
    # the flattened field interpolates A(x + u(x)) linearly between grid nodes: exact at the nodes,
    # close (affine is linear, u is smooth) in between
    np.testing.assert_allclose(transform_points_ras(points_lps * FLIP, arrays), expected * FLIP, atol=0.05)
    index = np.array([[1, 2, 3], [4, 5, 6], [0, 0, 0], [8, 6, 4]], dtype=np.float64)
    nodes = index @ grid.index_to_physical_matrix.T + np.asarray(grid.origin)
    np.testing.assert_allclose(
        transform_points_ras(nodes * FLIP, arrays), itk_points(reloaded, nodes) * FLIP, atol=1e-9
    )


def test_oriented_grid_direction_matrix_is_homogeneous(oblique_grid):
    arrays = slicer_grid_arrays(smooth_displacement(oblique_grid, 1.0, seed=10))
    matrix = homogeneous(arrays.direction)
    assert matrix.shape == (4, 4)
    np.testing.assert_allclose(matrix[:3, :3], arrays.direction)
    np.testing.assert_allclose(matrix[3], [0, 0, 0, 1])
    if hasattr(vtk, "vtkOrientedGridTransform"):  # only where vtkAddon is importable (Slicer's Python)
        transform = vtk.vtkOrientedGridTransform()
        transform.SetDisplacementGridData(vtk_displacement_grid(arrays))
        direction = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                direction.SetElement(r, c, matrix[r, c])
        transform.SetGridDirectionMatrix(direction)
        transform.SetInterpolationModeToLinear()
        points = inside_points_lps(oblique_grid, 10, seed=11) * FLIP
        np.testing.assert_allclose(
            [transform.TransformPoint(*p) for p in points],
            transform_points_ras(points, arrays),
            atol=VTK_ATOL,
        )
