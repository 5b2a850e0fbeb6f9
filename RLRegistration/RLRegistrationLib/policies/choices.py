"""The policies a panel offers, with what their model cards say (modality, sampling, defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .registry import DEFAULT_STEPS, registered_policies


@dataclass(frozen=True)
class PolicyChoice:
    """A policy the panel offers: registry name, one-line description, the modality it was trained for,
    whether it can sample several trajectories (the panel's Samples box; an uncertainty map), and its
    default number of steps and option values (the panel's Steps, Iterations and Regularization boxes
    follow them when the policy changes)."""

    name: str
    description: str
    modality: str
    card: Path | None = None
    supports_sampling: bool = False
    default_steps: int = DEFAULT_STEPS
    option_defaults: dict = field(default_factory=dict)  # e.g. iterations, regularization

    @property
    def label(self) -> str:
        return f"{self.name} — {self.modality}" if self.modality else self.name


def policy_choices() -> list[PolicyChoice]:
    """Every registered policy (``tto`` first, then the models folder's by name) as the panels show it."""
    choices = [
        PolicyChoice(
            name=name,
            description=entry.description,
            modality=entry.modality or "not stated",
            card=entry.card,
            supports_sampling=entry.supports_sampling,
            default_steps=entry.default_steps,
            option_defaults=dict(entry.option_defaults),
        )
        for name, entry in registered_policies().items()
    ]
    choices.sort(key=lambda c: (c.name != "tto", c.name))
    return choices
