"""Training of learned policies: ``rlreg train --config configs/spac_cpu_small.json`` (or ``train(...)``).

Two families (``model.family`` in the config), sharing everything but the optimizer update
(``FamilyTrainer``): ``"spac"`` (default, below) and ``"morphseek"`` (stages ``warmup`` then ``grpo``,
see ``training.grpo``; optional warm start from a SPAC or MorphSeek ``weights.pt`` with ``init.weights``).

SPAC: every optimization step takes one step in a batch of registration episodes (``environment``) on
synthetic pairs (``training.data``), and makes one optimizer update of one summed loss:

* stage ``warmup`` (a): registration loss of the on-policy step, reaching planner, actor and lambda head:
  ``NCC(F, M o (id + phi_t)) + w_g * weighted_diffusion(phi_t, lambda) + w_b * beta_hyperprior(lambda)``
  with ``phi_t = a_t + phi_{t-1} o (id + a_t)`` (the plan is sampled with the reparameterization trick);
* stage ``sac`` (b): the same registration loss plus the SAC losses on a replay batch (``training.sac``):
  twin critics with target copies (soft updates), planner loss with learned entropy temperature.

Stage (c), ``rlreg tune-weight-map`` (``training.weight_map``), then refits the lambda head alone on where the
test-time optimization that follows the learned steps folds.

Transitions (with the K-means pseudo-label Dice reward) go to the replay buffer in both stages. One
forward and one backward per step, so the same code runs under ``torchrun`` with DistributedDataParallel
(gloo on CPU, nccl on CUDA; ranks read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``): gradients are averaged,
every rank draws its own pairs. Rank 0 validates (T1-like pairs of held-out subjects, Dice of the true
labels), logs (progress bar, CSV, TensorBoard when installed), writes checkpoints (``--resume``) and the
final model folder (``weights.pt`` + ``card.json``).
"""

from __future__ import annotations

import csv
import gc
import inspect
import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..devices import describe_device, resolve_device
from ..errors import InputError, OutputError
from ..fields.metrics import evaluation_labels
from ..fields.regularizers import beta_hyperprior, weighted_diffusion
from ..fields.similarity import make_similarity, soft_dice_loss
from ..fields.spatial import compose_displacements, warp
from ..policies.cards import CARD_NAME, sha256_of
from ..policies.morphseek_network import MorphSeekArchitecture, MorphSeekNetwork, head_parameter_fraction
from ..policies.networks import BackboneArchitecture, SPACAgent, SPACArchitecture, count_parameters
from .data import DataConfig, LabelBank, load_config, pair_loader, validation_pairs
from .environment import EnvState, RegistrationEnv, paired_one_hot
from .grpo import (
    GRPOConfig,
    MorphSeekAgent,
    MorphSeekTrainingStep,
    labelled_pair,
    load_initial_weights,
    make_morphseek_optimizer,
)
from .sac import ReplayBuffer, SACConfig, sac_losses

WEIGHTS_NAME = "weights.pt"

#: policy families and their architecture classes (the trainers: ``TRAINERS``)
ARCHITECTURES: dict[str, type[BackboneArchitecture]] = {
    "spac": SPACArchitecture,
    "morphseek": MorphSeekArchitecture,
}
#: config sections used by one family only
FAMILY_SECTIONS = {"sac": "spac", "grpo": "morphseek", "init": "morphseek"}


