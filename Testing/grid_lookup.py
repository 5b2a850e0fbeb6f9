"""A numpy copy of ``vtkOrientedGridTransform``'s linear lookup, for tests that check the RAS arrays the
panels put into Slicer's grid transform nodes (pip's ``vtk`` has no ``vtkOrientedGridTransform``: it lives
in Slicer's vtkAddon). ``test_slicer_arrays`` checks this copy against vtk's ``vtkGridTransform``."""

from __future__ import annotations

import numpy as np

from RLRegistrationLib.io.slicer_arrays import SlicerGridArrays


def transform_points_ras(points_ras: np.ndarray, arrays: SlicerGridArrays) -> np.ndarray:
    """Move RAS points as ``vtkOrientedGridTransform`` (linear interpolation) does with these arrays.

    ``p -> p + d(index(p))`` with ``index = (D diag(s))^-1 (p - origin)`` and trilinear interpolation of the
    (k, j, i, 3) vectors; like ``vtkGridTransform``, indices outside the grid are clamped to its border.
    """
    points = np.atleast_2d(np.asarray(points_ras, dtype=np.float64))
    m = arrays.direction @ np.diag(arrays.spacing)
    index = (points - arrays.origin) @ np.linalg.inv(m).T  # (n, 3) continuous (i, j, k)
    vectors = np.asarray(arrays.vectors, dtype=np.float64)
    size = np.array([vectors.shape[2], vectors.shape[1], vectors.shape[0]])
    index = np.clip(index, 0.0, size - 1)
    base = np.minimum(np.floor(index).astype(int), np.maximum(size - 2, 0))
    frac = index - base
    out = np.zeros_like(points)
    for corner in range(8):
        offset = np.array([(corner >> 0) & 1, (corner >> 1) & 1, (corner >> 2) & 1])
        weight = np.prod(np.where(offset == 1, frac, 1.0 - frac), axis=1)
        idx = np.minimum(base + offset, size - 1)
        out += weight[:, None] * vectors[idx[:, 2], idx[:, 1], idx[:, 0]]
    return points + out
