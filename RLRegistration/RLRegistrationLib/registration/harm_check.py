"""Do no harm: each stage of a registration must align the images better than the stage before it, on a
measure that no stage optimized; a stage that does not is dropped and the one before it is kept.

The measure is the normalized gradient field (NGF; Haber and Modersitzki, 2006): at every voxel of a 2 mm
check grid over the fixed image's foreground, the squared cosine of the angle between the two images'
intensity gradients, each damped below its noise floor ``eta`` (a tenth of the mean gradient length), then
averaged. It does not depend on the contrast (T1 against FLAIR, inverted contrast) and it is neither what
the pre-alignment optimizes (Mattes mutual information) nor what the test-time optimization does (local NCC
of the images and of the intensity-mapped image). On a real clinical pair (T1 and FLAIR of one visit,
``benchmarks/clinical.py``) the deformable stage invented several mm of deformation that raised mutual
information and MIND but lowered NGF; on synthetic inter-subject pairs a good deformable stage raises it.

A candidate is accepted when its score exceeds the previous stage's by more than ``MARGIN``: a change
that the measure cannot tell from no change is not worth a transform (a same-visit pair stays as the
scanner aligned it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..fields.geometry import Grid, working_grid
from ..io.imaging import AntialiasedCopies, resample_to_grid

#: spacing of the check grid (mm)
CHECK_SPACING_MM = 2.0
#: a candidate must raise the score by more than this to replace the stage before it
MARGIN = 0.002
#: gradients shorter than this fraction of their mean length are damped (noise floor of NGF)
ETA_FRACTION = 0.1


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing a candidate stage with the stage before it (scores: higher is better)."""

    stage: str  # e.g. "affine pre-alignment", "deformable refinement"
    previous_stage: str
    score: float
    previous_score: float
    accepted: bool

    def summary(self) -> str:
        """One line for a user: what was kept and why."""
        change = f"gradient alignment {self.previous_score:.3f} -> {self.score:.3f}"
        if self.accepted:
            return f"{self.stage} kept ({change})"
        return (
            f"{self.stage} dropped: it did not improve the alignment ({change}, needs > +{MARGIN:g}); "
            f"the result is the {self.previous_stage}"
        )


class HarmCheck:
    """Scores transforms (fixed point -> moving point) of ``moving`` onto ``fixed`` by NGF on a check grid
    over the fixed image's foreground (inside ``fixed_mask`` when given)."""

    def __init__(
        self,
        fixed: sitk.Image,
        moving: sitk.Image,
        fixed_mask: sitk.Image | None = None,
        spacing_mm: float = CHECK_SPACING_MM,
        copies: AntialiasedCopies | None = None,
    ):
        self.grid = working_grid(Grid.from_image(fixed), spacing_mm, multiple=1)
        # smoothed once for the check grid: each candidate transform only resamples it
        copies = copies or AntialiasedCopies()
        self.moving = copies.get(moving, float(min(self.grid.spacing)))
        self.fixed = sitk.GetArrayFromImage(resample_to_grid(fixed, self.grid, copies=copies))
        self.fixed_gradient = _gradient(self.fixed)
        region = _foreground(self.fixed)
        if fixed_mask is not None:
            inside = resample_to_grid(sitk.Cast(fixed_mask, sitk.sitkFloat32), self.grid)
            region &= sitk.GetArrayViewFromImage(inside) > 0.5
        self.region = region
        self._moving_support = None

    def _warped(self, transform: sitk.Transform | None) -> tuple[np.ndarray, np.ndarray]:
        """The moving image on the check grid through ``transform``, and where it has data."""
        warped = sitk.GetArrayFromImage(resample_to_grid(self.moving, self.grid, transform, antialias=False))
        ones = sitk.Image(self.moving.GetSize(), sitk.sitkFloat32) + 1.0
        ones.CopyInformation(self.moving)
        inside = sitk.Resample(
            ones, self.grid.reference_image(), transform or sitk.Transform(), sitk.sitkLinear, 0.0
        )
        return warped, sitk.GetArrayViewFromImage(inside) > 0.99

    def scores(self, transforms: list[sitk.Transform | None]) -> list[float]:
        """NGF of each transform, all on the same voxels (the fixed foreground where every warped moving
        image has data), so that the scores compare."""
        warped = [self._warped(t) for t in transforms]
        region = self.region.copy()
        for _, inside in warped:
            region &= inside
        if region.sum() < 100:  # nothing left to compare on
            return [float("nan")] * len(transforms)
        return [_ngf(self.fixed_gradient, _gradient(image), region) for image, _ in warped]

    def motion_mm(self, transform: sitk.Transform | None) -> float:
        """The largest distance (mm) ``transform`` moves a point of the fixed foreground (at most 4000
        points of the check grid)."""
        if transform is None:
            return 0.0
        index = np.argwhere(self.region)[:, ::-1].astype(np.float64)  # (i, j, k)
        index = index[:: max(1, len(index) // 4000)]
        points = index @ self.grid.index_to_physical_matrix.T + np.asarray(self.grid.origin)
        moved = np.array([transform.TransformPoint(p) for p in points.tolist()])
        return float(np.linalg.norm(moved - points, axis=1).max()) if len(points) else 0.0

    def compare(
        self,
        previous: sitk.Transform | None,
        candidate: sitk.Transform,
        stage: str,
        previous_stage: str,
    ) -> Verdict:
        """Whether ``candidate`` improves on ``previous`` by more than ``MARGIN`` (a score that cannot be
        computed, e.g. no overlap, accepts the candidate: the registration's own checks speak there)."""
        before, after = self.scores([previous, candidate])
        accepted = not np.isfinite(before) or not np.isfinite(after) or after > before + MARGIN
        return Verdict(stage, previous_stage, after, before, bool(accepted))


def _gradient(image: np.ndarray) -> np.ndarray:
    """Central-difference gradient (3, D, H, W) in check-grid voxels (isotropic: the units cancel in NGF)."""
    return np.stack(np.gradient(image.astype(np.float32, copy=False)), axis=0)


def _ngf(fixed_gradient: np.ndarray, moving_gradient: np.ndarray, region: np.ndarray) -> float:
    f = fixed_gradient[:, region]
    m = moving_gradient[:, region]
    f2, m2 = (f * f).sum(axis=0), (m * m).sum(axis=0)
    eta_f = ETA_FRACTION * float(np.sqrt(f2).mean())
    eta_m = ETA_FRACTION * float(np.sqrt(m2).mean())
    dot = (f * m).sum(axis=0)
    return float(np.mean(dot * dot / ((f2 + eta_f**2) * (m2 + eta_m**2))))


def _foreground(image: np.ndarray) -> np.ndarray:
    """Voxels above a tenth of the robust intensity range (the head or body, not the air around it; for CT
    too, whose air is -1000)."""
    low, high = (float(v) for v in np.percentile(image, [0.5, 99.5]))
    return image > low + 0.1 * (high - low) if high > low else np.ones(image.shape, bool)