# --------------------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """A training run, as read from a config JSON (sections ``data``, ``model``, ``env``, ``loss``,
    ``sac``, ``optim``, ``schedule``; see ``configs/spac_cpu_small.json``).

    ``model.family`` "morphseek" (``configs/morphseek_cpu_small.json``) replaces ``sac`` by ``grpo``
    (``training.grpo.GRPOConfig``) and ``schedule.sac_steps`` by ``grpo_steps``, has the optimizer keys
    ``lr_encoder`` / ``lr_decoder`` and the optional ``init.weights`` (a SPAC or MorphSeek ``weights.pt``)."""

    id: str = "spac-brain-synth"
    description: str = "SPAC planner-actor-critic with a spatially varying regularization head"
    modality: str = "brain MRI, any contrast (trained on synthetic images from label maps)"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: BackboneArchitecture = field(default_factory=SPACArchitecture)
    env: dict = field(
        default_factory=lambda: {"episode_length": 5, "reward": "kmeans", "fold_weight": 1.0, "clusters": 3}
    )
    loss: dict = field(
        default_factory=lambda: {
            "similarity": "ncc",
            "ncc_window": 7,
            "diffusion_weight": 2.0,
            "prior_weight": 1.0,
            "w_log_beta": 0.18,
        }
    )
    sac: SACConfig = field(default_factory=SACConfig)
    optim: dict = field(
        default_factory=lambda: {
            "lr_planner": 1e-4,
            "lr_actor": 1e-4,
            "lr_critic": 3e-4,
            "lr_alpha": 3e-4,
            "betas": [0.9, 0.999],
            "grad_clip": 10.0,
        }
    )
    schedule: dict = field(
        default_factory=lambda: {
            "warmup_steps": 1000,
            "sac_steps": 2000,
            "batch_size": 1,
            "checkpoint_every": 100,
            "validate_every": 250,
            "keep_best": True,
        }
    )
    grpo: GRPOConfig | None = None
    init: dict = field(default_factory=lambda: {"weights": None})

    @property
    def family(self) -> str:
        return self.model.family

    @classmethod
    def defaults(cls, family: str = "spac") -> TrainConfig:
        """The default configuration of a policy family."""
        if family not in ARCHITECTURES:
            raise InputError(f"config 'model': unknown family '{family}' (known: {sorted(ARCHITECTURES)})")
        cfg = cls()
        if family == "morphseek":
            cfg.id = "morphseek-brain-synth"
            cfg.description = (
                "MorphSeek latent Gaussian policy fine-tuned with GRPO, with a regularization map"
            )
            cfg.model, cfg.grpo = MorphSeekArchitecture(), GRPOConfig()
            cfg.optim = {"lr_encoder": 1e-4, "lr_decoder": 1e-4, "betas": [0.9, 0.999], "grad_clip": 10.0}
            schedule = {k: v for k, v in cfg.schedule.items() if k != "sac_steps"}
            cfg.schedule = {**schedule, "grpo_steps": 500}
        return cfg

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        unknown = set(values) - set(cls.__dataclass_fields__) - {"comment"}
        if unknown:
            raise InputError(f"config: unknown keys {sorted(unknown)}")
        values.pop("comment", None)
        family = str(values.get("model", {}).get("family", "spac"))
        out = cls.defaults(family)
        for section, owner in FAMILY_SECTIONS.items():
            if section in values and family != owner:
                raise InputError(
                    f"config '{section}': used by family '{owner}' only (model.family is '{family}')"
                )
        for key in ("id", "description", "modality", "seed", "device"):
            setattr(out, key, values.get(key, getattr(out, key)))
        allowed = {
            "env": set(inspect.signature(RegistrationEnv).parameters),
            "loss": set(inspect.signature(RegistrationLoss).parameters),
            "optim": set(out.optim),
            "schedule": set(out.schedule),
            "model": set(ARCHITECTURES[family].__dataclass_fields__),
            "init": set(out.init),
        }
        for key, names in allowed.items():
            unknown = set(values.get(key, {})) - names
            if unknown:
                raise InputError(f"config '{key}': unknown keys {sorted(unknown)} (known: {sorted(names)})")
        for key in ("env", "loss", "optim", "schedule", "init"):
            setattr(out, key, {**getattr(out, key), **values.get(key, {})})
        out.data = DataConfig.from_dict(values.get("data", {}))
        out.model = ARCHITECTURES[family].from_dict(values.get("model", {}))
        out.sac = SACConfig.from_dict(values.get("sac", {}))
        if family == "morphseek":
            out.grpo = GRPOConfig.from_dict(values.get("grpo", {}))
            outside = set(out.grpo.label_subjects or []) - {int(s) for s in out.data.train_subjects}
            if outside:
                raise InputError(f"config 'grpo': label_subjects {sorted(outside)} are not training subjects")
        return out

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return load_config(cls, path)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["model"] = self.model.to_dict()
        out["data"]["shape"] = list(self.data.shape)
        for section, owner in FAMILY_SECTIONS.items():
            if owner != self.family:
                out.pop(section)
        return out


# ------------------------------------------------------------------------------------- registration loss


class RegistrationLoss(nn.Module):
    """Loss of one step: similarity + w_g * lambda-weighted diffusion + w_b * Beta prior, plus
    ``label_weight`` * (1 - soft Dice) of the warped one-hot labels when labels are given (weak
    supervision, as in SynthMorph; 0 = unsupervised).

    The previous field is a constant; the gradient flows through the step and lambda into the network.
    """

    def __init__(
        self,
        similarity="ncc",
        ncc_window=7,
        diffusion_weight=2.0,
        prior_weight=1.0,
        w_log_beta=0.18,
        label_weight=0.0,
    ):
        super().__init__()
        kwargs = {"window": ncc_window} if similarity == "ncc" else {}
        self.similarity = make_similarity(similarity, **kwargs)
        self.diffusion_weight, self.prior_weight, self.w_log_beta = diffusion_weight, prior_weight, w_log_beta
        self.label_weight = float(label_weight)

    def forward(
        self, fixed, moving, previous, step, weight, labels: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = compose_displacements(step, previous.detach())
        similarity = self.similarity(fixed, warp(moving, total))
        diffusion = weighted_diffusion(total, weight)
        prior = beta_hyperprior(weight, self.w_log_beta)
        loss = similarity + self.diffusion_weight * diffusion + self.prior_weight * prior
        parts = {"similarity": similarity, "diffusion": diffusion, "prior": prior, "lambda": weight.mean()}
        if self.label_weight > 0 and labels is not None:
            fixed_one_hot, moving_one_hot = labels
            parts["label_loss"] = soft_dice_loss(fixed_one_hot, warp(moving_one_hot, total))
            loss = loss + self.label_weight * parts["label_loss"]
        return loss, {k: v.detach() for k, v in parts.items()}


class TrainingStep(nn.Module):
    """One forward computing the summed loss of a step (the module DistributedDataParallel wraps).

    ``forward(fixed, moving, warped, field, replay_batch=None, labels=None)`` -> (loss, logs, plan, step).
    The plan and step field (detached) are what the environment executes; ``labels`` = one-hot (fixed,
    moving) for the weak-supervision term.
    """

    def __init__(self, agent: SPACAgent, registration: RegistrationLoss, sac: SACConfig):
        super().__init__()
        self.agent, self.registration, self.sac = agent, registration, sac

    def forward(self, fixed, moving, warped, field, replay_batch: dict | None = None, labels=None):
        out = self.agent.network(fixed, warped)
        loss, logs = self.registration(fixed, moving, field, out.step, out.weight, labels)
        logs = {"loss_reg": loss.detach(), **logs, "sigma": out.log_std.exp().mean().detach()}
        loss = loss + self.sac.plan_l2 * out.mean.pow(2).mean()  # in both stages: the plan must not drift
        if replay_batch is not None:
            parts = sac_losses(self.agent, replay_batch, self.sac)
            loss = loss + parts["critic_loss"] + parts["actor_loss"] + parts["alpha_loss"]
            logs.update({k: v.detach() for k, v in parts.items()})
        return loss, logs, out.plan.detach(), out.step.detach()


# -------------------------------------------------------------------------------------- distributed


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module initialized the process group (and tears it down)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): nccl on CUDA, gloo on
    CPU; one GPU per local rank. Single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist_info = Distributed(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    if dist_info.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
        dist_info.owns_group = True
        if device.type == "cpu":  # share the cores between the local processes
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    return dist_info, device


def average_logs(logs: dict[str, float], dist_info: Distributed, device: torch.device) -> dict[str, float]:
    """Mean of each logged number over the ranks (one small all-reduce; every rank logs the same keys).
    NaN marks a number a rank does not have (e.g. the label loss of an unlabelled pair): it is left out of
    that mean (NaN when no rank has it)."""
    if not dist_info.enabled or not logs:
        return logs
    keys = sorted(logs)
    values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=device)
    present = ~torch.isnan(values)
    packed = torch.cat([torch.where(present, values, torch.zeros_like(values)), present.double()])
    torch.distributed.all_reduce(packed)
    sums, counts = packed.split(len(keys))
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
    return {k: float(v) for k, v in zip(keys, means.tolist())}


def parameter_checksum(module: nn.Module) -> float:
    """A number that differs when any parameter differs (position-weighted sum, float64)."""
    total = 0.0
    for i, p in enumerate(module.state_dict().values()):
        if p.is_floating_point():
            total += (i + 1) * float(p.double().sum()) + float(p.double().abs().sum())
    return total


# ------------------------------------------------------------------------------------------ helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(agent: SPACAgent, optim: dict) -> torch.optim.Optimizer:
    """Adam with one parameter group per part: planner (backbone + head), actor (+ lambda head),
    critic, temperature."""
    net = agent.network
    groups = [
        {"params": [*net.backbone.parameters(), *net.planner.parameters()], "lr": optim["lr_planner"]},
        {"params": [*net.actor.parameters(), *net.weight_head.parameters()], "lr": optim["lr_actor"]},
        {"params": list(agent.critic.parameters()), "lr": optim["lr_critic"]},
        {"params": [agent.log_alpha], "lr": optim["lr_alpha"]},
    ]
    return torch.optim.Adam(groups, betas=tuple(optim["betas"]))


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip each parameter group separately (a large critic gradient must not shrink the registration
    gradient of the actor); returns the largest group norm before clipping."""
    norms = [
        float(nn.utils.clip_grad_norm_(group["params"], max_norm))
        for group in optimizer.param_groups
        if any(p.grad is not None for p in group["params"])
    ]
    return max(norms, default=0.0)


