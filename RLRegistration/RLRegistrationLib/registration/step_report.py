"""What one step of a registration session produced (``StepReport``), as the front-ends show it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepReport:
    """What one step produced. Arrays are on the working grid; ``index`` 0 is the state after the affine."""

    index: int
    # local NCC (window 9) of fixed and warped on the working grid (inside the masks), higher is better;
    # on a working grid of more than ``session.REPORT_MAX_VOXELS``, averaged over a regular subset of at
    # most that many
    similarity: float
    dice: float | None  # mean Dice of the label maps on the output grid (if labels were given)
    step_seconds: float
    elapsed_seconds: float
    diagnostics: dict[str, float] = field(default_factory=dict)
    max_displacement_mm: float = 0.0
    # spread of the total displacement over sampled trajectories (mm); None when the policy does not sample
    uncertainty_mean_mm: float | None = None
    uncertainty_max_mm: float | None = None
