"""MorphSeek policy network: a Gaussian head on the encoder's latent feature map (docs/ARCHITECTURE.md §2).

The backbone, decoder and weight-map head are those of the SPAC family (``networks``); only the head
between encoder and decoder differs. Tensors are (B, C, D, H, W) on the network grid (dimensions
divisible by 16); displacements in voxels of that grid, channels (i, j, k).

* ``LatentGaussianHead``: latent feature map h (B, C, d, h, w) -> (mu, log sigma), one Gaussian per
  latent voxel and channel (two 1x1x1 convolutions: 2 (C^2 + C) parameters, under 3 % of the network).
  mu starts as the identity of h, so at temperature 0 the untrained policy is a plain U-Net.
* ``sample_latent``: z = mu + tau * sigma * eps (reparameterized) and its log-likelihood.
* ``MorphSeekNetwork``: backbone -> head -> z -> ``SkipDecoder`` (with the U-Net skips) -> step field,
  and the weight-map head on the decoder features -> lambda.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .networks import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    BackboneArchitecture,
    SkipDecoder,
    UNetBackbone,
    WeightMapHead,
    network_input,
)

INITIAL_LOG_STD = math.log(0.1)


@dataclass
class MorphSeekArchitecture(BackboneArchitecture):
    """The shared backbone hyperparameters; the latent head has no free size (it keeps the bottleneck's
    channels)."""

    family: str = field(default="morphseek")


class LatentGaussianHead(nn.Module):
    """Latent features (B, C, d, h, w) -> (mu, log_std), both (B, C, d, h, w).

    log sigma is squashed into [LOG_STD_MIN, LOG_STD_MAX] with a tanh; it starts at ``INITIAL_LOG_STD``
    everywhere (sigma 0.1, about a tenth of the typical feature magnitude).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.mean = nn.Conv3d(channels, channels, 1)
        self.log_std = nn.Conv3d(channels, channels, 1)
        with torch.no_grad():
            self.mean.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1, 1))
            self.mean.bias.zero_()
            self.log_std.weight.zero_()
            unit = (INITIAL_LOG_STD - LOG_STD_MIN) / (0.5 * (LOG_STD_MAX - LOG_STD_MIN)) - 1.0
            self.log_std.bias.fill_(math.atanh(unit))

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 out of a bfloat16 autocast: the log-density sums thousands of latent elements
        raw = self.log_std(latent).float()
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
        return self.mean(latent).float(), log_std


def latent_log_prob(
    z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Log-density (B,) of latents ``z`` under N(mean, (temperature * sigma)^2), summed over the latent.

    For the policy gradient pass ``z.detach()``: the gradient then flows into mean and log sigma only.
    Zero when ``temperature`` is 0 (a deterministic policy has no density).
    """
    if temperature <= 0:
        return torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
    log_scale = log_std + math.log(temperature)
    eps = (z - mean) / log_scale.exp()
    return (-0.5 * eps.pow(2) - log_scale - 0.5 * math.log(2 * math.pi)).flatten(1).sum(dim=1)


def sample_latent(
    mean: torch.Tensor,
    log_std: torch.Tensor,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """z = mean + temperature * sigma * eps, eps ~ N(0, I) from ``generator`` (reparameterized: the
    gradient reaches mean and log sigma). ``temperature`` 0 returns the mean (deterministic inference)."""
    if temperature <= 0:
        return mean
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + temperature * log_std.exp() * eps


def gaussian_kl(
    mean: torch.Tensor, log_std: torch.Tensor, ref_mean: torch.Tensor, ref_log_std: torch.Tensor
) -> torch.Tensor:
    """Mean over batch and latent elements of KL(N(mean, sigma^2) || N(ref_mean, ref_sigma^2))."""
    var, ref_var = (2 * log_std).exp(), (2 * ref_log_std).exp()
    kl = ref_log_std - log_std + (var + (mean - ref_mean).pow(2)) / (2 * ref_var) - 0.5
    return kl.mean()


@dataclass
class MorphSeekOutput:
    """One forward pass: latent Gaussian (mean, log_std) and sample ``z`` (B, C, d, h, w), the sample's
    log-density (B,) (``z`` detached, see ``latent_log_prob``), step field (B, 3, D, H, W) in network-grid
    voxels and lambda (B, 1, D, H, W)."""

    mean: torch.Tensor
    log_std: torch.Tensor
    z: torch.Tensor
    log_prob: torch.Tensor
    step: torch.Tensor
    weight: torch.Tensor

    @property
    def latent_size(self) -> int:
        """Number of latent elements per batch item (the GRPO log-likelihood is divided by its sqrt)."""
        return self.mean[0].numel()


class MorphSeekNetwork(nn.Module):
    """Backbone + latent Gaussian head + skip decoder + weight-map head.

    ``forward(fixed, warped, temperature=0.0, generator=None, max_step=None)``: temperature 0 is the
    deterministic policy (z = mu); 1 samples with the learned sigma.
    """

    def __init__(self, architecture: MorphSeekArchitecture | None = None, backbone: nn.Module | None = None):
        super().__init__()
        arch = architecture or MorphSeekArchitecture()
        self.architecture = arch
        self.backbone = backbone or UNetBackbone(arch.in_channels, arch.channels, arch.group_norm)
        c_b, skips = self.backbone.bottleneck_channels, self.backbone.skip_channels
        self.latent_head = LatentGaussianHead(c_b)
        self.decoder = SkipDecoder(
            c_b,
            skips,
            arch.decoder_channels,
            arch.max_step,
            arch.group_norm,
            arch.weight_head_full_resolution,
        )
        self.weight_head = WeightMapHead(self.decoder.feature_channels, arch.weight_head_channels)

    def latent_distribution(self, fixed: torch.Tensor, warped: torch.Tensor):
        """(mean, log_std, skips) of the latent Gaussian at the state (fixed, warped)."""
        latent, skips = self.backbone(network_input(fixed, warped, self.architecture))
        mean, log_std = self.latent_head(latent)
        return mean, log_std, skips

    def forward(
        self,
        fixed: torch.Tensor,
        warped: torch.Tensor,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        max_step: float | None = None,
    ) -> MorphSeekOutput:
        self.architecture.check_grid(tuple(fixed.shape[2:]))
        mean, log_std, skips = self.latent_distribution(fixed, warped)
        z = sample_latent(mean, log_std, temperature, generator)
        log_prob = latent_log_prob(z.detach(), mean, log_std, temperature)
        step, features = self.decoder(z, skips, max_step)
        weight = self.weight_head(features, tuple(fixed.shape[2:]))
        return MorphSeekOutput(mean, log_std, z, log_prob, step, weight)

    def load_spac_backbone(self, spac_state: dict[str, torch.Tensor]) -> list[str]:
        """Warm start from a SPAC network's state dict (backbone, decoder = the actor's levels and flow,
        weight-map head; the latent head keeps its identity initialization) or from a MorphSeek one (all).
        Returns the names copied."""
        own = self.state_dict()
        renamed = {
            k.replace("actor.", "decoder.", 1) if k.startswith("actor.") else k: v
            for k, v in spac_state.items()
        }
        copied = {k: v for k, v in renamed.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        self.load_state_dict({**own, **copied})
        return sorted(copied)


def head_parameter_fraction(network: MorphSeekNetwork) -> float:
    """Parameters of the latent Gaussian head / parameters of the rest of the network."""
    head = sum(p.numel() for p in network.latent_head.parameters())
    total = sum(p.numel() for p in network.parameters())
    return head / (total - head)