def stage_steps(cfg: TrainConfig, steps: int | None) -> tuple[int, int]:
    """(warm-up steps, total steps); ``steps`` rescales both stages to that total."""
    warmup = int(cfg.schedule["warmup_steps"])
    second = int(cfg.schedule[f"{TRAINERS[cfg.family].second_stage}_steps"])
    if steps is None:
        return warmup, warmup + second
    if warmup + second == 0:
        return 0, int(steps)
    return round(steps * warmup / (warmup + second)), int(steps)


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


LOG_COLUMNS = [
    "step", "stage", "loss", "loss_reg", "similarity", "label_loss", "diffusion", "prior", "lambda", "sigma",
    "reward",
    "pseudo_dice", "critic_loss", "actor_loss", "alpha_loss", "q", "entropy", "alpha",
    "kl_prior", "reward_std", "pg_loss", "kl_ref", "dice_gain", "label_reward", "grad_norm",
    "val_dice_before", "val_dice", "val_folding_percent", "seconds",
]  # fmt: skip


class RunLog:
    """CSV log with the columns ``LOG_COLUMNS`` (+ TensorBoard when installed), written by rank 0.
    Appending to an existing log keeps that log's columns. NaN (a number this step does not have) is
    written as an empty cell."""

    def __init__(self, path: Path, append: bool):
        self.path = path
        self.columns = list(LOG_COLUMNS)
        if append and path.is_file():
            with open(path, newline="") as handle:
                self.columns = next(csv.reader(handle), None) or self.columns
        else:
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerow(LOG_COLUMNS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"))
        except ImportError:  # TensorBoard is optional
            self.tensorboard = None

    def write(self, step: int, stage: str, values: dict[str, float]) -> None:
        row = {"step": step, "stage": stage, **values}
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([_fmt(row.get(c, "")) for c in self.columns])
        if self.tensorboard is not None:
            for key, value in values.items():
                if not np.isnan(value):
                    self.tensorboard.add_scalar(key, value, step)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.6g}"
    return str(value)


