"""Networks of the SPAC policy family: backbone, planner, actor, weight-map head and twin critics.

Stochastic Planner-Actor-Critic (Luo et al., AAAI 2022) with a spatially varying regularization head
(J. Chen et al., MedIA 2025), see docs/ARCHITECTURE.md §2. All tensors are (B, C, D, H, W) on the *network grid*
(each dimension divisible by 16); displacements are in voxels of that grid, channels (i, j, k).

* ``UNetBackbone``: (fixed, warped) -> (bottleneck at 1/16, skips at 1, 1/2, 1/4, 1/8). Any module with the
  same ``forward(x) -> (bottleneck, skips)`` and the attributes ``bottleneck_channels`` and
  ``skip_channels`` can replace it: the heads only see feature tensors.
* ``PlannerHead``: bottleneck -> Gaussian plan (mean, log sigma), ``plan_dim`` numbers per pair. The
  bottleneck is average-pooled to a fixed ``plan_grid``^3 first, so any grid size works.
* ``ActorDecoder``: plan (+ U-Net skips) -> step field, bounded per component by ``max_step`` voxels
  (``tanh``); also returns its features for the weight-map head.
* ``WeightMapHead``: decoder features (1/2 resolution) -> lambda in [1e-6, 1], upsampled to the grid.
* ``TwinCritic``: Q1, Q2 of (pooled state embedding, plan). It judges the low-dimensional plan, never
  the field.
* ``SPACNetwork``: what inference needs (backbone + planner + actor + weight head).
* ``SPACAgent``: the network plus twin critics, their target copies and the entropy temperature.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..fields.similarity import ncc_descent_direction

LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0


@dataclass
class BackboneArchitecture:
    """Hyperparameters of the U-Net backbone, decoder and weight-map head shared by the learned policy
    families (stored in a model card as ``architecture``).

    ``channels``: encoder features at 1/2, 1/4, 1/8, 1/16 of the grid (the last is the bottleneck).
    ``max_step``: per-component bound of a step, in network-grid voxels (can be changed at inference).
    """

    in_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 32, 64)
    decoder_channels: tuple[int, ...] = (32, 32, 32, 16)
    weight_head_channels: int = 16
    max_step: float = 2.0
    group_norm: bool = True  # GroupNorm after each backbone/decoder convolution (keeps activations bounded)
    similarity_gradient: bool = False  # the input adds the local-NCC descent direction (3 channels)
    # the weight-map head reads the decoder's last (full-resolution) features instead of those at 1/2
    weight_head_full_resolution: bool = False

    def __post_init__(self):
        expected = 5 if self.similarity_gradient else 2
        if self.in_channels != expected:
            raise ValueError(
                f"in_channels {self.in_channels}: the network sees {expected} channels (fixed, warped"
                + (", NCC descent direction i, j, k)" if self.similarity_gradient else ")")
            )

    @classmethod
    def from_dict(cls, values: dict):
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for key in ("channels", "decoder_channels"):
            if key in known:
                known[key] = tuple(int(c) for c in known[key])
        return cls(**known)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["channels"] = list(self.channels)
        out["decoder_channels"] = list(self.decoder_channels)
        return out

    @property
    def divisor(self) -> int:
        """Every grid dimension must be a multiple of this (one halving per encoder level)."""
        return 2 ** len(self.channels)

    def check_grid(self, shape: tuple[int, ...]) -> None:
        """ValueError unless ``shape`` is 3D with every dimension a positive multiple of ``divisor``."""
        d = self.divisor
        if len(shape) != 3 or any(n <= 0 or n % d for n in shape):
            raise ValueError(f"network grid {tuple(shape)} must be 3D with every dimension a multiple of {d}")


@dataclass
class SPACArchitecture(BackboneArchitecture):
    """SPAC: the backbone plus a ``plan_dim`` Gaussian plan pooled to ``plan_grid``^3 and twin critics."""

    plan_dim: int = 64
    plan_grid: int = 2
    critic_hidden: int = 128
    family: str = field(default="spac")


def network_input(
    fixed: torch.Tensor, warped: torch.Tensor, architecture: BackboneArchitecture
) -> torch.Tensor:
    """What the backbone sees of a state: (fixed, warped), plus the local-NCC descent direction
    (``similarity.ncc_descent_direction``) when the architecture asks for it. (B, in_channels, D, H, W)."""
    parts = [fixed, warped]
    if architecture.similarity_gradient:
        # local means and variances in float32 even under a bfloat16 autocast: 3 significant digits
        # would cancel out in E[x^2] - E[x]^2
        with torch.autocast(fixed.device.type, enabled=False):
            parts.append(ncc_descent_direction(fixed.float(), warped.float()))
    return torch.cat(parts, dim=1)


class Float32Linear(nn.Linear):
    """``nn.Linear`` that runs in float32 even under a bfloat16 autocast (same parameters, same state dict).

    The fully connected layers (planner, plan projection, critics) are a negligible share of the work; in
    float32 the plan's mean and log sigma, its log-density (a sum over ``plan_dim`` numbers) and the
    Q-values keep their precision, and these layers stay clear of oneDNN's bfloat16 matmul on Intel AMX,
    reported to leak garbage into its output when the inner dimension is not a multiple of 32
    (uxlfoundation/oneDNN#5717)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def conv_block(
    in_channels: int, out_channels: int, stride: int = 1, group_norm: bool = False
) -> nn.Sequential:
    """3x3x3 convolution (+ GroupNorm, groups of 8 channels) + LeakyReLU(0.2), as in VoxelMorph.

    Without normalization, activations grew without bound during training on synthetic pairs until the
    bounded (tanh) step field saturated and every gradient vanished; GroupNorm prevents that and works on
    any grid size (unlike InstanceNorm on a 1-voxel bottleneck)."""
    conv = nn.Conv3d(in_channels, out_channels, 3, stride, 1)
    if not group_norm:
        return nn.Sequential(conv, nn.LeakyReLU(0.2))
    return nn.Sequential(conv, nn.GroupNorm(max(1, out_channels // 8), out_channels), nn.LeakyReLU(0.2))


class UNetBackbone(nn.Module):
    """Encoder of a U-Net: ``forward(x) -> (bottleneck, skips)``.

    ``x`` (B, in_channels, D, H, W) with D, H, W divisible by ``2 ** len(channels)``. ``skips`` lists the
    input itself and the features at 1/2, 1/4, 1/8 (finest first); ``bottleneck`` is at 1/16 with
    ``channels[-1]`` features.
    """

    def __init__(
        self, in_channels: int = 2, channels: tuple[int, ...] = (16, 32, 32, 64), group_norm: bool = False
    ):
        super().__init__()
        widths = (in_channels, *channels)
        self.levels = nn.ModuleList(
            conv_block(a, b, stride=2, group_norm=group_norm) for a, b in zip(widths[:-1], widths[1:])
        )
        self.bottleneck_channels = channels[-1]
        self.skip_channels = list(widths[:-1])  # finest first

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for level in self.levels:
            skips.append(x)
            x = level(x)
        return x, skips


class PlannerHead(nn.Module):
    """Bottleneck features -> Gaussian plan (mean, log sigma), each (B, plan_dim).

    log sigma is squashed into [LOG_STD_MIN, LOG_STD_MAX] with a tanh (SAC-style bounded variance).
    """

    def __init__(self, bottleneck_channels: int, plan_dim: int = 64, plan_grid: int = 2):
        super().__init__()
        self.plan_grid = plan_grid
        self.fc = Float32Linear(bottleneck_channels * plan_grid**3, 2 * plan_dim)

    def forward(self, bottleneck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.adaptive_avg_pool3d(bottleneck, self.plan_grid).flatten(1)
        mean, raw_log_std = self.fc(pooled).chunk(2, dim=1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw_log_std) + 1.0)
        return mean, log_std


def sample_plan(
    mean: torch.Tensor,
    log_std: torch.Tensor,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterized plan ``mean + temperature * sigma * eps`` and its log-density (B,) under
    N(mean, sigma^2).

    ``deterministic`` returns the mean (the inference default) and the log-density of the mean;
    ``temperature`` (sampling at inference) scales the noise, 1 in training.
    """
    std = log_std.exp()
    if deterministic:
        plan = mean
    else:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        plan = mean + temperature * std * eps
    z = (plan - mean) / std
    log_prob = (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(dim=1)
    return plan, log_prob


class SkipDecoder(nn.Module):
    """U-Net decoder: a bottleneck-sized feature map (B, ``bottleneck_channels``, ...) + skips -> step field
    (B, 3, D, H, W) in voxels, ``|a| <= max_step`` per component (``tanh``), and the decoder features at
    1/2 resolution, or with ``full_resolution_features`` the last ones (for the weight-map head). Shared
    by the SPAC actor and the MorphSeek policy."""

    def __init__(
        self,
        bottleneck_channels: int,
        skip_channels: list[int],
        decoder_channels: tuple[int, ...] = (32, 32, 32, 16),
        max_step: float = 2.0,
        group_norm: bool = False,
        full_resolution_features: bool = False,
    ):
        super().__init__()
        if len(decoder_channels) != len(skip_channels):
            raise ValueError("one decoder level per skip connection")
        self.bottleneck_channels = bottleneck_channels
        self.max_step = float(max_step)
        widths = [bottleneck_channels, *decoder_channels]
        self.levels = nn.ModuleList(
            conv_block(widths[i] + skip, widths[i + 1], group_norm=group_norm)
            for i, skip in enumerate(reversed(skip_channels))  # coarsest skip first
        )
        self.flow = nn.Conv3d(decoder_channels[-1], 3, 3, padding=1)
        nn.init.normal_(self.flow.weight, std=1e-5)
        nn.init.zeros_(self.flow.bias)
        self.decoder_channels = tuple(decoder_channels)
        self.use_full_resolution_features(full_resolution_features)

    def use_full_resolution_features(self, full: bool) -> None:
        """Return the last decoder level's features (``full``) or those at 1/2 resolution; a weight-map
        head reading them needs ``feature_channels`` input channels."""
        self.feature_level = -1 if full or len(self.decoder_channels) == 1 else -2
        self.feature_channels = self.decoder_channels[self.feature_level]

    def decode(
        self, x: torch.Tensor, skips: list[torch.Tensor], max_step: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = []
        for level, skip in zip(self.levels, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=True)
            x = level(torch.cat([x, skip], dim=1))
            outputs.append(x)
        features = outputs[self.feature_level]
        bound = self.max_step if max_step is None else float(max_step)
        return bound * torch.tanh(self.flow(x)), features

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], max_step: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(x, skips, max_step)


class ActorDecoder(SkipDecoder):
    """Plan + skips -> step field (B, 3, D, H, W) in voxels, ``|a| <= max_step`` per component.

    The plan is projected to a ``plan_grid``^3 feature map of ``bottleneck_channels`` features, resized to
    the bottleneck's size, then decoded with the skips (``SkipDecoder``). ``forward`` also returns the
    decoder features at 1/2 resolution (for the weight-map head).
    """

    def __init__(
        self,
        plan_dim: int,
        bottleneck_channels: int,
        skip_channels: list[int],
        decoder_channels: tuple[int, ...] = (32, 32, 32, 16),
        plan_grid: int = 2,
        max_step: float = 2.0,
        group_norm: bool = False,
        full_resolution_features: bool = False,
    ):
        super().__init__(
            bottleneck_channels,
            skip_channels,
            decoder_channels,
            max_step,
            group_norm,
            full_resolution_features,
        )
        self.plan_grid = plan_grid
        self.project = Float32Linear(plan_dim, bottleneck_channels * plan_grid**3)

    def forward(
        self, plan: torch.Tensor, skips: list[torch.Tensor], max_step: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bottleneck_shape = tuple(math.ceil(n / 2) for n in skips[-1].shape[2:])
        x = self.project(plan).view(-1, self.bottleneck_channels, *(self.plan_grid,) * 3)
        x = F.leaky_relu(F.interpolate(x, size=bottleneck_shape, mode="trilinear", align_corners=True), 0.2)
        return self.decode(x, skips, max_step)


class WeightMapHead(nn.Module):
    """Decoder features -> lambda (B, 1, *shape) in [1e-6, 1]: conv-LeakyReLU-conv, sigmoid, upsampling.

    The last bias starts at +2 (lambda ~ 0.88: mostly stiff). Trilinear upsampling keeps lambda smooth.
    """

    def __init__(self, in_channels: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(conv_block(in_channels, hidden), nn.Conv3d(hidden, 1, 3, padding=1))
        nn.init.constant_(self.net[-1].bias, 2.0)

    def forward(self, features: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        logits = F.interpolate(self.net(features), size=tuple(shape), mode="trilinear", align_corners=True)
        return torch.sigmoid(logits).clamp(1e-6, 1.0)


def state_embedding(bottleneck: torch.Tensor) -> torch.Tensor:
    """Global average and max pooling of the bottleneck: (B, 2 C). What the critics see of the state."""
    return torch.cat([bottleneck.mean(dim=(2, 3, 4)), bottleneck.amax(dim=(2, 3, 4))], dim=1)


class TwinCritic(nn.Module):
    """Two independent MLPs Q_k(embedding, plan) -> (B,), k = 1, 2 (clipped double-Q)."""

    def __init__(self, embedding_dim: int, plan_dim: int, hidden: int = 128):
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(
                Float32Linear(embedding_dim + plan_dim, hidden),
                nn.ReLU(),
                Float32Linear(hidden, hidden),
                nn.ReLU(),
                Float32Linear(hidden, 1),
            )

        self.q1, self.q2 = mlp(), mlp()

    def forward(self, embedding: torch.Tensor, plan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([embedding, plan], dim=1)
        return self.q1(x).squeeze(1), self.q2(x).squeeze(1)


@dataclass
class SPACOutput:
    """One forward pass: plan (B, P), its Gaussian (mean, log_std), log-density (B,), step field
    (B, 3, D, H, W) in network-grid voxels, lambda (B, 1, D, H, W) and the bottleneck features."""

    plan: torch.Tensor
    mean: torch.Tensor
    log_std: torch.Tensor
    log_prob: torch.Tensor
    step: torch.Tensor
    weight: torch.Tensor
    bottleneck: torch.Tensor


class SPACNetwork(nn.Module):
    """Backbone + planner + actor + weight-map head: what a shipped model contains.

    ``backbone`` defaults to ``UNetBackbone``; pass another module with the same interface to reuse the
    heads on it.
    """

    def __init__(self, architecture: SPACArchitecture | None = None, backbone: nn.Module | None = None):
        super().__init__()
        arch = architecture or SPACArchitecture()
        self.architecture = arch
        self.backbone = backbone or UNetBackbone(arch.in_channels, arch.channels, arch.group_norm)
        c_b, skips = self.backbone.bottleneck_channels, self.backbone.skip_channels
        self.planner = PlannerHead(c_b, arch.plan_dim, arch.plan_grid)
        self.actor = ActorDecoder(
            arch.plan_dim,
            c_b,
            skips,
            arch.decoder_channels,
            arch.plan_grid,
            arch.max_step,
            arch.group_norm,
            arch.weight_head_full_resolution,
        )
        self.weight_head = WeightMapHead(self.actor.feature_channels, arch.weight_head_channels)

    def plan_distribution(self, fixed: torch.Tensor, warped: torch.Tensor):
        """(mean, log_std, bottleneck, skips) of the planner on a (fixed, warped) pair."""
        bottleneck, skips = self.backbone(network_input(fixed, warped, self.architecture))
        mean, log_std = self.planner(bottleneck)
        return mean, log_std, bottleneck, skips

    def forward(
        self,
        fixed: torch.Tensor,
        warped: torch.Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        max_step: float | None = None,
        temperature: float = 1.0,
    ) -> SPACOutput:
        self.architecture.check_grid(tuple(fixed.shape[2:]))
        mean, log_std, bottleneck, skips = self.plan_distribution(fixed, warped)
        plan, log_prob = sample_plan(mean, log_std, deterministic, generator, temperature)
        step, features = self.actor(plan, skips, max_step)
        weight = self.weight_head(features, tuple(fixed.shape[2:]))
        return SPACOutput(plan, mean, log_std, log_prob, step, weight, bottleneck)


class SPACAgent(nn.Module):
    """Training-time container: ``network``, ``critic``, ``target_critic`` (frozen copy) and
    ``log_alpha`` (entropy temperature, learned)."""

    def __init__(self, architecture: SPACArchitecture | None = None, init_alpha: float = 0.1):
        super().__init__()
        self.network = SPACNetwork(architecture)
        arch = self.network.architecture
        embedding_dim = 2 * self.network.backbone.bottleneck_channels
        self.critic = TwinCritic(embedding_dim, arch.plan_dim, arch.critic_hidden)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_alpha)))

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    @torch.no_grad()
    def soft_update(self, tau: float) -> None:
        """target <- (1 - tau) target + tau critic."""
        for target, source in zip(self.target_critic.parameters(), self.critic.parameters()):
            target.lerp_(source, tau)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
