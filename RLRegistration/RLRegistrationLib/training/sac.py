"""Soft actor-critic on plans (SPAC): replay buffer, critic / planner / temperature losses, soft updates.

The action SAC sees is the *plan* (B, plan_dim), not the step field: the twin critics score
Q(state embedding, plan); the planner (backbone + planner head) is pushed towards plans of high Q with an
entropy bonus alpha * H; alpha is learned towards a target entropy. The actor decoder, which turns a plan
into a field, is trained by the registration loss (``training.losses``), as in the SPAC paper.

All losses are returned as tensors so that the trainer can add them and call ``backward`` once (one
forward-backward per step keeps DistributedDataParallel simple); gradients are routed by detaching:

* critic loss -> critic only (state embedding detached, targets from the frozen target critic);
* planner loss -> backbone + planner head only (critic parameters are used detached);
* temperature loss -> ``log_alpha`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..policies.networks import SPACAgent, sample_plan, state_embedding


@dataclass
class SACConfig:
    """SAC hyperparameters. ``target_entropy`` None means ``-plan_dim`` (the usual -|A|)."""

    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 2
    replay_capacity: int = 128
    init_alpha: float = 0.1
    target_entropy: float | None = None
    actor_weight: float = 1.0  # weight of the SAC planner loss next to the registration loss
    plan_l2: float = 1e-3  # keeps the unsquashed plan mean from drifting
    critic_warmup_steps: int = 0  # first updates of the SAC stage without the planner loss: a fresh
    # critic (a warm start copies only the network) would otherwise push the plans with noise

    @classmethod
    def from_dict(cls, values: dict) -> SACConfig:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"config 'sac': unknown keys {sorted(unknown)}")
        return cls(**values)


class ReplayBuffer:
    """Ring buffer of transitions (obs, plan, reward, next_obs, done), stored on the CPU.

    Observations (2, D, H, W) = (fixed, warped) are kept in float16 (half the memory; images are in
    [0, 1]); ``sample`` returns float32 on ``device``.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], plan_dim: int):
        self.capacity = int(capacity)
        self.obs = torch.zeros((self.capacity, *obs_shape), dtype=torch.float16)
        self.next_obs = torch.zeros_like(self.obs)
        self.plan = torch.zeros((self.capacity, plan_dim))
        self.reward = torch.zeros(self.capacity)
        self.done = torch.zeros(self.capacity)
        self.size = 0
        self.position = 0

    def __len__(self) -> int:
        return self.size

    def push(
        self,
        obs: torch.Tensor,
        plan: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        done: torch.Tensor | bool,
    ) -> None:
        """Add a batch of transitions (leading dimension B)."""
        done = torch.as_tensor(done, dtype=torch.float32).expand(obs.shape[0])
        for b in range(obs.shape[0]):
            i = self.position
            self.obs[i] = obs[b].detach().to("cpu", torch.float16)
            self.next_obs[i] = next_obs[b].detach().to("cpu", torch.float16)
            self.plan[i] = plan[b].detach().cpu()
            self.reward[i] = float(reward[b])
            self.done[i] = float(done[b])
            self.position = (self.position + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Uniform sample (with replacement) of ``batch_size`` transitions."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = torch.randint(0, self.size, (batch_size,), generator=generator)
        return {
            "obs": self.obs[index].to(device).float(),
            "next_obs": self.next_obs[index].to(device).float(),
            "plan": self.plan[index].to(device),
            "reward": self.reward[index].to(device),
            "done": self.done[index].to(device),
        }


def sac_losses(
    agent: SPACAgent, batch: dict[str, torch.Tensor], cfg: SACConfig, planner_on: bool = True
) -> dict[str, torch.Tensor]:
    """Critic, planner and temperature losses on a replay batch (see the module docstring); with
    ``planner_on`` False the planner loss is zero (the critic warm-up, ``cfg.critic_warmup_steps``).

    Returns a dict of scalar tensors: ``critic_loss``, ``actor_loss``, ``alpha_loss`` (with gradients)
    and ``q``, ``entropy``, ``alpha`` (detached, for logging).
    """
    network = agent.network
    plan_dim = network.architecture.plan_dim
    target_entropy = -float(plan_dim) if cfg.target_entropy is None else cfg.target_entropy
    alpha = agent.log_alpha.exp()

    with torch.no_grad():
        next_obs = batch["next_obs"]
        mean, log_std, bottleneck, _ = network.plan_distribution(next_obs[:, :1], next_obs[:, 1:])
        next_plan, next_log_prob = sample_plan(mean, log_std)
        q1_t, q2_t = agent.target_critic(state_embedding(bottleneck), next_plan)
        soft_value = torch.min(q1_t, q2_t) - alpha * next_log_prob
        target = batch["reward"] + cfg.gamma * (1.0 - batch["done"]) * soft_value

    obs = batch["obs"]
    mean, log_std, bottleneck, _ = network.plan_distribution(obs[:, :1], obs[:, 1:])
    embedding = state_embedding(bottleneck).detach()
    q1, q2 = agent.critic(embedding, batch["plan"])
    critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)

    plan, log_prob = sample_plan(mean, log_std)
    critic_params = {name: p.detach() for name, p in agent.critic.named_parameters()}
    q1_pi, q2_pi = functional_call(agent.critic, critic_params, (embedding, plan))
    actor_loss = (alpha.detach() * log_prob - torch.min(q1_pi, q2_pi)).mean()
    actor_loss = actor_loss + cfg.plan_l2 * mean.pow(2).mean()
    if not planner_on:
        actor_loss = actor_loss * 0.0  # keeps the graph (DistributedDataParallel) with no effect

    alpha_loss = -(agent.log_alpha * (log_prob.detach() + target_entropy)).mean()
    return {
        "critic_loss": critic_loss,
        "actor_loss": cfg.actor_weight * actor_loss,
        "alpha_loss": alpha_loss,
        "q": torch.min(q1, q2).mean().detach(),
        "entropy": -log_prob.mean().detach(),
        "alpha": alpha.detach(),
    }