# ------------------------------------------------------------------------------------------- training


def load_banks(d: DataConfig, with_validation: bool = True) -> tuple[LabelBank, LabelBank | None]:
    """Training and (on the main rank) validation label maps, aligned to the first training subject when
    ``prealign``."""
    reference = d.train_subjects[0] if d.prealign else None
    train_bank = LabelBank.from_shared(
        d.shared_dir, d.train_subjects, d.spacing_mm, d.shape, d.margin, reference
    )
    val_bank = None
    if with_validation and d.val_pairs > 0:
        val_bank = LabelBank.from_shared(
            d.shared_dir, d.val_subjects, d.spacing_mm, d.shape, d.margin, reference
        )
    return train_bank, val_bank


def track_best(best: dict | None, metrics: dict, step: int, network: nn.Module) -> dict:
    """The best validation so far, with a CPU copy of its network weights."""
    if best is not None and metrics["val_dice"] <= best["val_dice"]:
        return best
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    return {"val_dice": metrics["val_dice"], "step": step, "metrics": dict(metrics), "network": state}


def training_subject_ids(d: DataConfig, bank: LabelBank) -> list[int]:
    """Subject id of every map of the training bank: ``d.train_subjects`` when they correspond one to one,
    else 1..n (a bank given in memory without matching ids)."""
    ids = [int(s) for s in d.train_subjects]
    return ids if len(ids) == len(bank) else list(range(1, len(bank) + 1))


# --------------------------------------------------------------------------------- family trainers


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
        self.state: EnvState | None = None
        self.done, self.labels = True, None

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
        """Set-up of a fresh (not resumed) run, after the weights were initialized."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Family entries of the checkpoint (besides the agent and optimizer states)."""
        return {}

    def load_checkpoint(self, ckpt: dict) -> None:
        self.agent.load_state_dict(ckpt["agent"])
        self.optimizer.load_state_dict(ckpt["optimizer"])

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
            self.done = False
        return self.state

    def optimize(self, loss: torch.Tensor) -> float:
        """Backward, per-group gradient clipping, optimizer step; returns the largest group norm."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(self.optimizer, self.cfg.optim["grad_clip"])
        self.optimizer.step()
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
        """Family entries of the card's ``training`` block (called on every rank: may communicate)."""
        return {}


