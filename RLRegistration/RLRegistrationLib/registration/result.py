"""What a registration gives: the transform ``T(x) = A(x + u(x))`` (fixed point -> moving point, LPS mm)
and its parts, with the do-no-harm verdicts and the steps run.

The displacement ``u`` is kept as float32 (rounded to ``io.transform_files.QUANTUM_MM``, so that the
written ``.h5`` holds exactly this transform); ITK's double-precision objects (``transform``,
``displacement``) are made only when asked for: a 1 mm whole-head field is 0.13 GB as float32 and 0.27 GB
per double copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..fields.geometry import Grid
from ..io.transform_files import HDF5_SUFFIXES, write_field_transform


@dataclass
class RegistrationResult:
    """The final transform and its parts. ``field_mm``: ``u`` as (k, j, i, 3) float32 LPS mm on
    ``output_grid``; ``image_grid``: where the warped image, the uncertainty map and Dice are (the fixed
    image's grid; None: ``output_grid``)."""

    affine: sitk.AffineTransform
    field_mm: np.ndarray
    weight_map: sitk.Image | None  # lambda on the working grid
    reports: list  # StepReport of each step up to the one this result is of
    output_grid: Grid  # the displacement field's grid
    uncertainty_map: sitk.Image | None = None  # trajectory spread (mm, float32) on ``image_grid``
    image_grid: Grid | None = None
    # of ``RegistrationSession.final_result``: the do-no-harm verdicts, and every step run (``reports`` ends
    # at the step kept)
    verdicts: list = field(default_factory=list)
    steps_run: list = field(default_factory=list)

    @property
    def displacement(self) -> sitk.Image:
        """``u`` as a sitkVectorFloat64 image on the output grid (a new image at each call)."""
        image = sitk.GetImageFromArray(self.field_mm.astype(np.float64), isVector=True)
        return self.output_grid.apply_to(image)

    @functools.cached_property
    def transform(self) -> sitk.CompositeTransform:
        """Composite ``A o (id + u)``: the displacement is applied first, then the affine (made once)."""
        composite = sitk.CompositeTransform(3)
        composite.AddTransform(self.affine)
        composite.AddTransform(sitk.DisplacementFieldTransform(self.displacement))
        return composite

    def write(self, path: str | Path) -> None:
        """Write the transform to ``path``: a ``.h5`` straight from the float32 field (compressed, no
        double copy), other ITK transform files through SimpleITK."""
        if Path(path).suffix.lower() in HDF5_SUFFIXES:
            write_field_transform(path, self.affine, self.field_mm, self.output_grid)
        else:
            sitk.WriteTransform(self.transform, str(path))

    def warp_image(self, moving: sitk.Image, interpolator: int = sitk.sitkLinear, default_value: float = 0.0):
        """The moving image resampled on the image grid (the fixed image's) through the transform (what the
        .h5 gives)."""
        reference = (self.image_grid or self.output_grid).reference_image(moving.GetPixelID())
        return sitk.Resample(moving, reference, self.transform, interpolator, default_value)
