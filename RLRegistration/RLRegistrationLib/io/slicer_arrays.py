"""Between Slicer (RAS, 4x4 matrices, numpy (k, j, i) arrays) and SimpleITK (LPS images), in plain numpy.

Every transform here maps a *fixed* point to the corresponding *moving* point (resampling direction,
Slicer's "transform from parent"). Slicer's parent transforms are given as 4x4 RAS matrices "to world"
(``GetMatrixTransformToWorld``: local coordinates of the node -> world coordinates). See
``docs/ARCHITECTURE.md`` (conventions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..fields.geometry import (
    Grid,
    affine_from_matrix,
    affine_to_matrix,
    ijk_to_ras_matrix,
    lps_vectors_to_ras,
    ras_grid_from_lps,
)

_FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_matrix_to_lps(matrix_ras: np.ndarray) -> np.ndarray:
    """A 4x4 point map in RAS coordinates expressed in LPS coordinates (``F M F`` with F = diag(-1,-1,1,1))."""
    matrix_ras = np.asarray(matrix_ras, dtype=np.float64)
    if matrix_ras.shape != (4, 4):
        raise InputError(f"a 4x4 matrix is required, got shape {matrix_ras.shape}")
    return _FLIP4 @ matrix_ras @ _FLIP4


def initial_transform_from_parents(
    moving_to_world_ras: np.ndarray | None = None, fixed_to_world_ras: np.ndarray | None = None
) -> sitk.AffineTransform | None:
    """The alignment the user sees in Slicer, as an initial transform for the session.

    ``moving_to_world_ras`` / ``fixed_to_world_ras``: the volumes' parent transforms as 4x4 RAS matrices
    *to world* (what ``vtkMRMLTransformNode.GetMatrixTransformToWorld`` returns; ``None`` = not transformed).
    A fixed voxel at local point ``x`` is shown at world ``G_f x``; the moving voxel shown there is at moving
    local point ``G_m^-1 G_f x``. So the transform fixed -> moving is ``G_m^-1 G_f`` in RAS, returned in LPS
    (SimpleITK) as an AffineTransform, or ``None`` when it is the identity.

    To pass a "transform from parent" matrix ``P`` of a single linear transform instead, use ``inv(P)``.
    """
    g_m = np.eye(4) if moving_to_world_ras is None else np.asarray(moving_to_world_ras, dtype=np.float64)
    g_f = np.eye(4) if fixed_to_world_ras is None else np.asarray(fixed_to_world_ras, dtype=np.float64)
    for name, m in (("moving", g_m), ("fixed", g_f)):
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise InputError(f"{name} parent transform: a finite 4x4 matrix is required")
        if abs(np.linalg.det(m[:3, :3])) < 1e-12 or np.any(np.abs(m[3] - [0, 0, 0, 1]) > 1e-9):
            raise InputError(f"{name} parent transform: the matrix is not an invertible affine transform")
    relative_ras = np.linalg.solve(g_m, g_f)  # G_m^-1 G_f
    if np.allclose(relative_ras, np.eye(4), atol=1e-12):
        return None
    return affine_from_matrix(ras_matrix_to_lps(relative_ras))


def image_from_slicer_arrays(array_kji: np.ndarray, ijk_to_ras: np.ndarray) -> sitk.Image:
    """A SimpleITK (LPS) image from a Slicer volume's voxel array (k, j, i) and its IJK-to-RAS matrix.

    The inverse of :func:`slicer_volume_arrays` (voxels are copied).
    """
    array_kji = np.asarray(array_kji)
    if array_kji.ndim != 3:
        raise InputError(f"a 3D scalar volume is required, the voxel array has shape {array_kji.shape}")
    ijk_to_lps = _FLIP4 @ np.asarray(ijk_to_ras, dtype=np.float64)
    columns = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(columns)):
        raise InputError("volume geometry: the IJK-to-RAS matrix has a zero or invalid axis")
    direction = columns / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in ijk_to_lps[:3, 3]))
    image.SetDirection(tuple(float(d) for d in direction.ravel()))
    return image


def labels_on_image_grid(labels: sitk.Image, image: sitk.Image) -> sitk.Image:
    """``labels`` as an integer image on ``image``'s grid (nearest neighbour when the grids differ)."""
    same = (
        labels.GetSize() == image.GetSize()
        and np.allclose(labels.GetSpacing(), image.GetSpacing(), atol=1e-6)
        and np.allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-4)
        and np.allclose(labels.GetDirection(), image.GetDirection(), atol=1e-6)
    )
    if same:
        labels = sitk.Image(labels)
        labels.CopyInformation(image)
        return labels
    return sitk.Resample(labels, image, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0)