class SPACTrainer(FamilyTrainer):
    """SPAC: stage ``warmup`` (registration loss) then ``sac`` (+ SAC losses on a replay batch)."""

    second_stage = "sac"

    def build_agent(self) -> SPACAgent:
        return SPACAgent(self.cfg.model, self.cfg.sac.init_alpha)

    def build_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.agent, self.cfg.optim)

    def training_module(self, registration: RegistrationLoss) -> nn.Module:
        return TrainingStep(self.agent, registration, self.cfg.sac)

    def describe(self) -> str:
        return count_summary(self.agent)

    def start(self, dist_info: Distributed, train_bank: LabelBank, step: int) -> None:
        super().start(dist_info, train_bank, step)
        cfg = self.cfg
        self.replay = ReplayBuffer(cfg.sac.replay_capacity, (2, *cfg.data.shape), cfg.model.plan_dim)
        self.generator = torch.Generator().manual_seed(cfg.seed + 7919 * dist_info.rank + step)

    def update(self, step: int, stage: str) -> dict[str, float]:
        state = self.next_state()
        replay_batch = None
        if stage == "sac" and len(self.replay) > 0:
            replay_batch = self.replay.sample(self.cfg.sac.batch_size, self.generator, self.device)
        loss, logs, plan, step_field = self.model(
            state.fixed, state.moving, state.warped, state.field, replay_batch, self.labels
        )
        grad_norm = self.optimize(loss)
        if replay_batch is not None:
            self.agent.soft_update(self.cfg.sac.tau)
        obs = state.observation()
        values, reward = self.environment_step(step_field, loss, logs, grad_norm)
        self.replay.push(obs, plan, reward, self.state.observation(), self.done)
        return values

    def postfix_extra(self, values: dict[str, float]) -> dict[str, str]:
        return {
            "critic": f"{values.get('critic_loss', float('nan')):.3g}",
            "alpha": f"{values.get('alpha', float(self.agent.alpha.detach())):.3g}",
        }


