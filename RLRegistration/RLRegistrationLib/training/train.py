"""Training of SPAC policies: ``rlreg train --config configs/spac_cpu_small.json`` (or ``train(...)``).

Every optimization step takes one step in a batch of registration episodes (``environment``) on
synthetic pairs (``training.data``), and makes one optimizer update of one summed loss:

* stage ``warmup`` (a): registration loss of the on-policy step, reaching planner, actor and lambda head:
  ``NCC(F, M o (id + phi_t)) + w_g * weighted_diffusion(phi_t, lambda) + w_b * beta_hyperprior(lambda)``
  with ``phi_t = a_t + phi_{t-1} o (id + a_t)`` (the plan is sampled with the reparameterization trick);
* stage ``sac`` (b): the same registration loss plus the SAC losses on a replay batch (``training.sac``):
  twin critics with target copies (soft updates), planner loss with learned entropy temperature.

Transitions (with the K-means pseudo-label Dice reward) go to the replay buffer in both stages. One
forward and one backward per step, so the same code runs under ``torchrun`` with DistributedDataParallel
(gloo on CPU, nccl on CUDA; ranks read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``): gradients are averaged,
every rank draws its own pairs. Rank 0 validates (T1-like pairs of held-out subjects, Dice of the true
labels), logs (progress bar, CSV, TensorBoard when installed), writes checkpoints (``--resume``) and the
final model folder (``weights.pt`` + ``card.json``).
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..devices import describe_device, resolve_device
from ..environment import RegistrationEnv
from ..errors import InputError, OutputError
from ..learned_policies import CARD_NAME, sha256_of
from ..metrics import evaluation_labels
from ..networks import SPACAgent, SPACArchitecture, count_parameters
from ..regularizers import beta_hyperprior, weighted_diffusion
from ..similarity import make_similarity
from ..spatial import compose_displacements, warp
from .data import DataConfig, LabelBank, pair_loader, validation_pairs
from .sac import ReplayBuffer, SACConfig, sac_losses

WEIGHTS_NAME = "weights.pt"


# --------------------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """A training run, as read from a config JSON (sections ``data``, ``model``, ``env``, ``loss``,
    ``sac``, ``optim``, ``schedule``; see ``configs/spac_cpu_small.json``)."""

    id: str = "spac-brain-synth"
    description: str = "SPAC planner-actor-critic with a spatially varying regularization head"
    modality: str = "brain MRI, any contrast (trained on synthetic images from label maps)"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: SPACArchitecture = field(default_factory=SPACArchitecture)
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

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        unknown = set(values) - set(cls.__dataclass_fields__) - {"comment"}
        if unknown:
            raise InputError(f"config: unknown keys {sorted(unknown)}")
        values.pop("comment", None)
        defaults = cls()
        out = cls(**{k: v for k, v in values.items() if k not in ("data", "model", "sac")})
        allowed = {
            "env": set(inspect.signature(RegistrationEnv).parameters),
            "loss": set(inspect.signature(RegistrationLoss).parameters),
            "optim": set(defaults.optim),
            "schedule": set(defaults.schedule),
            "model": set(SPACArchitecture.__dataclass_fields__),
        }
        for key, names in allowed.items():
            unknown = set(values.get(key, {})) - names
            if unknown:
                raise InputError(f"config '{key}': unknown keys {sorted(unknown)} (known: {sorted(names)})")
        for key in ("env", "loss", "optim", "schedule"):
            setattr(out, key, {**getattr(defaults, key), **values.get(key, {})})
        out.data = DataConfig.from_dict(values.get("data", {}))
        out.model = SPACArchitecture.from_dict(values.get("model", {}))
        out.sac = SACConfig.from_dict(values.get("sac", {}))
        return out

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config '{path}': file not found")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise InputError(f"config '{path}': {error}") from None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["model"] = self.model.to_dict()
        out["data"]["shape"] = list(self.data.shape)
        return out


# ------------------------------------------------------------------------------------- registration loss


class RegistrationLoss(nn.Module):
    """Unsupervised loss of one step: similarity + w_g * lambda-weighted diffusion + w_b * Beta prior.

    The previous field is a constant; the gradient flows through the step and lambda into the network.
    """

    def __init__(
        self, similarity="ncc", ncc_window=7, diffusion_weight=2.0, prior_weight=1.0, w_log_beta=0.18
    ):
        super().__init__()
        kwargs = {"window": ncc_window} if similarity == "ncc" else {}
        self.similarity = make_similarity(similarity, **kwargs)
        self.diffusion_weight, self.prior_weight, self.w_log_beta = diffusion_weight, prior_weight, w_log_beta

    def forward(self, fixed, moving, previous, step, weight) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = compose_displacements(step, previous.detach())
        similarity = self.similarity(fixed, warp(moving, total))
        diffusion = weighted_diffusion(total, weight)
        prior = beta_hyperprior(weight, self.w_log_beta)
        loss = similarity + self.diffusion_weight * diffusion + self.prior_weight * prior
        parts = {"similarity": similarity, "diffusion": diffusion, "prior": prior, "lambda": weight.mean()}
        return loss, {k: v.detach() for k, v in parts.items()}


class TrainingStep(nn.Module):
    """One forward computing the summed loss of a step (the module DistributedDataParallel wraps).

    ``forward(fixed, moving, warped, field, replay_batch=None)`` -> (loss, logs, plan, step). The plan and
    step field (detached) are what the environment executes.
    """

    def __init__(self, agent: SPACAgent, registration: RegistrationLoss, sac: SACConfig):
        super().__init__()
        self.agent, self.registration, self.sac = agent, registration, sac

    def forward(self, fixed, moving, warped, field, replay_batch: dict | None = None):
        out = self.agent.network(fixed, warped)
        loss, logs = self.registration(fixed, moving, field, out.step, out.weight)
        logs = {"loss_reg": loss.detach(), **logs, "sigma": out.log_std.exp().mean().detach()}
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
    """Mean of each logged number over the ranks (one small all-reduce)."""
    if not dist_info.enabled or not logs:
        return logs
    keys = sorted(logs)
    values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)
    return {k: float(v) / dist_info.world_size for k, v in zip(keys, values.tolist())}


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
    warmup, sac = int(cfg.schedule["warmup_steps"]), int(cfg.schedule["sac_steps"])
    if steps is None:
        return warmup, warmup + sac
    if warmup + sac == 0:
        return 0, int(steps)
    return round(steps * warmup / (warmup + sac)), int(steps)


@torch.no_grad()
def validate(agent: SPACAgent, pairs: list[dict], steps: int, device: torch.device) -> dict[str, float]:
    """Deterministic episodes on the validation pairs: mean Dice (true labels, the 30 evaluation labels
    present) before and after ``steps`` steps, and the folded percentage."""
    labels = evaluation_labels()
    env = RegistrationEnv(steps, reward="labels", fold_weight=1.0, label_classes=labels)
    network = agent.network
    was_training = network.training
    network.eval()
    before, after, folded = [], [], []
    for pair in pairs:
        state = env.reset(*(pair[k].to(device) for k in ("fixed", "moving", "fixed_labels", "moving_labels")))
        info = {"dice": env.dice, "folded_fraction": torch.zeros(1)}
        for _ in range(steps):
            out = network(state.fixed, state.warped, deterministic=True)
            state, _, _, info = env.step(out.step)
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
    "step", "stage", "loss", "loss_reg", "similarity", "diffusion", "prior", "lambda", "sigma", "reward",
    "pseudo_dice", "critic_loss", "actor_loss", "alpha_loss", "q", "entropy", "alpha", "grad_norm",
    "val_dice_before", "val_dice", "val_folding_percent", "seconds",
]  # fmt: skip


class RunLog:
    """CSV log with the columns ``LOG_COLUMNS`` (+ TensorBoard when installed), written by rank 0."""

    def __init__(self, path: Path, append: bool):
        self.path = path
        if not (append and path.is_file()):
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
            csv.writer(handle).writerow([_fmt(row.get(c, "")) for c in LOG_COLUMNS])
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


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


def track_best(best: dict | None, metrics: dict, step: int, agent: SPACAgent) -> dict:
    """The best validation so far, with a CPU copy of its network weights."""
    if best is not None and metrics["val_dice"] <= best["val_dice"]:
        return best
    network = {k: v.detach().cpu().clone() for k, v in agent.network.state_dict().items()}
    return {"val_dice": metrics["val_dice"], "step": step, "metrics": dict(metrics), "network": network}


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
    agent = SPACAgent(cfg.model, cfg.sac.init_alpha).to(dev)
    optimizer = make_optimizer(agent, cfg.optim)
    step, best, elapsed_before = 0, None, 0.0
    if resume:
        ckpt = torch.load(checkpoint_path, map_location=dev, weights_only=False)
        agent.load_state_dict(ckpt["agent"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, best, elapsed_before = ckpt["step"], ckpt.get("best"), ckpt.get("wall_time_s", 0.0)
    seed_everything(cfg.seed + 1000 * dist_info.rank + step)  # per-rank exploration and data

    registration = RegistrationLoss(**cfg.loss)
    module = TrainingStep(agent, registration, cfg.sac)
    model = module
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True
        )

    train_bank, val_bank = banks or load_banks(cfg.data, dist_info.is_main)
    val_set = validation_pairs(val_bank, cfg.data, cfg.data.val_pairs, cfg.seed) if val_bank else []
    loader = pair_loader(train_bank, cfg.data, int(sched["batch_size"]), cfg.seed, dist_info.rank, step)
    env = RegistrationEnv(**cfg.env)
    replay = ReplayBuffer(cfg.sac.replay_capacity, (2, *cfg.data.shape), cfg.model.plan_dim)
    generator = torch.Generator().manual_seed(cfg.seed + 7919 * dist_info.rank + step)

    log = None
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log = RunLog(run_dir / "log.csv", append=resume)
    from tqdm import tqdm

    if dist_info.is_main and progress:
        print(
            f"training {cfg.id}: {count_summary(agent)}; {describe_device(dev)} x {dist_info.world_size}; "
            f"grid {list(cfg.data.shape)} at {cfg.data.spacing_mm} mm; steps {step + 1}..{total_steps} "
            f"(warm-up to {warmup_steps}); run folder {run_dir}"
        )
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (progress and dist_info.is_main),
        unit="step",
        dynamic_ncols=True,
        file=sys.stdout,
    )
    state, done, last_val = None, True, {}
    run_start = time.perf_counter()
    while step < total_steps:
        step += 1
        stage = "warmup" if step <= warmup_steps else "sac"
        if done:
            batch = {k: v.to(dev) for k, v in next(loader).items()}
            state = env.reset(batch["fixed"], batch["moving"], batch["fixed_labels"], batch["moving_labels"])
        replay_batch = None
        if stage == "sac" and len(replay) > 0:
            replay_batch = replay.sample(cfg.sac.batch_size, generator, dev)
        loss, logs, plan, step_field = model(
            state.fixed, state.moving, state.warped, state.field, replay_batch
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(optimizer, cfg.optim["grad_clip"])
        optimizer.step()
        if replay_batch is not None:
            agent.soft_update(cfg.sac.tau)
        obs = state.observation()
        state, reward, done, info = env.step(step_field)
        replay.push(obs, plan, reward, state.observation(), done)

        values = {k: float(v) for k, v in logs.items()}
        values.update(loss=float(loss.detach()), reward=float(reward.mean()), grad_norm=float(grad_norm))
        values["pseudo_dice"] = float(info["dice"].mean())
        values = average_logs(values, dist_info, dev)
        if dist_info.is_main:
            if val_set and (step % int(sched["validate_every"]) == 0 or step == total_steps):
                last_val = validate(agent, val_set, int(cfg.env["episode_length"]), dev)
                best = track_best(best, last_val, step, agent)
                values.update(last_val)
            values["seconds"] = time.perf_counter() - run_start
            log.write(step, stage, values)
            bar.set_postfix(
                stage=stage,
                reg=f"{values['loss_reg']:.3f}",
                ncc=f"{values['similarity']:.3f}",
                reward=f"{values['reward']:+.2f}",
                critic=f"{values.get('critic_loss', float('nan')):.3g}",
                alpha=f"{values.get('alpha', float(agent.alpha.detach())):.3g}",
                val_dice=f"{last_val.get('val_dice', float('nan')):.3f}",
                refresh=False,
            )
        bar.update(1)
        if step % int(sched["checkpoint_every"]) == 0 or step == total_steps:
            elapsed = elapsed_before + time.perf_counter() - run_start
            if dist_info.is_main:
                save_checkpoint(checkpoint_path, agent, optimizer, step, best, cfg, elapsed)
    bar.close()

    checksums = _gather_checksums(agent, dist_info, dev)
    if dist_info.is_main:
        wall_time = elapsed_before + time.perf_counter() - start_time
        network_state = agent.network.state_dict()
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
        }
        save_model(out_dir, network_state, cfg, training, selected["metrics"])
        if log is not None and log.path.is_file():
            (out_dir / "training_log.csv").write_bytes(log.path.read_bytes())
    if dist_info.enabled:
        torch.distributed.barrier()
        if dist_info.owns_group:
            torch.distributed.destroy_process_group()
    return out_dir


def _gather_checksums(agent: SPACAgent, dist_info: Distributed, device: torch.device) -> list[float]:
    """Parameter checksum of every rank (all equal when DDP kept the replicas in sync)."""
    value = torch.tensor([parameter_checksum(agent)], dtype=torch.float64, device=device)
    if not dist_info.enabled:
        return [float(value)]
    gathered = [torch.zeros_like(value) for _ in range(dist_info.world_size)]
    torch.distributed.all_gather(gathered, value)
    return [float(v) for v in gathered]


def save_checkpoint(
    path: Path, agent, optimizer, step: int, best, cfg: TrainConfig, wall_time: float
) -> None:
    """Everything needed to resume (not the replay buffer: it refills within a few episodes)."""
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
        },
        tmp,
    )
    os.replace(tmp, path)


def save_model(
    out_dir: Path, network_state: dict, cfg: TrainConfig, training: dict, validation: dict
) -> Path:
    """Write ``weights.pt`` (the inference network's state dict) and ``card.json`` (with its sha256)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_NAME
    torch.save({k: v.detach().cpu() for k, v in network_state.items()}, weights)
    card = {
        "id": cfg.id,
        "family": "spac",
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
    (out_dir / CARD_NAME).write_text(json.dumps(card, indent=2))
    return out_dir


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
    "RegistrationLoss",
    "TrainConfig",
    "TrainingStep",
    "clip_gradients",
    "make_optimizer",
    "save_checkpoint",
    "save_model",
    "setup_distributed",
    "stage_steps",
    "train",
    "validate",
]
