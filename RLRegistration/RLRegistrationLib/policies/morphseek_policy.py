"""MorphSeek as a step-wise policy: a Gaussian policy head on the network's latent map.

With ``samples`` K > 1 it keeps K trajectories (``trajectories.SampledTrajectories``); the session's total
field follows their mean and each step reports the per-voxel spread of the K total displacements in mm (the
uncertainty map).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .base import PolicyState, PolicyStep
from .network_policy import NetworkPolicy
from .trajectories import check_sampling


class MorphSeekPolicy(NetworkPolicy):
    """A trained MorphSeek network as a step-wise policy, optionally sampling several trajectories.

    * ``samples`` K = 1 (default): one trajectory, the session's own. The latent is z = mu at
      ``temperature`` 0 (default: deterministic) or sampled with z = mu + tau sigma eps.
    * K > 1: K trajectories, batched (``trajectories.SampledTrajectories``), each with its own latent
      sample at temperature tau (``temperature``, default 1); the session follows their mean field
      (``fixed_point_iterations`` of ``spatial.step_to_reach``). lambda is the mean of the K weight maps;
      ``uncertainty_map`` is the spread of the K fields in mm on the working grid.

    Sampling is reproducible: the noise comes from a generator seeded with ``seed`` (0 when None) at each
    ``reset``.
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
        samples = check_sampling(model_dir, samples, temperature)
        # float32: its sampled trajectories were only measured so (bfloat16 is for SPAC's steps)
        super().__init__(
            model_dir, device, max_step, input_spacing_mm, diffeomorphic_steps, precision="float32"
        )
        self.init_sampling(samples, temperature, seed, fixed_point_iterations)

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        super().reset(fixed, moving, spacing_mm)
        self.reset_sampling(moving)

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

    def _propose_trajectories(self, state: PolicyState) -> PolicyStep:
        fields, warped, restarted = self._trajectories.before(state, self.shape)
        out = self.network(
            self._fixed.expand(self.samples, -1, -1, -1, -1),
            warped,
            temperature=self.temperature,
            generator=self._generator,
            max_step=self.max_step,
        )
        step, uncertainty, spread = self._trajectories.advance(
            state, fields, self.learned_step(out.step), self.input_spacing_mm
        )
        weight = self.weight_to_working(out.weight.mean(dim=0, keepdim=True), tuple(state.fixed.shape[2:]))
        diagnostics = {
            **self._diagnostics(out, step, weight),
            **spread,
            "trajectories_restarted": float(restarted),
        }
        return PolicyStep(
            step_field=step, weight_map=weight, diagnostics=diagnostics, uncertainty_map=uncertainty
        )
