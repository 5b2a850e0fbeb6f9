"""Quality presets of a ``tto`` registration: working grid, memory cap and step schedule, in one place for
the CLI (``--quality``), the Slicer panel and the browser app.

* ``standard``: a 2 mm working grid of at most 112^3 voxels, the policy's own schedule.
* ``fine``: a 1 mm working grid without the cap (never finer than the fixed image), four steps at 4, 4, 2
  and 1 mm with a 5-voxel NCC window. Chosen on training pairs by ``benchmarks/tto_schedule.py``
  (``results/tto_schedule_training_fast*.md``) and measured on the validation pairs against Greedy by
  ``benchmarks/accuracy.py`` (``benchmarks/RESULTS.md``). When the TTO maps a T2-like moving image to the
  fixed contrast (``intensity_mapping``), its 2 and 1 mm steps take 12 iterations instead of 5.
* ``followup``: ``fine`` with the regularization raised from 2 to 6, for two scans of one patient; on
  synthetic whole-head follow-ups its end-point error inside the brain was below Greedy's
  (``benchmarks/same_subject.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import SimpleITK as sitk


@dataclass(frozen=True)
class QualityPreset:
    """``max_working_voxels`` None = no cap; ``tto_levels_mm``: the resolution of each TTO step in mm (a
    preset with them is for the ``tto`` policy only and sets its number of steps; None: the policy's own
    schedule); ``tto_options``: further ``TestTimeOptimizationConfig`` values."""

    spacing_mm: float
    max_working_voxels: int | None
    max_memory_gib: float
    tto_levels_mm: tuple[float, ...] | None = None
    tto_options: tuple[tuple[str, object], ...] = ()

    @property
    def regularization(self) -> float | None:
        """The preset's TTO regularization weight (None: the policy's own, 2.0 for tto)."""
        return dict(self.tto_options).get("regularization")

    @property
    def steps(self) -> int | None:
        """Steps of a run with this preset when the user gives none (None: the policy's default)."""
        return None if self.tto_levels_mm is None else len(self.tto_levels_mm)

    def tto_overrides(self, spacing_mm: float, skip_levels: int = 0) -> dict:
        """The TTO options of this preset on a working grid of ``spacing_mm`` (empty for ``standard``), less
        the regularization (``regularization``: front-ends show it and let the user change it).
        ``skip_levels``: leave out the first levels (and their entries of per-step schedules), for a
        chain whose learned steps replace them."""
        if self.tto_levels_mm is None:
            return {}
        options = {
            k: (v[skip_levels:] or v[-1:]) if isinstance(v, tuple) else v
            for k, v in self.tto_options
            if k != "regularization"
        }
        return {"pyramid": pyramid_for(self.tto_levels_mm[skip_levels:], spacing_mm), **options}

    def working_spacing(self, fixed: sitk.Image) -> float:
        """The preset's working spacing; a preset with its own schedule never goes finer than the fixed
        image's finest spacing (a 1 mm grid on a 2 mm image would cost 8x for nothing)."""
        if self.tto_levels_mm is None:
            return self.spacing_mm
        return max(self.spacing_mm, float(min(fixed.GetSpacing())))

    def panel_settings(
        self, policy_steps: int, policy_regularization: float | None
    ) -> tuple[int, float | None]:
        """(steps, regularization) a panel shows when this preset is chosen: the preset's own where it has
        them, else the policy's measured defaults (``policy_regularization`` None: leave it as it is)."""
        return self.steps or policy_steps, self.regularization or policy_regularization


FINE_OPTIONS = (("ncc_window", 5), ("mapped_iterations", (5, 5, 12, 12)))
QUALITY_PRESETS = {
    "standard": QualityPreset(2.0, 112 * 112 * 112, 4.0),
    # with the intensity mapping on (T1 against T2: ``TestTimeOptimizationConfig.intensity_mapping``), 12
    # iterations at the 2 and 1 mm steps (training T2 pairs 1->2, 3->4: Dice 0.840 with 5, 0.846 with 8,
    # 0.851 with 12; benchmarks/RESULTS.md)
    "fine": QualityPreset(1.0, None, 8.0, (4.0, 4.0, 2.0, 1.0), FINE_OPTIONS),
    # same patient (baseline and follow-up): fine with a stiffer field, chosen on training subjects by
    # benchmarks/same_subject.py (RESULTS.md: end-point error 0.63 -> 0.52 mm)
    "followup": QualityPreset(1.0, None, 8.0, (4.0, 4.0, 2.0, 1.0), (*FINE_OPTIONS, ("regularization", 6.0))),
}
QUALITIES = list(QUALITY_PRESETS)


def pyramid_for(levels_mm: tuple[float, ...], spacing_mm: float) -> tuple[int, ...]:
    """TTO pyramid factors (working-grid voxels) that put each step at ``levels_mm``, never finer than the
    working grid itself."""
    return tuple(max(1, round(level / spacing_mm)) for level in levels_mm)