class MorphSeekTrainer(FamilyTrainer):
    """MorphSeek: stage ``warmup`` (deterministic policy, registration loss + small prior KL) then ``grpo``
    (group rollouts of one pair per update, ``training.grpo``). Labels are used only for pairs of the
    subjects ``grpo.label_subjects``; which labels were used is counted for the model card."""

    second_stage = "grpo"
    #: logged every update (NaN when absent), so every rank reports the same keys
    ALWAYS_LOGGED = ("label_loss", "label_reward")

    def __init__(self, cfg: TrainConfig, device: torch.device):
        super().__init__(cfg, device)
        self.init_info: dict[str, Any] = {}
        self.label_usage: dict[str, Any] = {
            "subjects": [],
            "label_reward_updates": 0,
            "pseudo_reward_updates": 0,
        }

    def build_agent(self) -> MorphSeekAgent:
        return MorphSeekAgent(self.cfg.model)

    def build_optimizer(self) -> torch.optim.Optimizer:
        return make_morphseek_optimizer(self.agent.network, self.cfg.optim)

    def training_module(self, registration: RegistrationLoss) -> nn.Module:
        env_options = {k: v for k, v in self.cfg.env.items() if k not in ("episode_length", "reward")}
        return MorphSeekTrainingStep(
            self.agent, registration, self.cfg.grpo, env_options, self.group_generator
        )

    def describe(self) -> str:
        fraction = head_parameter_fraction(self.network)
        return f"network {count_parameters(self.network)} parameters (latent Gaussian head {100 * fraction:.1f} %)"

    def initialize(self) -> None:
        path = self.cfg.init.get("weights")
        if path:
            copied = load_initial_weights(self.agent.network, path)
            self.init_info = {
                "weights": str(path),
                "sha256": sha256_of(Path(path)),
                "tensors_copied": len(copied),
            }

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"init": self.init_info, "label_usage": self.label_usage}

    def load_checkpoint(self, ckpt: dict) -> None:
        super().load_checkpoint(ckpt)
        self.init_info = ckpt.get("init", {})
        self.label_usage = ckpt.get("label_usage", self.label_usage)

    def start(self, dist_info: Distributed, train_bank: LabelBank, step: int) -> None:
        cfg = self.cfg
        self.group_generator = torch.Generator(device=self.device)
        self.group_generator.manual_seed(cfg.seed + 7919 * dist_info.rank + step)
        super().start(dist_info, train_bank, step)
        self.subject_ids = training_subject_ids(cfg.data, train_bank)
        label_subjects = cfg.grpo.label_subjects
        if label_subjects is not None and self.subject_ids != [int(s) for s in cfg.data.train_subjects]:
            raise InputError(
                f"grpo.label_subjects needs one training label map per data.train_subjects entry "
                f"({len(train_bank)} maps for {list(cfg.data.train_subjects)})"
            )
        self.rng = np.random.default_rng([cfg.seed, dist_info.rank, step])
        self.group_loaders: dict[str, Any] = {}
        self.start_step = step

    def _pair_ids(self, subjects: torch.Tensor) -> tuple[int, int]:
        """Subject ids of a pair of bank indices ``subjects`` (2,)."""
        return tuple(self.subject_ids[int(i)] for i in subjects)

    def _use_labels(self, *pairs: tuple[int, int]) -> None:
        """Record that the labels of these pairs' subjects were used."""
        self.label_usage["subjects"] = sorted({*self.label_usage["subjects"], *(s for p in pairs for s in p)})

    def episode_labels(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        if float(self.cfg.loss.get("label_weight", 0.0)) <= 0:
            return None
        pairs = [self._pair_ids(subjects) for subjects in batch["subjects"]]
        if not all(labelled_pair(ids, self.cfg.grpo.label_subjects) for ids in pairs):
            return None  # the label term needs every pair of the batch labelled
        self._use_labels(*pairs)
        return paired_one_hot(batch["fixed_labels"], batch["moving_labels"])

    def next_group_pair(self) -> tuple[dict[str, torch.Tensor], bool]:
        """A pair for a GRPO update (batch of one) and whether it is labelled. With
        ``labelled_pair_fraction`` the pair is drawn among the labelled subjects with that probability."""
        cfg, grpo = self.cfg, self.cfg.grpo
        if not self.group_loaders:
            self.loader = None  # the warm-up stream is over (frees its DataLoader workers)
            rank, restart = self.dist_info.rank, self.start_step
            self.group_loaders["all"] = pair_loader(self.train_bank, cfg.data, 1, cfg.seed + 1, rank, restart)
            labelled = [i for i, s in enumerate(self.subject_ids) if s in set(grpo.label_subjects or [])]
            if grpo.labelled_pair_fraction and grpo.label_subjects is not None and labelled:
                self.group_loaders["labelled"] = pair_loader(
                    self.train_bank, cfg.data, 1, cfg.seed + 2, rank, restart, subjects=labelled
                )
        use_labelled = "labelled" in self.group_loaders and self.rng.random() < grpo.labelled_pair_fraction
        batch = next(self.group_loaders["labelled" if use_labelled else "all"])
        pair = {k: v.to(self.device) for k, v in batch.items()}
        ids = self._pair_ids(batch["subjects"][0])
        labelled = labelled_pair(ids, grpo.label_subjects)
        if labelled:
            self._use_labels(ids)
        return pair, labelled

    def update(self, step: int, stage: str) -> dict[str, float]:
        if stage == "warmup":
            state = self.next_state()
            loss, logs, step_field = self.model(
                "warmup", state.fixed, state.moving, state.warped, state.field, self.labels
            )
            values, _ = self.environment_step(step_field, loss, logs, self.optimize(loss))
        else:
            if not self.agent.has_reference:  # the policy at the end of the warm-up
                self.agent.snapshot_reference(step - 1)
            pair, labelled = self.next_group_pair()
            loss, values = self.model("grpo", pair, labelled)
            values["grad_norm"] = self.optimize(loss)
            key = "label_reward_updates" if labelled else "pseudo_reward_updates"
            self.label_usage[key] += 1
        return {**dict.fromkeys(self.ALWAYS_LOGGED, float("nan")), **values}

    def postfix_extra(self, values: dict[str, float]) -> dict[str, str]:
        if "pg_loss" not in values:
            return {"kl_prior": f"{values['kl_prior']:.3g}"}
        return {"pg": f"{values['pg_loss']:+.3g}", "kl_ref": f"{values['kl_ref']:.3g}"}

    def card_training(self) -> dict[str, Any]:
        usage = dict(self.label_usage)
        if self.dist_info.enabled:  # union of the ranks' labelled subjects, total update counts
            ids = self.subject_ids
            mask = torch.tensor([float(s in usage["subjects"]) for s in ids], dtype=torch.float64)
            counts = torch.tensor(
                [usage["label_reward_updates"], usage["pseudo_reward_updates"]], dtype=torch.float64
            )
            packed = torch.cat([mask, counts]).to(self.device)
            torch.distributed.all_reduce(packed)
            mask, counts = packed[: len(ids)].cpu(), packed[len(ids) :].cpu()
            usage["subjects"] = [s for s, m in zip(ids, mask.tolist()) if m > 0]
            usage["label_reward_updates"], usage["pseudo_reward_updates"] = (int(c) for c in counts.tolist())
        label_subjects = self.cfg.grpo.label_subjects
        usage["label_subjects"] = list(self.subject_ids) if label_subjects is None else list(label_subjects)
        usage["labelled_subjects_used"] = len(usage["subjects"])
        return {"init": self.init_info, "label_usage": usage}


TRAINERS: dict[str, type[FamilyTrainer]] = {"spac": SPACTrainer, "morphseek": MorphSeekTrainer}


def train(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    steps: int | None = None,
    resume: bool = False,
    device: str | None = None,
    shared_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    banks: tuple[LabelBank, LabelBank] | None = None,
) -> Path:
    """Run (or resume) a training; returns the model folder ``out_dir`` (default ``models/<id>``).

    ``run_dir`` (default ``runs/<id>``) holds ``checkpoint.pt``, ``log.csv`` and TensorBoard files.
    ``banks`` (train, validation) replaces the label maps read from ``shared_dir`` (tests).
    """
    start_time = time.perf_counter()
    out_dir = Path(out_dir or Path("models") / cfg.id)
    run_dir = Path(run_dir or Path("runs") / cfg.id)
    if shared_dir is not None:
        cfg.data.shared_dir = str(shared_dir)
    dist_info, dev = setup_distributed(device or cfg.device)
    if (out_dir / CARD_NAME).exists() and not (overwrite or resume):
        raise OutputError(f"{out_dir / CARD_NAME} exists (use --overwrite to replace the model)")
    checkpoint_path = run_dir / "checkpoint.pt"
    if resume and not checkpoint_path.is_file():
        raise InputError(f"--resume: no checkpoint at {checkpoint_path}")
    warmup_steps, total_steps = stage_steps(cfg, steps)
    sched = cfg.schedule

    seed_everything(cfg.seed)  # identical initial weights on every rank
    trainer = TRAINERS[cfg.family](cfg, dev)
    step, best, elapsed_before = 0, None, 0.0
    if resume:
        ckpt = torch.load(checkpoint_path, map_location=dev, weights_only=False)
        trainer.load_checkpoint(ckpt)
        step, best, elapsed_before = ckpt["step"], ckpt.get("best"), ckpt.get("wall_time_s", 0.0)
    else:
        trainer.initialize()
    seed_everything(cfg.seed + 1000 * dist_info.rank + step)  # per-rank exploration and data

    train_bank, val_bank = banks or load_banks(cfg.data, dist_info.is_main)
    val_set = validation_pairs(val_bank, cfg.data, cfg.data.val_pairs, cfg.seed) if val_bank else []
    trainer.start(dist_info, train_bank, step)

    log = None
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log = RunLog(run_dir / "log.csv", append=resume)
    from tqdm import tqdm

    if dist_info.is_main and progress:
        print(
            f"training {cfg.id} ({cfg.family}): {trainer.describe()}; {describe_device(dev)} x "
            f"{dist_info.world_size}; grid {list(cfg.data.shape)} at {cfg.data.spacing_mm} mm; steps "
            f"{step + 1}..{total_steps} (warm-up to {warmup_steps}); run folder {run_dir}"
        )
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (progress and dist_info.is_main),
        unit="step",
        dynamic_ncols=True,
        file=sys.stdout,
    )
    last_val = {}
    run_start = time.perf_counter()
    while step < total_steps:
        step += 1
        stage = "warmup" if step <= warmup_steps else trainer.second_stage
        values = average_logs(trainer.update(step, stage), dist_info, dev)
        if dist_info.is_main:
            if val_set and (step % int(sched["validate_every"]) == 0 or step == total_steps):
                last_val = validate(trainer.network, val_set, int(cfg.env["episode_length"]), dev)
                best = track_best(best, last_val, step, trainer.network)
                values.update(last_val)
            values["seconds"] = time.perf_counter() - run_start
            log.write(step, stage, values)
            bar.set_postfix(trainer.postfix(stage, values, last_val), refresh=False)
        bar.update(1)
        if step % int(sched["checkpoint_every"]) == 0 or step == total_steps:
            elapsed = elapsed_before + time.perf_counter() - run_start
            if dist_info.is_main:
                save_checkpoint(
                    checkpoint_path, trainer.agent, trainer.optimizer, step, best, cfg, elapsed,
                    trainer.checkpoint_extra(),
                )  # fmt: skip
    bar.close()

    checksums = _gather_checksums(trainer.agent, dist_info, dev)
    family_training = trainer.card_training()
    if dist_info.is_main:
        wall_time = elapsed_before + time.perf_counter() - start_time
        network_state = trainer.network.state_dict()
        selected = {"step": step, "metrics": last_val}
        if sched.get("keep_best", True) and best is not None:
            network_state, selected = best["network"], {"step": best["step"], "metrics": best["metrics"]}
        training = {
            "command": command or "train(...)",
            "config": cfg.to_dict(),
            "data": _data_description(cfg.data, banks is not None),
            "steps": step,
            "warmup_steps": warmup_steps,
            "wall_time_s": round(wall_time, 1),
            "hardware": _hardware(dev, dist_info),
            "seed": cfg.seed,
            "distributed": {"world_size": dist_info.world_size, "rank_checksums": checksums},
            "selected_step": selected["step"],
            "log": "training_log.csv",
            **family_training,
        }
        save_model(out_dir, network_state, cfg, training, selected["metrics"])
        if log is not None and log.path.is_file():
            (out_dir / "training_log.csv").write_bytes(log.path.read_bytes())
    if dist_info.enabled:
        # the DDP wrapper (its reducer holds gloo work) must go before the process group; destroyed later,
        # at interpreter exit, it aborted rank 0 now and then ("terminate called without an active exception")
        del trainer
        gc.collect()
        torch.distributed.barrier()
        if dist_info.owns_group:
            torch.distributed.destroy_process_group()
    return out_dir


