"""Regularizers of displacement fields (voxel units, (B, 3, D, H, W)) and hyperpriors of weight maps.

Spatially varying regularization (J. Chen et al., MedIA 2025): a voxelwise weight map ``lam`` in (0, 1]
scales the diffusion penalty; a hyperprior keeps it from collapsing to 0.
"""

from __future__ import annotations

import torch


def spatial_gradients(field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward differences along k, j, i, each cropped to the common (D-1, H-1, W-1) interior."""
    dk = field[:, :, 1:, :-1, :-1] - field[:, :, :-1, :-1, :-1]
    dj = field[:, :, :-1, 1:, :-1] - field[:, :, :-1, :-1, :-1]
    di = field[:, :, :-1, :-1, 1:] - field[:, :, :-1, :-1, :-1]
    return dk, dj, di


def diffusion(field: torch.Tensor) -> torch.Tensor:
    """(1/3) sum_d mean(|d u / d x_d|^2), the mean running over voxels and vector components."""
    return sum(g.pow(2).mean() for g in spatial_gradients(field)) / 3.0


def weighted_diffusion(field: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(1/3) sum_d mean(lam * |d u / d x_d|^2) with ``weight`` (B, 1, D, H, W).

    Its gradient is written out (``_WeightedDiffusion``): autograd through the six crops allocated and
    filled six full-size tensors, a large part of a test-time optimization iteration at 1 mm."""
    return _WeightedDiffusion.apply(field, weight)


class _WeightedDiffusion(torch.autograd.Function):
    """``weighted_diffusion`` with an explicit backward pass (the same values as autograd's)."""

    @staticmethod
    def forward(ctx, field: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        lam = weight[:, :, :-1, :-1, :-1]
        grads = spatial_gradients(field)
        ctx.save_for_backward(field, weight)
        return sum((lam * g.pow(2)).sum() for g in grads) / (3.0 * grads[0].numel())

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        field, weight = ctx.saved_tensors
        lam = weight[:, :, :-1, :-1, :-1]
        grads = spatial_gradients(field)
        scale = grad_output / (3.0 * grads[0].numel())
        grad_field = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_field = torch.zeros_like(field)
            interior = grad_field[:, :, :-1, :-1, :-1]
            forward_neighbours = (
                grad_field[:, :, 1:, :-1, :-1],
                grad_field[:, :, :-1, 1:, :-1],
                grad_field[:, :, :-1, :-1, 1:],
            )
            for g, neighbour in zip(grads, forward_neighbours):
                term = (2.0 * scale) * lam * g  # d(lam g^2)/dg, g = u[x + e_d] - u[x]
                neighbour.add_(term)
                interior.sub_(term)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
            squares = sum(g.pow(2).sum(dim=1, keepdim=True) for g in grads)
            grad_weight[:, :, :-1, :-1, :-1] = scale * squares
        return grad_field, grad_weight


def beta_hyperprior(weight: torch.Tensor, w_log_beta: float = 0.18) -> torch.Tensor:
    """Negative log of a Beta(alpha, 1) prior, alpha = 1 + w_log_beta: (1 - alpha) mean(log lam)."""
    alpha = 1.0 + w_log_beta
    return (1.0 - alpha) * torch.log(weight.clamp(min=1e-6)).mean()


def normal_hyperprior(weight: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """sigma * mean((lam - 1)^2)."""
    return sigma * (weight - 1.0).pow(2).mean()
