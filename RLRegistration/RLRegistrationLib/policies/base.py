"""The interface of a step-wise registration policy: what it sees (``PolicyState``), what it proposes
(``PolicyStep``) and the two methods every policy implements (``Policy``).

A policy sees the pair on the working grid and the current total field, and proposes one *step* field
``a_t`` (voxel units of the working grid) that the session composes: ``phi_t = a_t + phi_{t-1} o (id + a_t)``.
It may also return a weight map ``lam`` in (0, 1] (spatially varying regularization), an uncertainty map
(policies that sample several trajectories: their spread in mm) and diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..fields.spatial import (
    warp,
)


@dataclass
class PolicyState:
    """What a policy sees at step ``step_index``: tensors (1, C, D, H, W) on the working grid.

    ``fixed_mask`` / ``moving_mask`` (1, 1, D, H, W) in [0, 1], when given, restrict the similarity: the
    fixed one on the working grid, the moving one resampled like ``moving`` (through the pre-alignment),
    to be warped with the field like the image."""

    fixed: torch.Tensor
    moving: torch.Tensor
    warped: torch.Tensor | None  # moving o (id + field); None for a policy with ``uses_warped = False``
    field: torch.Tensor
    step_index: int
    fixed_mask: torch.Tensor | None = None
    moving_mask: torch.Tensor | None = None
    # the coarsest voxel size (mm) of the two images along the working grid's array axes (D, H, W): a
    # thick-slice image has nothing to say about deformation finer than its slices
    resolution_mm: tuple[float, float, float] | None = None


@dataclass
class PolicyStep:
    """A policy's proposal: the step field (1, 3, D, H, W) in voxels, optional weight map (1, 1, D, H, W).

    ``uncertainty_map`` (1, 1, D, H, W), mm, on the working grid: per-voxel spread of the total
    displacement over sampled trajectories (None for policies that do not sample).
    """

    step_field: torch.Tensor
    weight_map: torch.Tensor | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)
    uncertainty_map: torch.Tensor | None = None


class Policy:
    """Interface of a step-wise policy. ``reset`` once per pair, then ``propose`` once per step."""

    name = "policy"
    description = ""
    modality = "any"
    supports_sampling = False  # True: accepts ``samples`` K > 1 and returns an uncertainty map
    uses_warped = True  # False: ``propose`` never reads ``state.warped`` (the session skips warping it)

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        """Called once per image pair: working-grid tensors in [0, 1] and the grid's (isotropic) spacing."""

    def propose(self, state: PolicyState) -> PolicyStep:
        raise NotImplementedError


def similarity_weight(
    fixed_mask: torch.Tensor | None, moving_mask: torch.Tensor | None, total: torch.Tensor
) -> torch.Tensor | None:
    """Where the similarity counts (1, 1, D, H, W): the fixed mask times the moving mask warped by the
    total field ``total`` (voxels); None without masks."""
    weight = fixed_mask
    if moving_mask is not None:
        warped = warp(moving_mask, total)
        weight = warped if weight is None else weight * warped
    return weight
