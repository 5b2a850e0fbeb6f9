"""Spatial operations on displacement fields (torch, CPU or CUDA).

Fields are voxel-unit displacements (B, 3, D, H, W) with channels (i, j, k) (see ``geometry``), defined on
the grid of the image they warp *into* (the fixed/working grid). ``warp(image, u)(x) = image(x + u(x))``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import (
    Grid,
    normalized_map_between_grids,
    physical_points,
    physical_to_normalized,
    physical_to_voxel,
    voxel_to_normalized,
    voxel_to_physical,
)

_identity_cache: dict[tuple, torch.Tensor] = {}


def identity_grid(shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalized identity sampling grid (1, D, H, W, 3) for ``grid_sample`` (align_corners=True)."""
    key = (tuple(shape), str(device), dtype)
    if key not in _identity_cache:
        theta = torch.eye(3, 4, dtype=dtype, device=device)[None]
        _identity_cache[key] = F.affine_grid(theta, (1, 1, *shape), align_corners=True)
        if len(_identity_cache) > 16:
            _identity_cache.pop(next(iter(_identity_cache)))
    return _identity_cache[key]


def warp(
    image: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border"
):
    """Sample ``image`` (B, C, D, H, W) at ``x + u(x)``; ``u`` in voxels of the same grid."""
    grid = identity_grid(displacement.shape[2:], displacement.device, displacement.dtype)
    grid = grid + voxel_to_normalized(displacement).permute(0, 2, 3, 4, 1)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def compose_displacements(step: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Total field after a step: ``phi_t = a_t + phi_{t-1} o (id + a_t)`` (docs/ARCHITECTURE.md §3).

    ``M o (id + phi_{t-1}) o (id + a_t) = M o (id + phi_t)``: the step is applied first in fixed space.
    """
    return step + warp(previous, step, padding_mode="border")


def field_gradient(field: torch.Tensor) -> torch.Tensor:
    """``d u_c / d x_d`` (B, 3, 3, D, H, W) of a field (B, 3, D, H, W), both indices in (i, j, k) order,
    voxel units, central differences inside and one-sided at the borders."""
    d_k, d_j, d_i = torch.gradient(field, dim=(2, 3, 4))
    return torch.stack([d_i, d_j, d_k], dim=2)


def compose_linearized(step: torch.Tensor, previous: torch.Tensor, previous_gradient: torch.Tensor):
    """First-order ``compose_displacements``: ``phi = a + previous + (d previous / dx) a``.

    ``previous_gradient`` is ``field_gradient(previous)``. The error is second order in the step (half
    its square times the field's second derivative): small for the sub-voxel to few-voxel steps of an
    optimizer on a smooth field, and it needs no resampling of ``previous`` (the costliest part of the
    exact composition in a gradient step). Optimizers use it inside their loss; the step they settle on
    is composed exactly."""
    total = step + previous
    for d in range(3):
        total = total + previous_gradient[:, :, d] * step[:, d : d + 1]
    return total


def step_to_reach(previous: torch.Tensor, target: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """The step ``a`` whose composition with ``previous`` gives ``target``:
    ``a + previous o (id + a) = target``.

    Fixed-point iteration ``a <- target - previous o (id + a)`` from ``a = target - previous`` (exact after
    the first update when ``previous`` is constant; converges when ``previous`` has a small gradient,
    which holds for the smooth fields of a registration). Fields (B, 3, D, H, W) in voxels of one grid.
    Used when a policy decides the *total* field (e.g. the mean of several sampled trajectories) and the
    session composes steps.
    """
    step = target - previous
    for _ in range(int(iterations)):
        step = target - warp(previous, step, padding_mode="border")
    return step


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: displacement of ``exp(v)`` for a stationary velocity field (voxel units)."""
    steps = int(steps)
    displacement = velocity / (2**steps)
    for _ in range(steps):
        displacement = displacement + warp(displacement, displacement)
    return displacement


def squarings_needed(velocity: torch.Tensor, max_scaled_voxels: float = 0.25, most: int = 7) -> int:
    """The fewest scaling-and-squaring steps N (0..``most``) with max |v| / 2^N <= ``max_scaled_voxels``.

    A scaled field of at most a quarter voxel has finite differences of at most half a voxel, so
    ``id + v / 2^N`` does not fold and neither do its N self-compositions; a small step (the usual case
    late in a test-time optimization) then needs two or three squarings instead of seven."""
    largest = float(velocity.detach().abs().amax()) if velocity.numel() else 0.0
    if largest <= max_scaled_voxels:
        return 0
    return min(int(most), math.ceil(math.log2(largest / max_scaled_voxels)))


def resize_displacement(displacement: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize of a voxel-unit field to another shape of the same extent, rescaling the vectors."""
    old = torch.tensor(displacement.shape[2:], dtype=displacement.dtype, device=displacement.device)
    new = torch.tensor(shape, dtype=displacement.dtype, device=displacement.device)
    factor = ((new - 1) / (old - 1).clamp(min=1)).flip(0)  # (i, j, k) order
    resized = F.interpolate(displacement, size=tuple(shape), mode="trilinear", align_corners=True)
    return resized * factor.view(1, 3, 1, 1, 1)


def resize_image(image: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Corner-aligned trilinear resize of images or scalar maps (B, C, D, H, W) (like
    ``resize_displacement``), without a pre-filter: the working images are already anti-aliased, and the
    networks were trained on unblurred images; an extra 3^3 box blur made the learned steps overshoot after
    the second step (``benchmarks/RESULTS.md``)."""
    if tuple(image.shape[2:]) == tuple(shape):
        return image
    return F.interpolate(image, size=tuple(shape), mode="trilinear", align_corners=True)


def resample_field_to_grid(displacement_vox: torch.Tensor, source: Grid, target: Grid) -> torch.Tensor:
    """Field in voxels of ``source`` -> field in LPS mm sampled (trilinear) at the voxels of ``target``.

    Works for any pair of grids (different spacing, size, direction); outside the source grid the border
    value is used.
    """
    field_mm = voxel_to_physical(displacement_vox, source)
    theta = torch.as_tensor(normalized_map_between_grids(target, source), dtype=field_mm.dtype)
    coords = F.affine_grid(theta[None].to(field_mm.device), (1, 1, *target.shape), align_corners=True)
    return F.grid_sample(field_mm, coords, mode="bilinear", padding_mode="border", align_corners=True)


def sample_image_at_points(
    image: torch.Tensor, image_grid: Grid, points_mm: torch.Tensor, mode: str = "bilinear", padding_value=0.0
) -> torch.Tensor:
    """Sample ``image`` (1, C, D, H, W) on ``image_grid`` at LPS points (d, h, w, 3); zero/constant outside."""
    coords = physical_to_normalized(points_mm, image_grid)[None]
    if padding_value == 0.0:
        return F.grid_sample(image, coords, mode=mode, padding_mode="zeros", align_corners=True)
    shifted = F.grid_sample(
        image - padding_value, coords, mode=mode, padding_mode="zeros", align_corners=True
    )
    return shifted + padding_value


def displacement_from_affine(matrix: np.ndarray, translation: np.ndarray, grid: Grid) -> torch.Tensor:
    """Voxel-unit field on ``grid`` of the affine map ``x -> A x + t`` (LPS mm), i.e. u(x) = A x + t - x."""
    points = physical_points(grid).double()
    a = torch.as_tensor(matrix, dtype=torch.float64)
    t = torch.as_tensor(translation, dtype=torch.float64)
    u_mm = (points @ a.T + t - points).permute(3, 0, 1, 2)[None].float()
    return physical_to_voxel(u_mm, grid)


def jacobian_determinant(displacement_vox: torch.Tensor, grid: Grid, slab: int = 16) -> torch.Tensor:
    """det(I + du/dx) of ``T(x) = x + u(x)`` in physical space, (1, 1, D, H, W).

    Central differences inside, one-sided at the borders. Because the derivative is taken along index axes
    and ``u`` is converted with the grid's direction and spacing, the result is correct on oblique and
    anisotropic grids. Computed ``slab`` array slices at a time (each with its neighbour slices, so the
    differences are the whole field's), so that the float64 gradients of a large field are never all held.
    """
    inv = np.linalg.inv(grid.index_to_physical_matrix)  # d index / d x
    depth = displacement_vox.shape[2]
    slab = max(1, int(slab))
    det = torch.empty(displacement_vox.shape[2:], dtype=torch.float64, device=displacement_vox.device)
    for start in range(0, depth, slab):
        stop = min(depth, start + slab)
        low, high = max(0, start - 1), min(depth, stop + 1)
        u_mm = voxel_to_physical(displacement_vox[:1, :, low:high].double(), grid)[0]  # (3, d, H, W) LPS mm
        grads = torch.gradient(u_mm, dim=(1, 2, 3))  # d u / d k, d u / d j, d u / d i
        by_index = [g[:, start - low : start - low + stop - start] for g in (grads[2], grads[1], grads[0])]
        # J[a][c] = delta_ac + sum_b du_a / d index_b * d index_b / d x_c
        j = [
            [
                sum(by_index[b][a] * float(inv[b, c]) for b in range(3)) + (1.0 if a == c else 0.0)
                for c in range(3)
            ]
            for a in range(3)
        ]
        det[start:stop] = (
            j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
        )
    return det[None, None].to(displacement_vox.dtype)
