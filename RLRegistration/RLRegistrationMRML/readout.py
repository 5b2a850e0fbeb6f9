"""The cursor read-out (issue 21), Qt-free: what the displayed result holds at one point of the views.

:meth:`ReadOut.readout` (a part of :class:`~RLRegistrationMRML.scene_outputs.SceneOutputs`) gives, at a
world RAS point (mm): the fixed and warped intensities (the volumes' own units), the displacement length
|u| (mm) of the displayed step, the regularization weight λ, the local volume change det J (no unit) and
the uncertainty (mm) where the policy gives one; each trilinear, None outside its volume. Both panels show
its :meth:`Readout.text`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer.util
import vtk

from .compare_views import worldIjkToRas


@dataclass(frozen=True)
class Readout:
    """Values at ``ras`` (world RAS, mm); None where the point is outside a volume or it has none."""

    ras: tuple[float, float, float]
    fixed: float | None = None  # the fixed volume's intensity
    warped: float | None = None  # the warped volume's intensity
    magnitude: float | None = None  # |u| in mm, the displayed deformable refinement
    weight: float | None = None  # λ, the regularization weight map (no unit)
    jacobian: float | None = None  # det J, local volume change (no unit; 1 = none, <= 0 folding)
    uncertainty: float | None = None  # mm

    def text(self) -> str:
        """One line: "R 12.0 A -3.5 S 40.0 mm · fixed 310 · warped 305 · |u| 1.42 mm · λ 0.61 · det J 1.03"."""
        r, a, s = self.ras
        parts = [
            f"{'R' if r >= 0 else 'L'} {abs(r):.1f} {'A' if a >= 0 else 'P'} {abs(a):.1f} "
            f"{'S' if s >= 0 else 'I'} {abs(s):.1f} mm"
        ]
        for label, value, unit in (
            ("fixed", self.fixed, ""),
            ("warped", self.warped, ""),
            ("|u|", self.magnitude, " mm"),
            ("λ", self.weight, ""),
            ("det J", self.jacobian, ""),
            ("uncertainty", self.uncertainty, " mm"),
        ):
            if value is not None:
                parts.append(f"{label} {value:.4g}{unit}")
        return " · ".join(parts)


def _continuousIndex(ijkToWorld: np.ndarray, ras) -> np.ndarray:
    point = np.linalg.solve(ijkToWorld, np.array([*ras, 1.0], dtype=np.float64))
    return point[:3]


def sampleVolume(volumeNode, ras) -> float | None:
    """A volume node's trilinear value at world RAS ``ras`` (mm), None outside it or without voxels."""
    from RLRegistrationLib.frontends.overlay_display import sample_linear

    if volumeNode is None or volumeNode.GetImageData() is None:
        return None
    return sample_linear(
        slicer.util.arrayFromVolume(volumeNode), _continuousIndex(worldIjkToRas(volumeNode), ras)
    )


class ReadOut:
    """The cursor read-out (a part of ``SceneOutputs``)."""

    def readout(self, params, ras) -> Readout:
        """What the views show at world RAS ``ras`` (mm): see :class:`Readout`. det J is computed for the
        displayed step when it was not yet (``updateJacobian``)."""
        ras = tuple(float(v) for v in ras)
        magnitude = None
        if self._displayedField is not None:
            from RLRegistrationLib.frontends.overlay_display import sample_linear

            field, ijkToRas, parent = self._displayedField
            ijkToWorld = np.asarray(ijkToRas, dtype=np.float64)
            if parent is not None and parent.IsTransformToWorldLinear():
                matrix = vtk.vtkMatrix4x4()
                parent.GetMatrixTransformToWorld(matrix)
                ijkToWorld = slicer.util.arrayFromVTKMatrix(matrix) @ ijkToWorld
            ijk = _continuousIndex(ijkToWorld, ras)
            components = [sample_linear(field.vectors[..., c], ijk) for c in range(3)]
            if all(c is not None for c in components):
                magnitude = float(np.linalg.norm(components))
            self.updateJacobian(params)
        return Readout(
            ras=ras,
            fixed=sampleVolume(params.fixedVolume, ras),
            warped=sampleVolume(params.warpedVolume, ras),
            magnitude=magnitude,
            weight=sampleVolume(params.weightMapVolume, ras),
            jacobian=sampleVolume(params.jacobianVolume, ras) if self._displayedField is not None else None,
            uncertainty=sampleVolume(params.uncertaintyVolume, ras),
        )
