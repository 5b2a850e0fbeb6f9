"""The part of a training that differs per policy family (``FamilyTrainer``), around the shared loop of
``training.train``: agent, optimizer, the module DistributedDataParallel wraps, episodes on synthetic pairs,
one optimizer update per step, and the family's checkpoint and card entries. The families:
``training.spac_trainer`` and ``training.morphseek_trainer``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..policies.cards import sha256_of
from ..policies.networks import count_parameters
from .config import TrainConfig
from .data import pair_loader
from .distributed import Distributed
from .environment import EnvState, RegistrationEnv, paired_one_hot
from .initial_weights import read_initial_weights
from .label_bank import LabelBank
from .losses import RegistrationLoss


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip each parameter group separately (a large critic gradient must not shrink the registration
    gradient of the actor); returns the largest group norm before clipping, NaN when any is not finite
    (Python's ``max`` would pass over a NaN that is not first)."""
    norms = [
        float(nn.utils.clip_grad_norm_(group["params"], max_norm))
        for group in optimizer.param_groups
        if any(p.grad is not None for p in group["params"])
    ]
    if not all(math.isfinite(norm) for norm in norms):
        return math.nan
    return max(norms, default=0.0)


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_norm: float
) -> tuple[float, bool]:
    """Backward, per-group clipping (``clip_gradients``), optimizer step: (largest group norm, applied).

    An update whose gradient is not finite is skipped, as mixed-precision training does, and the weights
    stay as they were: clipping an infinite gradient gives NaN, which Adam writes into the weights (the
    likely cause of a CI run's NaN loss in a bfloat16 test training). Seen with PyTorch 2.13 on a CPU:
    the bfloat16 conv3d weight gradient of a 2^3-voxel input in a batch of 3 (a GRPO group of a small test
    network) held inf in 0 to 86 of 200 calls, at random (``benchmarks/bf16_numerics.py``). The norm
    is taken after DistributedDataParallel's all-reduce, so every rank skips the same updates."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_gradients(optimizer, max_norm)
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return grad_norm, False
    optimizer.step()
    return grad_norm, True


def as_float32(value):
    """``value`` (a tensor, or tuples / lists / dicts of them) with its floating tensors in float32 (what
    leaves an autocast region: the environment, the replay buffer and the logs keep float32)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, (tuple, list)):
        return type(value)(as_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: as_float32(v) for k, v in value.items()}
    return value


