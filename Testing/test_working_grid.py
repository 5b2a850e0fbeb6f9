"""The working grid: the same whatever order an image's voxels are stored in, cropped to what needs
registering, and the written field (on the working lattice) the same transform as on the fixed grid."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from RLRegistrationLib.fields.geometry import Grid, field_grid, padded_grid, working_grid
from RLRegistrationLib.io.sample_pair import SAMPLE_FILES
from RLRegistrationLib.registration.region import cropped_working_grid, registration_region
from RLRegistrationLib.registration.run_spec import RunSpec, build_session


def test_working_grid_ignores_the_order_the_voxels_are_stored_in():
    image = sitk.ReadImage(str(SAMPLE_FILES["fixed"]))
    grids = [
        working_grid(Grid.from_image(variant), 2.0)
        for variant in (
            image,
            sitk.Flip(image, [False, True, False]),  # what Slicer's loader may do to the index axes
            sitk.Flip(image, [True, False, True]),
            sitk.PermuteAxes(image, [2, 0, 1]),
        )
    ]
    for grid in grids[1:]:
        assert grid.size == grids[0].size
        np.testing.assert_allclose(grid.origin, grids[0].origin, atol=1e-9)
        np.testing.assert_allclose(grid.direction_matrix, grids[0].direction_matrix, atol=1e-12)
    np.testing.assert_allclose(grids[0].direction_matrix, np.eye(3), atol=1e-12)  # axes along L, P, S


def _padded_with_air(image: sitk.Image, voxels: int) -> sitk.Image:
    padded = sitk.ConstantPad(image, [voxels] * 3, [voxels] * 3, 0.0)
    return padded


def test_the_working_grid_covers_the_head_not_the_air_around_it():
    image = sitk.Cast(sitk.ReadImage(str(SAMPLE_FILES["fixed"])), sitk.sitkFloat32)
    roomy = _padded_with_air(image, 30)  # 60 mm of air on every side
    full = working_grid(Grid.from_image(roomy), 2.0)
    lattice, grid = cropped_working_grid(Grid.from_image(roomy), 2.0, registration_region(roomy, roomy))
    assert lattice == full
    assert np.prod(grid.size) < 0.5 * np.prod(full.size)
    assert all(n % 16 == 0 for n in grid.size)
    # the cropped grid holds every voxel with something in it
    array = sitk.GetArrayFromImage(image)
    k, j, i = np.nonzero(array > 0.1 * np.percentile(array, 99.5))
    points = (
        np.stack([i, j, k], axis=1) @ Grid.from_image(image).index_to_physical_matrix.T + image.GetOrigin()
    )
    index = (points - np.asarray(grid.origin)) @ np.linalg.inv(grid.index_to_physical_matrix).T
    assert np.all(index > -0.5) and np.all(index < np.asarray(grid.size) - 0.5)
    # a cap on the voxels is met on the crop, at a finer spacing than on the whole field of view
    _, capped = cropped_working_grid(
        Grid.from_image(roomy), 2.0, registration_region(roomy, roomy), max_voxels=48**3
    )
    assert np.prod(capped.size) <= 48**3
    assert capped.spacing[0] < working_grid(Grid.from_image(roomy), 2.0, max_voxels=48**3).spacing[0]


def test_the_field_written_on_the_working_lattice_is_the_transform_at_every_fixed_voxel():
    """A session on a pair with air around it, at 4 mm: its field is computed on a cropped grid and written
    on the (padded) working lattice, a fraction of the fixed grid's voxels. Read as ITK reads it (from the
    .h5), it gives at 1000 fixed voxels what the session samples there for the warped image and Dice (the
    computed field, clamped at the cropped grid's border), to within the file's rounding (2^-10 mm)."""
    import torch

    from RLRegistrationLib.fields.spatial import resample_field_to_grid
    from RLRegistrationLib.io.transform_files import QUANTUM_MM, write_transform_file

    fixed = _padded_with_air(sitk.Cast(sitk.ReadImage(str(SAMPLE_FILES["fixed"])), sitk.sitkFloat32), 20)
    moving = _padded_with_air(sitk.Cast(sitk.ReadImage(str(SAMPLE_FILES["moving"])), sitk.sitkFloat32), 20)
    session, _ = build_session(
        RunSpec(steps=2, spacing_mm=4.0, device="cpu", harm_check=False), fixed, moving
    )
    list(session.run(2))
    result = session.result()
    grid = Grid.from_image(fixed)
    lattice = working_grid(grid, 4.0)
    assert result.output_grid == field_grid(grid, lattice, "auto") == padded_grid(lattice)
    assert np.prod(result.output_grid.size) < 0.2 * np.prod(grid.size)
    assert np.prod(session.grid.size) < np.prod(lattice.size)  # computed on a crop of the lattice
    path = Path(tempfile.mkdtemp()) / "t.h5"
    write_transform_file(result.transform, path)
    written = sitk.ReadTransform(str(path))
    with torch.no_grad():
        u = (
            resample_field_to_grid(session.field_at().double(), session.grid, grid)[0]
            .permute(1, 2, 3, 0)
            .numpy()
        )
    rng = np.random.default_rng(0)
    index = rng.integers(0, np.asarray(grid.size), size=(1000, 3))
    points = index @ grid.index_to_physical_matrix.T + np.asarray(grid.origin)
    expected = [session.affine.TransformPoint(p + u[k, j, i]) for p, (i, j, k) in zip(points.tolist(), index)]
    got = [written.TransformPoint(p) for p in points.tolist()]
    assert np.abs(np.subtract(got, expected)).max() <= QUANTUM_MM  # half a quantum, through the affine