def _gather_checksums(agent: nn.Module, dist_info: Distributed, device: torch.device) -> list[float]:
    """Parameter checksum of every rank (all equal when DDP kept the replicas in sync)."""
    value = torch.tensor([parameter_checksum(agent)], dtype=torch.float64, device=device)
    if not dist_info.enabled:
        return [float(value)]
    gathered = [torch.zeros_like(value) for _ in range(dist_info.world_size)]
    torch.distributed.all_gather(gathered, value)
    return [float(v) for v in gathered]


def save_checkpoint(
    path: Path,
    agent,
    optimizer,
    step: int,
    best,
    cfg: TrainConfig,
    wall_time: float,
    extra: dict | None = None,
) -> None:
    """Everything needed to resume (not the replay buffer: it refills within a few episodes); ``extra``:
    the family's own entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "step": step,
            "agent": agent.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best": best,
            "config": cfg.to_dict(),
            "wall_time_s": wall_time,
            **(extra or {}),
        },
        tmp,
    )
    os.replace(tmp, path)


def save_model(
    out_dir: Path, network_state: dict, cfg: TrainConfig, training: dict, validation: dict
) -> Path:
    """Write ``weights.pt`` (the inference network's state dict) and ``card.json`` (with its sha256).

    The card names the family and its architecture; a MorphSeek card also has a ``grpo`` block (group
    size, horizon, temperature, labelled subjects allowed / used, from ``training["label_usage"]``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_NAME
    torch.save({k: v.detach().cpu() for k, v in network_state.items()}, weights)
    card = {
        "id": cfg.id,
        "family": cfg.family,
        "description": cfg.description,
        "modality": cfg.modality,
        "architecture": cfg.model.to_dict(),
        "parameters": sum(v.numel() for v in network_state.values()),
        "working_grid": {"shape": list(cfg.data.shape), "spacing_mm": cfg.data.spacing_mm},
        "inference": {"steps": int(cfg.env["episode_length"]), "max_step": cfg.model.max_step},
        "training": training,
        "validation": {
            **validation,
            "pairs": cfg.data.val_pairs,
            "subjects": list(cfg.data.val_subjects),
            "contrast": "synthetic T1-like",
            "labels": "the 30 FreeSurfer evaluation labels present, on the training grid",
            "steps": int(cfg.env["episode_length"]),
        },
        "weights": WEIGHTS_NAME,
        "sha256": sha256_of(weights),
    }
    if cfg.grpo is not None:
        card["grpo"] = grpo_card(cfg.grpo, training.get("label_usage", {}))
    (out_dir / CARD_NAME).write_text(json.dumps(card, indent=2))
    return out_dir


def grpo_card(grpo: GRPOConfig, usage: dict) -> dict:
    """The card's summary of a GRPO training: group size, horizon, temperature and label efficiency (how
    many subjects' labels were allowed and used, how many updates had a true-label reward)."""
    allowed = usage.get("label_subjects", grpo.label_subjects)
    return {
        "group_size": int(grpo.group_size),
        "horizon": int(grpo.horizon),
        "temperature": float(grpo.temperature),
        "label_subjects": "all training subjects" if allowed is None else len(allowed),
        "labelled_subjects_used": int(usage.get("labelled_subjects_used", 0)),
        "label_reward_updates": int(usage.get("label_reward_updates", 0)),
        "pseudo_label_reward_updates": int(usage.get("pseudo_reward_updates", 0)),
    }


def _data_description(d: DataConfig, custom: bool) -> str:
    if custom:
        return "label maps given in memory (tests)"
    return (
        f"on-the-fly synthetic pairs from SynthSeg label maps {d.shared_dir}/synthseg subjects "
        f"{d.train_subjects} (random intensity per label, bias, noise, blur, random affine and smooth "
        f"deformation; {d.spacing_mm} mm, {list(d.shape)}); validation subjects {d.val_subjects} (T1-like)"
    )


def _hardware(device: torch.device, dist_info: Distributed) -> str:
    text = f"{describe_device(device)}, {os.cpu_count()} CPU cores, {platform.machine()}"
    return f"{text}, {dist_info.world_size} processes" if dist_info.enabled else text


def count_summary(agent: SPACAgent) -> str:
    return f"network {count_parameters(agent.network)} parameters, critics {count_parameters(agent.critic)}"


__all__ = [
    "LOG_COLUMNS",
    "FamilyTrainer",
    "MorphSeekTrainer",
    "RegistrationLoss",
    "SPACTrainer",
    "TrainConfig",
    "TrainingStep",
    "clip_gradients",
    "deterministic_step",
    "make_optimizer",
    "save_checkpoint",
    "save_model",
    "setup_distributed",
    "stage_steps",
    "train",
    "validate",
]