def grid_geometry_matches(
    dimensions_ijk,
    origin,
    spacing,
    direction: np.ndarray | None,
    arrays: SlicerGridArrays,
    atol: float = 1e-6,
) -> bool:
    """True when an existing displacement grid has the geometry of ``arrays`` (so it can be updated in place)."""
    vectors = arrays.vectors
    if tuple(int(d) for d in dimensions_ijk) != (vectors.shape[2], vectors.shape[1], vectors.shape[0]):
        return False
    if not np.allclose(origin, arrays.origin, atol=atol) or not np.allclose(
        spacing, arrays.spacing, atol=atol
    ):
        return False
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)[:3, :3]
    return bool(np.allclose(direction, arrays.direction, atol=atol))


def homogeneous(matrix3: np.ndarray, translation: np.ndarray | None = None) -> np.ndarray:
    """4x4 matrix with ``matrix3`` as its upper-left 3x3 block (e.g. a grid direction for VTK) and
    ``translation`` (default 0) as its last column."""
    out = np.eye(4)
    out[:3, :3] = np.asarray(matrix3, dtype=np.float64)
    if translation is not None:
        out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


@dataclass
class SlicerGridArrays:
    """What a ``vtkOrientedGridTransform`` needs, in RAS: set as *transform from parent* in Slicer."""

    origin: np.ndarray  # (3,) RAS mm
    spacing: np.ndarray  # (3,) mm
    direction: np.ndarray  # (3, 3) RAS direction matrix (columns: i, j, k axes)
    vectors: np.ndarray  # (k, j, i, 3) RAS mm displacements, float64


def slicer_grid_arrays(displacement: sitk.Image) -> SlicerGridArrays:
    """Convert an LPS displacement image (fixed -> moving) into RAS arrays for a Slicer grid transform."""
    grid = Grid.from_image(displacement)
    origin, spacing, direction = ras_grid_from_lps(grid)
    vectors = lps_vectors_to_ras(sitk.GetArrayViewFromImage(displacement))
    return SlicerGridArrays(origin, spacing, direction, np.ascontiguousarray(vectors))


def slicer_volume_arrays(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(IJK-to-RAS 4x4 matrix, voxel array in (k, j, i) order) of an image, as Slicer volume nodes hold them."""
    return ijk_to_ras_matrix(Grid.from_image(image)), sitk.GetArrayFromImage(image)


def affine_ras_matrix(affine: sitk.Transform | None) -> np.ndarray:
    """4x4 RAS matrix of a linear LPS transform (fixed point -> moving point), for a linear transform node's
    "transform from parent"."""
    matrix, translation = affine_to_matrix(affine)
    return _FLIP4 @ homogeneous(matrix, translation) @ _FLIP4


def ras_arrays(vectors_lps: np.ndarray, grid: Grid, dtype=np.float64) -> SlicerGridArrays:
    """RAS arrays of LPS displacement vectors (k, j, i, 3) on ``grid``, in ``dtype``."""
    origin, spacing, direction = ras_grid_from_lps(grid)
    vectors = lps_vectors_to_ras(vectors_lps).astype(dtype, copy=False)
    return SlicerGridArrays(origin, spacing, direction, np.ascontiguousarray(vectors))
