"""SPAC as a step-wise policy: a trained planner-actor network whose plan may be sampled.

With ``samples`` K > 1 it keeps K trajectories (``trajectories.SampledTrajectories``), each with its own
sampled plans; the session's total field follows their mean and each step reports the per-voxel spread of
the K total displacements in mm (the uncertainty map).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .base import PolicyState, PolicyStep
from .network_policy import NetworkPolicy
from .trajectories import check_sampling


class SPACPolicy(NetworkPolicy):
    """A trained SPAC network as a step-wise policy.

    Per step: plan = mean of the planner at ``temperature`` 0 (default with one sample), else
    mean + tau sigma eps (reproducible with ``seed``); step field = actor(plan) bounded by ``max_step``
    voxels *of the network grid* (default: the card's ``inference.max_step``, else the training bound),
    lambda = the weight-map head, both returned on the session's working grid.

    ``samples`` K > 1: K trajectories at temperature tau (default 1), batched; the session follows their
    mean field, lambda is the mean of the K maps and ``uncertainty_map`` the spread of the K fields (mm).
    """

    family = "spac"
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
        diffeomorphic_steps: bool | None = None,
        step_spacings_mm: tuple[float, ...] | None = None,
        precision: str = "auto",
        fixed_point_iterations: int = 5,
    ):
        samples = check_sampling(model_dir, samples, temperature)
        super().__init__(
            model_dir, device, max_step, input_spacing_mm, diffeomorphic_steps, step_spacings_mm, precision
        )
        self.init_sampling(samples, temperature, seed, fixed_point_iterations)

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        super().reset(fixed, moving, spacing_mm)
        self.reset_sampling(moving)

    def _network(self, fixed: torch.Tensor, warped: torch.Tensor):
        """The network's output on this step's input (``finite_output``: bfloat16 where it is safe)."""
        return self.finite_output(
            lambda: self.network(
                fixed,
                warped,
                deterministic=self.temperature == 0,
                generator=self._generator,
                max_step=self.max_step,
                temperature=self.temperature,
            )
        )

    @torch.no_grad()
    def propose(self, state: PolicyState) -> PolicyStep:
        if self._fixed is None:
            self.reset(state.fixed, state.moving)
        self.select_grid(state.step_index)
        working_shape = tuple(state.fixed.shape[2:])
        if self.samples > 1:
            fields, warped, restarted = self._trajectories.before(state, self.shape)
            out = self._network(self._fixed.expand(self.samples, -1, -1, -1, -1), warped)
            step, uncertainty, spread = self._trajectories.advance(
                state, fields, self.learned_step(out.step.float()), self.input_spacing_mm
            )
            weight = self.weight_to_working(out.weight.float().mean(dim=0, keepdim=True), working_shape)
            extra = {**spread, "trajectories_restarted": float(restarted)}
        else:
            out = self._network(self._fixed, self.to_network(state.warped))
            step, weight = self.to_working(
                self.learned_step(out.step.float()), out.weight.float(), working_shape
            )
            uncertainty, extra = None, {}
        diagnostics = {
            "plan_norm": float(out.plan.norm(dim=1).mean()),
            "plan_sigma": float(out.log_std.exp().mean()),
            "max_step_vox": float(step.abs().max()),
            "lambda_mean": float(weight.mean()),
            "network_spacing_mm": self.network_spacing_mm,
            "network_bfloat16": float(self.bfloat16),
            "temperature": self.temperature,
            "samples": float(self.samples),
            **extra,
        }
        return PolicyStep(
            step_field=step, weight_map=weight, diagnostics=diagnostics, uncertainty_map=uncertainty
        )
