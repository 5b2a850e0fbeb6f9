"""Policies made of policies: a learned policy followed by test-time optimization (``<id>+tto``), and
a wrapper that changes the lambda map a policy returns (ablations of the spatially varying regularization).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .base import Policy, PolicyState, PolicyStep
from .tto import TestTimeOptimizationPolicy, make_tto_policy


class ChainedPolicy(Policy):
    """``first`` for ``first_steps`` steps, then test-time optimization (``then``) continuing from the
    learned field (the session's total field) with the last learned lambda as its fixed weight map."""

    def __init__(self, first: Policy, first_steps: int, then: TestTimeOptimizationPolicy):
        self.first, self.first_steps, self.then = first, int(first_steps), then
        self.name = f"{first.name}+{then.name}"
        self.description = f"{first.description}; then test-time optimization"
        self.modality = first.modality
        self.supports_sampling = bool(getattr(first, "supports_sampling", False))
        self._weights: dict[int, torch.Tensor | None] = {}

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        self._weights = {}
        self.first.reset(fixed, moving, spacing_mm)
        self.then.fixed_weight_map = None
        self.then.reset(fixed, moving, spacing_mm)

    def _learned_weight_map(self, step_index: int) -> torch.Tensor | None:
        for index in range(min(step_index, self.first_steps) - 1, -1, -1):
            if self._weights.get(index) is not None:
                return self._weights[index]
        return None

    def propose(self, state: PolicyState) -> PolicyStep:
        if state.step_index < self.first_steps:
            proposal = self.first.propose(state)
            self._weights[state.step_index] = proposal.weight_map
            proposal.diagnostics["stage"] = 0.0
            return proposal
        weight = self._learned_weight_map(state.step_index)
        if weight is not None and self.then.fixed_weight_map is not weight:
            self.then.fixed_weight_map = weight  # used as is (interpolated to each pyramid level)
            self.then.weight_logits = None
        sub_state = replace(state, step_index=state.step_index - self.first_steps)
        proposal = self.then.propose(sub_state)
        proposal.diagnostics["stage"] = 1.0
        return proposal


def chained_tto_policy(first: Policy, first_steps: int, tto: dict, name: str = "tto") -> ChainedPolicy:
    """``first`` for ``first_steps`` steps, then test-time optimization with the options ``tto``
    (``TestTimeOptimizationConfig`` fields) regularized by ``first``'s last lambda map."""
    return ChainedPolicy(first, first_steps, make_tto_policy(name, **tto))


class WeightMapOverride(Policy):
    """Wraps a policy and changes the lambda map it returns: times ``scale``; with ``uniform``, a uniform
    map of its mean times ``scale``; with ``value``, a uniform map of that value, or that map when it is a
    tensor (1, 1, D, H, W) of the working grid. The ablations of the spatially varying regularization
    (benchmarks) and the uniform-lambda chain runs of the weight-map training stage
    (``training.weight_map``)."""

    def __init__(
        self,
        inner: Policy,
        scale: float = 1.0,
        uniform: bool = False,
        value: float | torch.Tensor | None = None,
    ):
        self.inner, self.scale, self.uniform, self.value = inner, float(scale), bool(uniform), value
        self.name, self.description, self.modality = inner.name, inner.description, inner.modality

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        self.inner.reset(fixed, moving, spacing_mm)

    def propose(self, state: PolicyState) -> PolicyStep:
        step = self.inner.propose(state)
        if step.weight_map is not None:
            weight = step.weight_map
            if isinstance(self.value, torch.Tensor):
                weight = self.value
            elif self.value is not None:
                weight = torch.full_like(weight, float(self.value))
            elif self.uniform:
                weight = torch.full_like(weight, float(weight.mean()))
            step.weight_map = weight * self.scale
        return step
