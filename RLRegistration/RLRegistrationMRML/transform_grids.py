"""Displacement grids for Slicer's grid transform nodes (``vtkOrientedGridTransform``)."""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

from RLRegistrationLib.errors import InputError


def vtk_displacement_grid(arrays) -> vtk.vtkImageData:
    """``vtkImageData`` holding the displacement grid of ``arrays`` (``io.slicer_arrays.SlicerGridArrays``,
    RAS) for ``SetDisplacementGridData``.

    The vectors are point-data *scalars* with 3 components in (k, j, i) memory order (i fastest), origin and
    spacing set; the direction goes separately to ``vtkOrientedGridTransform.SetGridDirectionMatrix``
    (``io.slicer_arrays.homogeneous``). Vectors set as ``SetVectors`` would give the identity.
    """
    vectors = np.ascontiguousarray(arrays.vectors)
    if vectors.ndim != 4 or vectors.shape[3] != 3:
        raise InputError(f"displacement vectors must be (k, j, i, 3), got {vectors.shape}")
    image = vtk.vtkImageData()
    image.SetDimensions(int(vectors.shape[2]), int(vectors.shape[1]), int(vectors.shape[0]))
    image.SetOrigin(*(float(v) for v in arrays.origin))
    image.SetSpacing(*(float(v) for v in arrays.spacing))
    scalars = numpy_support.numpy_to_vtk(vectors.reshape(-1, 3), deep=True)
    scalars.SetName("displacement")
    image.GetPointData().SetScalars(scalars)
    return image
