"""The SPAC trainer (``model.family`` "spac"): every optimization step takes one step in a batch of
registration episodes (``environment``) on synthetic pairs (``training.data``), and makes one optimizer
update of one summed loss:

* stage ``warmup`` (a): registration loss of the on-policy step, reaching planner, actor and lambda head:
  ``NCC(F, M o (id + phi_t)) + w_g * weighted_diffusion(phi_t, lambda) + w_b * beta_hyperprior(lambda)``
  with ``phi_t = a_t + phi_{t-1} o (id + a_t)`` (the plan is sampled with the reparameterization trick),
  plus the label and target terms when the config asks for them (``losses.RegistrationLoss``);
* stage ``sac`` (b): the same registration loss plus the SAC losses on a replay batch (``training.sac``):
  twin critics with target copies (soft updates), planner loss with learned entropy temperature.

Transitions (with the K-means pseudo-label Dice reward) go to the replay buffer in both stages.
"""

from __future__ import annotations

import torch
from torch import nn

from ..policies.networks import SPACAgent, count_parameters
from .distributed import Distributed
from .family_trainer import FamilyTrainer
from .label_bank import LabelBank
from .losses import RegistrationLoss
from .sac import ReplayBuffer, SACConfig, sac_losses


class TrainingStep(nn.Module):
    """One forward computing the summed loss of a step (the module DistributedDataParallel wraps).

    ``forward(fixed, moving, warped, field, replay_batch=None, labels=None, planner_on=True, target=None)``
    -> (loss, logs, plan, step). The plan and step field (detached) are what the environment executes;
    ``labels`` = one-hot (fixed, moving) for the weak-supervision term; ``planner_on`` False during the
    critic warm-up; ``target`` the optimizer's field of the pair (B, 3, D, H, W) for the distillation term.
    """

    def __init__(self, agent: SPACAgent, registration: RegistrationLoss, sac: SACConfig):
        super().__init__()
        self.agent, self.registration, self.sac = agent, registration, sac

    def forward(
        self,
        fixed,
        moving,
        warped,
        field,
        replay_batch: dict | None = None,
        labels=None,
        planner_on=True,
        target=None,
    ):
        out = self.agent.network(fixed, warped)
        loss, logs = self.registration(fixed, moving, field, out.step, out.weight, labels, target)
        logs = {"loss_reg": loss.detach(), **logs, "sigma": out.log_std.exp().mean().detach()}
        loss = loss + self.sac.plan_l2 * out.mean.pow(2).mean()  # in both stages: the plan must not drift
        if replay_batch is not None:
            parts = sac_losses(self.agent, replay_batch, self.sac, planner_on)
            loss = loss + parts["critic_loss"] + parts["actor_loss"] + parts["alpha_loss"]
            logs.update({k: v.detach() for k, v in parts.items()})
        return loss, logs, out.plan.detach(), out.step.detach()


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


def count_summary(agent: SPACAgent) -> str:
    """Parameter counts of the shipped network and of the twin critics."""
    return f"network {count_parameters(agent.network)} parameters, critics {count_parameters(agent.critic)}"


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
        planner_on = step - self.warmup_steps > self.cfg.sac.critic_warmup_steps
        loss, logs, plan, step_field = self.forward(
            state.fixed,
            state.moving,
            state.warped,
            state.field,
            replay_batch,
            self.labels,
            planner_on,
            self.targets,
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
