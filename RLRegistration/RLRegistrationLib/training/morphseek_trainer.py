"""The MorphSeek trainer (``model.family`` "morphseek"): stage ``warmup`` then ``grpo`` (the losses and
rollouts: ``training.grpo``), optional warm start from a SPAC or MorphSeek ``weights.pt``
(``init.weights``), and the count of which subjects' labels were used (for the model card)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..policies.morphseek_network import head_parameter_fraction
from ..policies.networks import count_parameters
from .config import TrainConfig
from .data import DataConfig, pair_loader
from .distributed import Distributed
from .environment import paired_one_hot
from .family_trainer import FamilyTrainer
from .grpo import (
    MorphSeekAgent,
    MorphSeekTrainingStep,
    labelled_pair,
    load_initial_weights,
    make_morphseek_optimizer,
)
from .label_bank import LabelBank
from .losses import RegistrationLoss


def training_subject_ids(d: DataConfig, bank: LabelBank) -> list[int]:
    """Subject id of every map of the training bank: ``d.train_subjects`` when they correspond one to one,
    else 1..n (a bank given in memory without matching ids)."""
    ids = [int(s) for s in d.train_subjects]
    return ids if len(ids) == len(bank) else list(range(1, len(bank) + 1))


class MorphSeekTrainer(FamilyTrainer):
    """MorphSeek: stage ``warmup`` (deterministic policy, registration loss + small prior KL) then ``grpo``
    (group rollouts of one pair per update, ``training.grpo``). Labels are used only for pairs of the
    subjects ``grpo.label_subjects``; which labels were used is counted for the model card."""

    second_stage = "grpo"
    #: logged every update (NaN when absent), so every rank reports the same keys
    ALWAYS_LOGGED = ("label_loss", "label_reward")

    def __init__(self, cfg: TrainConfig, device: torch.device):
        super().__init__(cfg, device)
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

    def copy_initial_weights(self, path: Path) -> list[str]:
        return load_initial_weights(self.agent.network, path)  # a SPAC backbone or a MorphSeek model

    def checkpoint_extra(self) -> dict[str, Any]:
        return {**super().checkpoint_extra(), "label_usage": self.label_usage}

    def load_checkpoint(self, ckpt: dict) -> None:
        super().load_checkpoint(ckpt)
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
            loss, logs, step_field = self.forward(
                "warmup", state.fixed, state.moving, state.warped, state.field, self.labels
            )
            values, _ = self.environment_step(step_field, loss, logs, self.optimize(loss))
        else:
            if not self.agent.has_reference:  # the policy at the end of the warm-up
                self.agent.snapshot_reference(step - 1)
            pair, labelled = self.next_group_pair()
            loss, values = self.forward("grpo", pair, labelled)
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
        return {**super().card_training(), "init": self.init_info, "label_usage": usage}
