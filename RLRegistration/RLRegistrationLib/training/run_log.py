"""What a training run writes: the run folder's ``log.csv`` (+ TensorBoard when installed) and
``checkpoint.pt`` (``--resume``), and the model folder (``weights.pt`` + ``card.json``, with the card's
data, hardware and GRPO summaries)."""

from __future__ import annotations

import csv
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..devices import describe_device
from ..policies.cards import CARD_NAME, sha256_of
from .config import TrainConfig
from .data import DataConfig
from .distributed import Distributed
from .grpo import GRPOConfig

WEIGHTS_NAME = "weights.pt"


LOG_COLUMNS = [
    "step", "stage", "loss", "loss_reg", "similarity", "label_loss", "target_loss", "diffusion", "prior", "lambda", "sigma",
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


def save_checkpoint(
    path: Path,
    agent: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    best: dict | None,
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
        "inference": inference_block(cfg),
        "training": training,
        "validation": {
            "pairs": cfg.data.val_pairs,
            **validation,  # "pairs": how many there were (fewer than asked with few validation subjects)
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


def inference_block(cfg: TrainConfig) -> dict:
    """The card's ``inference``: steps (one per ``step_spacings_mm`` entry when the config gives them, else
    the episode length), the step bound, and the config's ``inference`` entries."""
    spacings = cfg.inference.get("step_spacings_mm")
    steps = len(spacings) if spacings else int(cfg.env["episode_length"])
    return {"steps": steps, "max_step": cfg.model.max_step, **cfg.inference}


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


def data_description(d: DataConfig, custom: bool) -> str:
    """The card's ``training.data`` text: where the training pairs came from."""
    if custom:
        return "label maps given in memory (tests)"
    return (
        f"on-the-fly synthetic pairs from SynthSeg label maps {d.shared_dir}/synthseg subjects "
        f"{d.train_subjects} (random intensity per label, bias, noise, blur, random affine and smooth "
        f"deformation; {d.spacing_mm} mm, {list(d.shape)}); validation subjects {d.val_subjects} (T1-like)"
    )


def hardware_description(device: torch.device, dist_info: Distributed) -> str:
    """The card's ``training.hardware`` text: device, CPU cores, machine, processes."""
    text = f"{describe_device(device)}, {os.cpu_count()} CPU cores, {platform.machine()}"
    return f"{text}, {dist_info.world_size} processes" if dist_info.enabled else text
