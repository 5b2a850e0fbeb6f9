"""GRPO training of the MorphSeek policy (docs/ARCHITECTURE.md §2): warm-up loss, group rollouts, advantages.

MorphSeek trains in two stages (``training.morphseek_trainer`` runs them, ``model.family`` "morphseek"):

* ``warmup``: the deterministic policy (temperature 0, z = mu) with the registration loss of
  ``training.losses.RegistrationLoss`` plus a small ``kl_prior_weight`` * KL(N(mu, sigma^2) || N(0, 1))
  (``morphseek_warmup_loss``);
* ``grpo``: Group Relative Policy Optimization. A pair is replicated J (``group_size``) times and rolled
  out for T (``horizon``) steps in one batched environment, sampling z = mu + tau sigma eps. The return
  of trajectory j is R_j = sum_t reward_{j,t} (100 * Dice gain - folding penalty); its advantage
  A_j = (R_j - mean R) / (std R + eps) within the group. The loss is

      - mean_j(A_j * sum_t log pi(z_{j,t}) / sqrt(N))         (policy gradient, N latent elements)
      + kl_ref_weight * KL(pi || pi_ref)                      (pi_ref: the frozen warm-up policy)
      + reg_weight * mean_t warm-up loss                      (registration loss of every step)

  Label efficiency: only the subjects ``label_subjects`` have labels. A pair of two labelled subjects is
  rewarded with the Dice of the true labels (and gets the label term of the registration loss); any
  other pair with the Dice of K-means pseudo-labels (``environment.kmeans_pseudo_labels``).

Tensors are (B, C, D, H, W) on the network grid; the registration loss is passed in (any module with the
``RegistrationLoss`` call signature), so this module does not import the trainers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..policies.morphseek_network import MorphSeekArchitecture, MorphSeekNetwork, MorphSeekOutput, gaussian_kl
from .environment import RegistrationEnv, kmeans_pseudo_labels, paired_one_hot
from .initial_weights import read_initial_weights
from .losses import RegistrationLoss

#: ``env`` config keys that also shape the GRPO rollout environment
ENV_OPTIONS = ("clusters", "dice_scale", "fold_weight", "foreground_threshold")


@dataclass
class GRPOConfig:
    """The ``grpo`` config section (family "morphseek" only).

    ``kl_prior_weight`` weighs KL(N(mu, sigma^2) || N(0, 1)) in the warm-up loss (also inside the GRPO
    registration term); ``kl_ref_weight`` the KL to the frozen warm-up policy; ``reg_weight`` the
    registration loss during GRPO. ``label_subjects``: training subject ids whose labels may be used
    (``None``: all of them; ``[]``: none, pseudo-label rewards only). ``labelled_pair_fraction``: the
    probability that a GRPO update draws its pair among the labelled subjects only (``None``: pairs are
    drawn from all training subjects, labelled pairs as often as they happen to come up).
    """

    group_size: int = 6
    horizon: int = 3
    temperature: float = 1.0
    kl_ref_weight: float = 0.1
    kl_prior_weight: float = 1e-3
    reg_weight: float = 1.0
    advantage_eps: float = 1e-6
    label_subjects: list[int] | None = None
    labelled_pair_fraction: float | None = None

    @classmethod
    def from_dict(cls, values: dict) -> GRPOConfig:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(
                f"config 'grpo': unknown keys {sorted(unknown)} (known: {sorted(cls.__dataclass_fields__)})"
            )
        cfg = cls(**values)
        if cfg.label_subjects is not None:
            cfg.label_subjects = [int(s) for s in cfg.label_subjects]
        if int(cfg.group_size) < 2 or int(cfg.horizon) < 1 or float(cfg.temperature) < 0:
            raise InputError("config 'grpo': group_size must be >= 2, horizon >= 1 and temperature >= 0")
        fraction = cfg.labelled_pair_fraction
        if fraction is not None and not 0.0 <= float(fraction) <= 1.0:
            raise InputError(f"config 'grpo': labelled_pair_fraction must be in [0, 1], got {fraction}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------- GRPO arithmetic


def group_relative_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(R - mean) / (std + eps) within each group: ``rewards`` (J,) is one group, (G, J) G groups.

    The (population) standard deviation makes each group's advantages zero-mean with unit spread; a group
    of equal rewards gets zero advantages. Detached: the advantage is a constant of the policy gradient.
    """
    groups = rewards.detach().reshape(-1, rewards.shape[-1]).double()
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)
    return ((groups - mean) / (std + eps)).to(rewards.dtype).reshape(rewards.shape)


