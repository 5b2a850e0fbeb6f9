"""Validation during training (rank 0): deterministic episodes on held-out pairs (Dice of the true labels
before and after, folded percentage) and the best validation so far (``schedule.keep_best``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..fields.metrics import evaluation_labels
from ..policies.morphseek_network import MorphSeekNetwork
from .environment import RegistrationEnv


def deterministic_step(network: nn.Module, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """The step field of the deterministic policy of either family (SPAC: the plan's mean; MorphSeek:
    temperature 0, z = mu)."""
    if isinstance(network, MorphSeekNetwork):
        return network(fixed, warped, temperature=0.0).step
    return network(fixed, warped, deterministic=True).step


@torch.no_grad()
def validate(network: nn.Module, pairs: list[dict], steps: int, device: torch.device) -> dict[str, float]:
    """Deterministic episodes on the validation pairs: mean Dice (true labels, the 30 evaluation labels
    present) before and after ``steps`` steps, and the folded percentage. ``network``: a policy network
    of either family, or a training agent holding one as ``.network``."""
    labels = evaluation_labels()
    env = RegistrationEnv(steps, reward="labels", fold_weight=1.0, label_classes=labels)
    network = getattr(network, "network", network)
    was_training = network.training
    network.eval()
    before, after, folded = [], [], []
    for pair in pairs:
        state = env.reset(*(pair[k].to(device) for k in ("fixed", "moving", "fixed_labels", "moving_labels")))
        info = {"dice": env.dice, "folded_fraction": torch.zeros(1)}
        for _ in range(steps):
            state, _, _, info = env.step(deterministic_step(network, state.fixed, state.warped))
        before.append(float(env.initial_dice.mean()))
        after.append(float(info["dice"].mean()))
        folded.append(100.0 * float(info["folded_fraction"].mean()))
    network.train(was_training)
    return {
        "val_dice_before": float(np.mean(before)),
        "val_dice": float(np.mean(after)),
        "val_folding_percent": float(np.mean(folded)),
    }


def track_best(best: dict | None, metrics: dict, step: int, network: nn.Module) -> dict:
    """The best validation so far, with a CPU copy of its network weights."""
    if best is not None and metrics["val_dice"] <= best["val_dice"]:
        return best
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    return {"val_dice": metrics["val_dice"], "step": step, "metrics": dict(metrics), "network": state}
