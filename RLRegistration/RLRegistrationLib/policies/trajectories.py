"""K sampled trajectories of a learned policy, and the uncertainty map their spread gives.

A sampling policy (``--samples K``) keeps K trajectories on its network grid, each with its own total
field phi_k (composed step by step like the session's), its own warped image (the moving image resampled
to the network grid, warped with phi_k) and its own random draw per step. The session's total field
follows their mean phi_bar = mean_k phi_k: the step returned to the session solves
``a + phi_{t-1} o (id + a) = phi_bar_t`` (``spatial.step_to_reach``). The uncertainty map is
sqrt(mean_k |phi_k - phi_bar|^2) in mm on the working grid.

The network grid may change between steps (SPAC's ``step_spacings_mm``): the trajectories and the moving
image are then resized to the new grid (``spatial.resize_displacement`` rescales the vectors). Past steps
are kept (up to ``HISTORY_BYTES``) so that a session can step back and continue; when a needed state was
dropped, the K trajectories restart from the session's field.
"""

from __future__ import annotations

import math

import torch

from ..errors import PolicyError
from ..fields.spatial import (
    compose_displacements,
    resize_displacement,
    resize_image,
    step_to_reach,
    warp,
)
from .base import PolicyState

HISTORY_BYTES = 512 * 2**20  # trajectories kept for stepping back (CPU memory), oldest dropped first


def check_sampling(model_dir: object, samples: int, temperature: float | None) -> int:
    """``samples`` as an int; ``PolicyError`` naming the model when K < 1 or the temperature is negative
    or not finite."""
    samples = int(samples)
    if samples < 1:
        raise PolicyError(f"policy '{model_dir}': samples must be >= 1, got {samples}")
    if temperature is not None and not (math.isfinite(float(temperature)) and float(temperature) >= 0):
        raise PolicyError(f"policy '{model_dir}': temperature must be >= 0, got {temperature}")
    return samples


class SampledTrajectories:
    """The K trajectories of one session (see the module docstring).

    ``reset`` once per pair with the working-grid moving image; per step, ``before`` gives the K fields and
    warped images on the current network grid, and ``advance`` takes the K step fields the network proposed
    there and returns what the session needs.
    """

    def __init__(self, samples: int, fixed_point_iterations: int = 5):
        self.samples = int(samples)
        self.fixed_point_iterations = int(fixed_point_iterations)
        self._moving_working: torch.Tensor | None = None
        self._moving: torch.Tensor | None = None  # the moving image on the current network grid
        self._history: dict[int, torch.Tensor] = {}  # step index -> trajectories (K, 3, *grid), CPU

    def reset(self, moving: torch.Tensor, shape: tuple[int, int, int]) -> None:
        """Start K trajectories at the identity on the network grid ``shape``."""
        self._moving_working = moving
        self._moving = None
        self._history = {0: torch.zeros((self.samples, 3, *shape))}

    def before(
        self, state: PolicyState, shape: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(K total fields before step ``state.step_index`` on grid ``shape``, the moving image warped by
        each, restarted?): restarted when the step's state was dropped or never made (the session stepped
        somewhere this policy did not take it), the K fields then start from the session's field."""
        index = state.step_index
        for later in [i for i in self._history if i > index]:
            del self._history[later]  # the session stepped back: those steps are gone
        restarted = index not in self._history
        if restarted:
            fields = resize_displacement(state.field, shape).expand(self.samples, -1, -1, -1, -1)
        else:
            fields = self._history[index].to(state.fixed.device)
            if tuple(fields.shape[2:]) != tuple(shape):
                fields = resize_displacement(fields, shape)
        if self._moving is None or tuple(self._moving.shape[2:]) != tuple(shape):
            self._moving = resize_image(self._moving_working, shape)
        warped = warp(self._moving.expand(self.samples, -1, -1, -1, -1), fields.contiguous())
        return fields.contiguous(), warped, restarted

    def advance(
        self, state: PolicyState, fields: torch.Tensor, steps: torch.Tensor, working_spacing_mm: float
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Compose the K ``steps`` (network-grid voxels) onto the K ``fields``; returns (the session's step
        toward their mean on the working grid, the uncertainty map in mm, diagnostics)."""
        working_shape = tuple(state.fixed.shape[2:])
        fields = compose_displacements(steps, fields)  # phi_k,t = a_k + phi_k,t-1 o (id + a_k)
        mean = fields.mean(dim=0, keepdim=True)
        target = resize_displacement(mean, working_shape)
        step = step_to_reach(state.field, target, self.fixed_point_iterations)
        residual = compose_displacements(step, state.field) - target
        uncertainty = spread_mm(fields, mean, working_shape, working_spacing_mm)
        self._remember(state.step_index + 1, fields)
        return (
            step,
            uncertainty,
            {
                "uncertainty_mean_mm": float(uncertainty.mean()),
                "uncertainty_max_mm": float(uncertainty.max()),
                "fixed_point_residual_vox": float(residual.abs().max()),
            },
        )

    def _remember(self, index: int, fields: torch.Tensor) -> None:
        self._history[index] = fields.cpu()
        size = fields.numel() * fields.element_size()
        while len(self._history) > 1 and size * len(self._history) > HISTORY_BYTES:
            del self._history[min(self._history)]


def spread_mm(
    fields: torch.Tensor, mean: torch.Tensor, working_shape: tuple[int, int, int], working_spacing_mm: float
) -> torch.Tensor:
    """sqrt(mean_k |phi_k - phi_bar|^2) in mm, (1, 1, *working_shape), of K fields on a network grid.

    Network-grid voxels are converted to mm per axis (the network grid spans the working grid's extent,
    corner-aligned, so its voxel size along an axis is ``spacing * (n_working - 1) / (n_network - 1)``);
    the scalar map is then interpolated to the working grid."""
    shape = tuple(fields.shape[2:])
    mm = [
        working_spacing_mm * (w - 1) / max(n - 1, 1) for w, n in zip(reversed(working_shape), reversed(shape))
    ]  # channels (i, j, k) <-> axes (W, H, D)
    scale = torch.tensor(mm, dtype=fields.dtype, device=fields.device).view(1, 3, 1, 1, 1)
    spread = ((fields - mean) * scale).pow(2).sum(dim=1, keepdim=True).mean(dim=0, keepdim=True).sqrt()
    return resize_image(spread, working_shape).clamp(min=0.0)