def grpo_policy_loss(log_probs: torch.Tensor, advantages: torch.Tensor, latent_size: int) -> torch.Tensor:
    """-mean_j(A_j * sum_t log pi(z_{j,t}) / sqrt(latent_size)).

    ``log_probs``: (B,) trajectory log-likelihoods or (T, B) per step (summed over T); ``advantages``:
    (B,) or (G, J) with G * J = B (flattened). Dividing by the square root of the number of latent
    elements keeps the gradient scale independent of the grid size.
    """
    trajectory = log_probs if log_probs.dim() == 1 else log_probs.sum(dim=0)
    advantages = advantages.detach().reshape(-1).to(trajectory.dtype)
    if advantages.numel() != trajectory.numel():
        raise ValueError(f"{advantages.numel()} advantages for {trajectory.numel()} trajectories")
    return -(advantages * trajectory).mean() / math.sqrt(latent_size)


def prior_kl(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, sigma^2) || N(0, 1)), averaged over batch and latent elements."""
    return gaussian_kl(mean, log_std, torch.zeros_like(mean), torch.zeros_like(log_std))


def morphseek_warmup_loss(
    registration: RegistrationLoss,
    out: MorphSeekOutput,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    field: torch.Tensor,
    labels: tuple[torch.Tensor, torch.Tensor] | None = None,
    kl_prior_weight: float = 1e-3,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Registration loss of the step ``out.step`` on the total field ``field`` (+ label term when
    ``labels`` = one-hot (fixed, moving) are given) + ``kl_prior_weight`` * ``prior_kl``.

    Returns (loss, detached logs: ``loss_reg`` = the registration part, its terms, ``kl_prior``,
    ``sigma``)."""
    loss_reg, parts = registration(fixed, moving, field, out.step, out.weight, labels)
    kl = prior_kl(out.mean, out.log_std)
    logs = {"loss_reg": loss_reg.detach(), **parts, "kl_prior": kl.detach()}
    logs["sigma"] = out.log_std.exp().mean().detach()
    return loss_reg + kl_prior_weight * kl, logs


