"""MorphSeek as a step-wise policy: a Gaussian policy head on the network's latent map.

With ``samples`` K > 1 it keeps K trajectories on the network grid, each with its own total field, warped
image and latent samples; the session's total field follows their mean (``spatial.step_to_reach``) and
each step reports the per-voxel spread of the K total displacements in mm (the uncertainty map).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import PolicyError
from ..fields.spatial import (
    compose_displacements,
    resize_displacement,
    step_to_reach,
    warp,
)
from .base import PolicyState, PolicyStep
from .network_policy import NetworkPolicy

HISTORY_BYTES = 512 * 2**20  # trajectories kept for stepping back (CPU memory), oldest dropped first


class MorphSeekPolicy(NetworkPolicy):
    """A trained MorphSeek network as a step-wise policy, optionally sampling several trajectories.

    * ``samples`` K = 1 (default): one trajectory, the session's own. The latent is z = mu at
      ``temperature`` 0 (default: deterministic) or sampled with z = mu + tau sigma eps.
    * K > 1: the policy keeps K trajectories on the network grid, batched, each with its own total field
      phi_k (composed step by step like the session's), its own warped image (the moving image resampled
      once to the network grid, warped with phi_k) and its own latent sample at temperature tau
      (``temperature``, default 1). The session's total field follows the mean phi_bar = mean_k phi_k: the
      returned step solves ``a + phi_{t-1} o (id + a) = phi_bar_t`` (``spatial.step_to_reach``,
      ``fixed_point_iterations``). lambda is the mean of the K weight maps; ``uncertainty_map`` is
      sqrt(mean_k |phi_k - phi_bar|^2) in mm on the working grid.

    Sampling is reproducible: the noise comes from a generator seeded with ``seed`` (0 when None) at each
    ``reset``. The trajectories of past steps are kept (up to ``HISTORY_BYTES``) so that a session can step
    back and continue; when a needed state was dropped, the K trajectories restart from the session's field
    (diagnostic ``trajectories_restarted``).
    """

    family = "morphseek"
    supports_sampling = True

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        temperature: float | None = None,
        samples: int = 1,
        seed: int | None = None,
        max_step: float | None = None,
        input_spacing_mm: float | None = None,
        fixed_point_iterations: int = 5,
        diffeomorphic_steps: bool | None = None,
    ):
        samples = int(samples)
        if samples < 1:
            raise PolicyError(f"policy '{model_dir}': samples must be >= 1, got {samples}")
        if temperature is not None and not (math.isfinite(float(temperature)) and float(temperature) >= 0):
            raise PolicyError(f"policy '{model_dir}': temperature must be >= 0, got {temperature}")
        # float32: its sampled trajectories were only measured so (bfloat16 is for SPAC's steps)
        super().__init__(
            model_dir, device, max_step, input_spacing_mm, diffeomorphic_steps, precision="float32"
        )
        self.samples = samples
        self.temperature = float(temperature) if temperature is not None else (1.0 if samples > 1 else 0.0)
        self.seed = seed
        self.fixed_point_iterations = int(fixed_point_iterations)
        self._generator: torch.Generator | None = None
        self._moving: torch.Tensor | None = None
        self._history: dict[int, torch.Tensor] = {}  # step index -> trajectories (K, 3, *shape), CPU

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        super().reset(fixed, moving, spacing_mm)
        self._generator = self.seeded_generator(fixed.device, self.seed) if self.temperature > 0 else None
        self._history = {}
        self._moving = None
        if self.samples > 1:
            self._moving = self.to_network(moving)
            self._history[0] = torch.zeros((self.samples, 3, *self.shape))

    @torch.no_grad()
    def propose(self, state: PolicyState) -> PolicyStep:
        if self._fixed is None:
            self.reset(state.fixed, state.moving)
        if self.samples > 1:
            return self._propose_trajectories(state)
        out = self.network(
            self._fixed,
            self.to_network(state.warped),
            temperature=self.temperature,
            generator=self._generator,
            max_step=self.max_step,
        )
        step, weight = self.to_working(self.learned_step(out.step), out.weight, tuple(state.fixed.shape[2:]))
        return PolicyStep(
            step_field=step, weight_map=weight, diagnostics=self._diagnostics(out, step, weight)
        )

    def _diagnostics(self, out, step: torch.Tensor, weight: torch.Tensor) -> dict[str, float]:
        return {
            "latent_sigma": float(out.log_std.exp().mean()),
            "max_step_vox": float(step.abs().max()),
            "lambda_mean": float(weight.mean()),
            "temperature": self.temperature,
            "samples": float(self.samples),
        }

    def _trajectories(self, state: PolicyState) -> tuple[torch.Tensor, bool]:
        """(K total fields on the network grid before step ``state.step_index``, restarted?)."""
        index = state.step_index
        for later in [i for i in self._history if i > index]:
            del self._history[later]  # the session stepped back: those steps are gone
        if index in self._history:
            return self._history[index].to(state.fixed.device), False
        start = resize_displacement(state.field, self.shape)
        return start.expand(self.samples, -1, -1, -1, -1).contiguous(), True

    def _remember(self, index: int, fields: torch.Tensor) -> None:
        self._history[index] = fields.cpu()
        size = fields.numel() * fields.element_size()
        while len(self._history) > 1 and size * len(self._history) > HISTORY_BYTES:
            del self._history[min(self._history)]

    def _propose_trajectories(self, state: PolicyState) -> PolicyStep:
        k = self.samples
        working_shape = tuple(state.fixed.shape[2:])
        fields, restarted = self._trajectories(state)
        warped = warp(self._moving.expand(k, -1, -1, -1, -1), fields)
        out = self.network(
            self._fixed.expand(k, -1, -1, -1, -1),
            warped,
            temperature=self.temperature,
            generator=self._generator,
            max_step=self.max_step,
        )
        fields = compose_displacements(
            self.learned_step(out.step), fields
        )  # phi_k,t = a_k + phi_k,t-1 o (id + a_k)
        mean = fields.mean(dim=0, keepdim=True)
        target = resize_displacement(mean, working_shape)
        step = step_to_reach(state.field, target, self.fixed_point_iterations)
        residual = compose_displacements(step, state.field) - target
        weight = self.weight_to_working(out.weight.mean(dim=0, keepdim=True), working_shape)
        uncertainty = self.spread_mm(fields, mean, working_shape)
        self._remember(state.step_index + 1, fields)
        diagnostics = self._diagnostics(out, step, weight)
        diagnostics.update(
            {
                "uncertainty_mean_mm": float(uncertainty.mean()),
                "uncertainty_max_mm": float(uncertainty.max()),
                "fixed_point_residual_vox": float(residual.abs().max()),
                "trajectories_restarted": float(restarted),
            }
        )
        return PolicyStep(
            step_field=step, weight_map=weight, diagnostics=diagnostics, uncertainty_map=uncertainty
        )

    def spread_mm(
        self, fields: torch.Tensor, mean: torch.Tensor, working_shape: tuple[int, int, int]
    ) -> torch.Tensor:
        """sqrt(mean_k |phi_k - phi_bar|^2) in mm, (1, 1, *working_shape).

        Network-grid voxels are converted to mm per axis (the network grid spans the working grid's extent,
        corner-aligned, so its voxel size along an axis is ``spacing * (n_working - 1) / (n_network - 1)``);
        the scalar map is then interpolated to the working grid."""
        spacing = self.input_spacing_mm
        mm = [
            spacing * (w - 1) / max(n - 1, 1) for w, n in zip(reversed(working_shape), reversed(self.shape))
        ]  # channels (i, j, k) <-> axes (W, H, D)
        scale = torch.tensor(mm, dtype=fields.dtype, device=fields.device).view(1, 3, 1, 1, 1)
        squared = ((fields - mean) * scale).pow(2).sum(dim=1, keepdim=True).mean(dim=0, keepdim=True)
        spread = squared.sqrt()
        if tuple(spread.shape[2:]) != tuple(working_shape):
            spread = F.interpolate(spread, size=working_shape, mode="trilinear", align_corners=True)
        return spread.clamp(min=0.0)