class FamilyTrainer:
    """What ``train`` does differently for a policy family, around a shared loop (set-up, logging,
    validation, checkpoints, model folder): the agent (all trained modules; ``.network`` is what ships),
    its optimizer, the module DistributedDataParallel wraps, one optimizer update per training step, and
    the family's entries of the checkpoint and of the model card.

    Episodes (``next_state``) are shared: one environment step per update on a batch of pairs, a new
    batch when the episode ends.
    """

    second_stage = ""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.agent = self.build_agent().to(device)
        self.optimizer = self.build_optimizer()
        self.model: nn.Module | None = None
        self.autocast = torch.bfloat16 if cfg.optim.get("precision", "fp32") == "bf16" else None
        self.state: EnvState | None = None
        self.done, self.labels, self.targets = True, None, None
        self.init_info: dict[str, Any] = {}
        self.warmup_steps = int(cfg.schedule["warmup_steps"])  # train() sets it when --steps rescales
        self.skipped_updates = 0  # updates with a non-finite gradient, not applied (``optimizer_step``)

    @property
    def network(self) -> nn.Module:
        return self.agent.network

    def build_agent(self) -> nn.Module:
        raise NotImplementedError

    def build_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def training_module(self, registration: RegistrationLoss) -> nn.Module:
        raise NotImplementedError

    def describe(self) -> str:
        return f"network {count_parameters(self.network)} parameters"

    def initialize(self) -> None:
        """Set-up of a fresh (not resumed) run: the warm start from the config's ``init.weights`` (a
        ``weights.pt``), when given, recorded for the card (path, sha256, tensors copied)."""
        path = self.cfg.init.get("weights")
        if path:
            copied = self.copy_initial_weights(Path(path))
            self.init_info = {
                "weights": str(path),
                "sha256": sha256_of(Path(path)),
                "tensors_copied": len(copied),
            }

    def copy_initial_weights(self, path: Path) -> list[str]:
        """Load ``path`` into the shipped network (every tensor, same architecture); returns the names of
        the copied tensors. InputError when the file is missing, unreadable or of another architecture."""
        state = read_initial_weights(path, "train that model first, or remove init.weights")
        try:
            self.network.load_state_dict(state)
        except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
            raise InputError(f"init.weights '{path}': cannot load into this architecture ({error})") from None
        return list(state)

    def checkpoint_extra(self) -> dict[str, Any]:
        """Family entries of the checkpoint (besides the agent and optimizer states)."""
        return {"init": self.init_info}

    def load_checkpoint(self, ckpt: dict) -> None:
        self.agent.load_state_dict(ckpt["agent"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.init_info = ckpt.get("init", {})

    def start(self, dist_info: Distributed, train_bank: LabelBank, step: int) -> None:
        """Loss, (DDP-wrapped) training module, data stream and environment, from training step ``step``."""
        cfg = self.cfg
        self.dist_info, self.train_bank = dist_info, train_bank
        self.registration = RegistrationLoss(**cfg.loss)
        module = self.training_module(self.registration)
        self.model = module
        if dist_info.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        batch_size = int(cfg.schedule["batch_size"])
        self.loader = pair_loader(train_bank, cfg.data, batch_size, cfg.seed, dist_info.rank, step)
        self.env = RegistrationEnv(**cfg.env)

    def episode_labels(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One-hot (fixed, moving) labels for the weak-supervision term of the loss, or None."""
        if float(self.cfg.loss.get("label_weight", 0.0)) > 0:
            return paired_one_hot(batch["fixed_labels"], batch["moving_labels"])
        return None

    def next_state(self) -> EnvState:
        """The running episode's state; a new episode on a fresh batch when the last one ended."""
        if self.done:
            batch = {k: v.to(self.device) for k, v in next(self.loader).items()}
            self.state = self.env.reset(
                batch["fixed"], batch["moving"], batch["fixed_labels"], batch["moving_labels"]
            )
            self.labels = self.episode_labels(batch)
            self.targets = batch.get("target_field")  # the optimizer's fields (data.targets), or None
            self.done = False
        return self.state

    def forward(self, *args):
        """The training module's forward (its loss and outputs), under bfloat16 autocast when the config's
        ``optim.precision`` is "bf16"; what it returns in float32. The backward runs outside autocast."""
        if self.autocast is None:
            return self.model(*args)
        with torch.autocast(device_type=self.device.type, dtype=self.autocast):
            out = self.model(*args)
        return as_float32(out)

    def optimize(self, loss: torch.Tensor) -> float:
        """Backward, per-group gradient clipping, optimizer step; returns the largest group norm."""
        grad_norm, applied = optimizer_step(self.optimizer, loss, self.cfg.optim["grad_clip"])
        self.skipped_updates += not applied
        return grad_norm

    def environment_step(self, step_field: torch.Tensor, loss, logs, grad_norm: float):
        """Execute ``step_field`` in the episode; returns (logged values, reward)."""
        self.state, reward, self.done, info = self.env.step(step_field)
        values = {k: float(v) for k, v in logs.items()}
        values.update(loss=float(loss.detach()), reward=float(reward.mean()), grad_norm=float(grad_norm))
        values["pseudo_dice"] = float(info["dice"].mean())
        return values, reward

    def update(self, step: int, stage: str) -> dict[str, float]:
        """One optimizer update at training step ``step`` of ``stage``; returns the logged numbers (the same
        keys on every rank)."""
        raise NotImplementedError

    def postfix(self, stage: str, values: dict[str, float], last_val: dict[str, float]) -> dict[str, str]:
        """Progress-bar summary of a step."""
        return {
            "stage": stage,
            "reg": f"{values['loss_reg']:.3f}",
            "ncc": f"{values['similarity']:.3f}",
            "reward": f"{values['reward']:+.2f}",
            **self.postfix_extra(values),
            "val_dice": f"{last_val.get('val_dice', float('nan')):.3f}",
        }

    def postfix_extra(self, values: dict[str, float]) -> dict[str, str]:
        return {}

    def card_training(self) -> dict[str, Any]:
        """Family entries of the card's ``training`` block (called on every rank: may communicate): the
        warm start, and the updates skipped for a non-finite gradient."""
        entries: dict[str, Any] = {"skipped_updates": self.skipped_updates}
        return {"init": self.init_info, **entries} if self.init_info else entries