@torch.no_grad()
def reference_distribution(
    reference: MorphSeekNetwork, fixed: torch.Tensor, warped: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, log_std) of the reference policy's latent Gaussian at the states (fixed, warped); the
    decoder is not run."""
    mean, log_std, _ = reference.latent_distribution(fixed, warped)
    return mean, log_std


# ------------------------------------------------------------------------------------ labels / rewards


def labelled_pair(subject_ids: tuple[int, int], label_subjects: list[int] | None) -> bool:
    """Whether both subjects of a pair have labels (``label_subjects`` None: every subject has)."""
    return label_subjects is None or all(int(s) in set(label_subjects) for s in subject_ids)


def group_environment(
    pair: dict[str, torch.Tensor], labelled: bool, horizon: int, env_options: dict
) -> tuple[RegistrationEnv, tuple[torch.Tensor, torch.Tensor]]:
    """An environment of ``horizon`` steps rewarding the Dice of the true labels (``labelled``) or of
    K-means pseudo-labels, and the (fixed, moving) segmentations it scores (1, 1, D, H, W).

    The pseudo-labels are computed once for the pair (not once per trajectory) and scored as labels, which
    is what the ``"kmeans"`` reward does."""
    options = {k: env_options[k] for k in ENV_OPTIONS if k in env_options}
    if labelled:
        segmentations, classes = (pair["fixed_labels"], pair["moving_labels"]), None
    else:
        clusters = int(options.get("clusters", 3))
        threshold = float(options.get("foreground_threshold", 0.02))
        segmentations = tuple(kmeans_pseudo_labels(pair[k], clusters, threshold) for k in ("fixed", "moving"))
        classes = list(range(1, clusters + 1))
    env = RegistrationEnv(horizon, reward="labels", label_classes=classes, **options)
    return env, segmentations


def grpo_rollout(
    network: MorphSeekNetwork,
    reference: MorphSeekNetwork,
    registration: RegistrationLoss,
    pair: dict[str, torch.Tensor],
    cfg: GRPOConfig,
    labelled: bool,
    env_options: dict | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One GRPO loss for one pair (tensors (1, 1, D, H, W): ``fixed``, ``moving``, ``fixed_labels``,
    ``moving_labels``): J = ``group_size`` sampled trajectories of T = ``horizon`` steps.

    Returns (loss with its graph, logs as floats: ``loss``, ``pg_loss``, ``kl_ref``, the mean registration
    terms, ``reward`` / ``reward_std`` (the group's returns), ``pseudo_dice`` (final Dice of the scored
    segmentation), ``dice_gain``, ``label_reward`` (1 labels, 0 pseudo-labels), ``sigma``).
    """
    group = int(cfg.group_size)

    def replicate(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:  # the J copies of the pair
        return tuple(x.repeat(group, 1, 1, 1, 1) for x in tensors)

    env, segmentations = group_environment(pair, labelled, int(cfg.horizon), env_options or {})
    state = env.reset(*replicate(pair["fixed"], pair["moving"]), *replicate(*segmentations))
    labels = None
    if labelled and getattr(registration, "label_weight", 0.0) > 0:
        labels = replicate(*paired_one_hot(pair["fixed_labels"], pair["moving_labels"]))
    log_probs, rewards, kl_refs, reg_losses, reg_logs = [], [], [], [], []
    latent_size, info = 1, {"dice": env.dice, "dice_gain": torch.zeros_like(env.dice)}
    for _ in range(int(cfg.horizon)):
        out = network(state.fixed, state.warped, temperature=float(cfg.temperature), generator=generator)
        ref_mean, ref_log_std = reference_distribution(reference, state.fixed, state.warped)
        loss_reg, logs = morphseek_warmup_loss(
            registration, out, state.fixed, state.moving, state.field, labels, cfg.kl_prior_weight
        )
        kl_refs.append(gaussian_kl(out.mean, out.log_std, ref_mean, ref_log_std))
        reg_losses.append(loss_reg)
        reg_logs.append(logs)
        log_probs.append(out.log_prob)
        latent_size = out.latent_size
        state, reward, _, info = env.step(out.step)
        rewards.append(reward)
    returns = torch.stack(rewards).sum(dim=0)
    advantages = group_relative_advantages(returns, cfg.advantage_eps)
    pg_loss = grpo_policy_loss(torch.stack(log_probs), advantages, latent_size)
    kl_ref, reg = torch.stack(kl_refs).mean(), torch.stack(reg_losses).mean()
    loss = pg_loss + cfg.kl_ref_weight * kl_ref + cfg.reg_weight * reg
    values = {k: float(torch.stack([logs[k] for logs in reg_logs]).mean()) for k in reg_logs[0]}
    values.update(
        loss=float(loss.detach()),
        pg_loss=float(pg_loss.detach()),
        kl_ref=float(kl_ref.detach()),
        reward=float(returns.mean()),
        reward_std=float(returns.std(unbiased=False)),
        pseudo_dice=float(info["dice"].mean()),
        dice_gain=float(info["dice_gain"].mean()),
        label_reward=float(labelled),
    )
    return loss, values


# ------------------------------------------------------------------------------- agent and training step


class MorphSeekAgent(nn.Module):
    """Training-time container: ``network`` (trained) and ``reference`` (frozen copy: the warm-up policy
    that GRPO stays close to, taken by ``snapshot_reference`` when GRPO starts; part of the checkpoint).
    The reference's parameters do not require gradients (DistributedDataParallel skips them)."""

    def __init__(self, architecture: MorphSeekArchitecture | None = None):
        super().__init__()
        self.network = MorphSeekNetwork(architecture)
        self.reference = copy.deepcopy(self.network).requires_grad_(False)
        self.register_buffer("reference_step", torch.tensor(-1, dtype=torch.long))

    @property
    def has_reference(self) -> bool:
        return int(self.reference_step) >= 0

    @torch.no_grad()
    def snapshot_reference(self, step: int) -> None:
        """reference <- network (at training step ``step``)."""
        self.reference.load_state_dict(self.network.state_dict())
        self.reference_step.fill_(int(step))


def make_morphseek_optimizer(network: MorphSeekNetwork, optim: dict) -> torch.optim.Optimizer:
    """Adam with two parameter groups: encoder (backbone + latent Gaussian head, ``lr_encoder``) and
    decoder (decoder + weight-map head, ``lr_decoder``)."""
    groups = [
        {
            "params": [*network.backbone.parameters(), *network.latent_head.parameters()],
            "lr": optim["lr_encoder"],
        },
        {
            "params": [*network.decoder.parameters(), *network.weight_head.parameters()],
            "lr": optim["lr_decoder"],
        },
    ]
    return torch.optim.Adam(groups, betas=tuple(optim["betas"]))


class MorphSeekTrainingStep(nn.Module):
    """The module DistributedDataParallel wraps for MorphSeek: one forward per optimizer update.

    * ``forward("warmup", fixed, moving, warped, field, labels=None)`` -> (loss, logs, step): the
      deterministic step on the current states and its warm-up loss;
    * ``forward("grpo", pair, labelled)`` -> (loss, logs): ``grpo_rollout`` of one pair (all T steps of
      the J trajectories inside one forward, so DDP sees one forward per backward).
    """

    def __init__(
        self,
        agent: MorphSeekAgent,
        registration: RegistrationLoss,
        cfg: GRPOConfig,
        env_options: dict | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.agent, self.registration, self.cfg = agent, registration, cfg
        self.env_options = dict(env_options or {})
        self.generator = generator

    def forward(self, stage: str, *args, **kwargs):
        if stage == "warmup":
            return self.warmup(*args, **kwargs)
        if stage == "grpo":
            return self.group(*args, **kwargs)
        raise ValueError(f"unknown MorphSeek training stage '{stage}'")

    def group(self, pair: dict[str, torch.Tensor], labelled: bool) -> tuple[torch.Tensor, dict[str, float]]:
        agent = self.agent
        return grpo_rollout(
            agent.network,
            agent.reference,
            self.registration,
            pair,
            self.cfg,
            labelled,
            self.env_options,
            self.generator,
        )

    def warmup(self, fixed, moving, warped, field, labels=None):
        out = self.agent.network(fixed, warped)
        loss, logs = morphseek_warmup_loss(
            self.registration, out, fixed, moving, field, labels, self.cfg.kl_prior_weight
        )
        return loss, logs, out.step.detach()


# ------------------------------------------------------------------------------------------ warm start


def load_initial_weights(network: MorphSeekNetwork, path: str | Path) -> list[str]:
    """Warm start ``network`` from a ``weights.pt`` of a SPAC model (backbone, decoder, weight-map head) or
    of a MorphSeek model (everything, e.g. GRPO from a warm-up-only model);
    ``MorphSeekNetwork.load_spac_backbone``. Returns the names of the copied tensors; InputError when the
    file is missing, unreadable or not a state dict (``read_initial_weights``), or when no tensor matches
    (another architecture)."""
    state = read_initial_weights(
        path,
        "train that model first, e.g. rlreg train --config configs/morphseek_warmup_cpu_small.json, or "
        "remove init.weights",
    )
    copied = network.load_spac_backbone(state)
    if not copied:
        raise InputError(f"init.weights '{path}': no tensor matches the MorphSeek architecture")
    return copied


__all__ = [
    "GRPOConfig",
    "MorphSeekAgent",
    "MorphSeekTrainingStep",
    "group_environment",
    "group_relative_advantages",
    "grpo_policy_loss",
    "grpo_rollout",
    "labelled_pair",
    "load_initial_weights",
    "make_morphseek_optimizer",
    "morphseek_warmup_loss",
    "prior_kl",
    "reference_distribution",
]
