"""The test-time optimization's loss and gradient evaluated slab by slab, so that a 1 mm whole-head level
needs a fraction of the memory of one pass over the whole grid.

The loss of an iteration is ``similarity(F, M o (id + phi)) + w * weighted_diffusion(phi, lam)`` with
``phi`` the step composed (to first order) with the previous field. Every term is a sum over voxels of
quantities that only look a few voxels away: the local NCC's box filter (``window // 2``), the forward
differences of the diffusion (one voxel), and the warp (pointwise). So the grid is cut along its first axis
into slabs; each slab is evaluated on itself plus a halo of neighbouring slices, keeps only its own
voxels' terms, and is back-propagated at once into the gradient of the (whole) step field and weight map;
a last backward pass carries those into the control points and weight logits. The value and the gradient
are those of the whole-grid computation (up to the order of floating-point sums); the memory is that of one
slab's graph plus the step field and its gradient (``Testing/test_tto_fast_paths.py``).

With masks the similarity is a weighted mean whose denominator depends on the whole field: a first pass
without gradients gives the two sums, then each slab adds its exact share of the gradient of the ratio.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..fields.similarity import LocalNCC
from ..fields.spatial import compose_linearized, identity_grid

#: a level with more voxels than this is evaluated in slabs of about this many voxels
SLAB_VOXELS = 2_000_000


def slabs(depth: int, plane: int, halo: int, voxels: int | None = None) -> list[tuple[int, int, int, int]]:
    """(first, stop, halo_first, halo_stop) along the first axis: slabs of about ``voxels`` (default
    ``SLAB_VOXELS``) voxels (planes of ``plane`` voxels) with ``halo`` slices on each side, clipped to the
    grid; one slab when it fits."""
    voxels = SLAB_VOXELS if voxels is None else voxels
    thickness = max(2 * halo + 1, voxels // max(plane, 1))
    if thickness >= depth:
        return [(0, depth, 0, depth)]
    count = math.ceil(depth / thickness)
    bounds = [round(i * depth / count) for i in range(count + 1)]
    return [(a, b, max(0, a - halo), min(depth, b + halo)) for a, b in zip(bounds[:-1], bounds[1:])]


def _warp_slab(image: torch.Tensor, displacement: torch.Tensor, first: int) -> torch.Tensor:
    """``image`` (the whole level) sampled at ``x + u(x)`` for the voxels of a slab starting at slice
    ``first`` (``u`` in voxels of the whole level), as ``spatial.warp`` does on the whole grid."""
    d, h, w = image.shape[2:]
    grid = identity_grid((d, h, w), displacement.device, displacement.dtype)
    grid = grid[:, first : first + displacement.shape[2]]
    scale = torch.tensor([w - 1, h - 1, d - 1], dtype=displacement.dtype, device=displacement.device)
    normalized = displacement * (2.0 / scale.clamp(min=1)).view(1, 3, 1, 1, 1)
    grid = grid + normalized.permute(0, 2, 3, 4, 1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


class SlabbedLoss:
    """Loss and gradient of one TTO level in slabs (local NCC similarity; ``mapped``: the moving image in
    the fixed contrast, weighted ``mapped_weight``; ``regularization``: the diffusion weight)."""

    def __init__(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        mapped: torch.Tensor | None,
        fixed_mask: torch.Tensor | None,
        moving_mask: torch.Tensor | None,
        previous: torch.Tensor,
        previous_gradient: torch.Tensor,
        window: int,
        mapped_weight: float,
        regularization: float,
    ):
        self.fixed, self.fixed_mask, self.moving_mask = fixed, fixed_mask, moving_mask
        self.images = moving if mapped is None else torch.cat([moving, mapped], dim=1)
        self.shares = [1.0] if mapped is None else [1.0 - mapped_weight, mapped_weight]
        self.previous, self.previous_gradient = previous, previous_gradient
        self.regularization = regularization
        d, h, w = fixed.shape[2:]
        self.halo = max(window // 2, 1)
        self.parts = slabs(d, h * w, self.halo)
        # one NCC per slab: each keeps the local sums of its own (fixed) slab of the fixed image
        self.ncc = [LocalNCC(window) for _ in self.parts]
        self.fixed_slabs = [fixed[:, :, a:b].contiguous() for _, _, a, b in self.parts]
        self.diffusion_count = 3.0 * 3 * (d - 1) * (h - 1) * (w - 1)

    @property
    def slabbed(self) -> bool:
        return len(self.parts) > 1

    def _terms(
        self, step: torch.Tensor, lam: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(local cc per image (B, C, n, H, W) of the slab's own voxels, their similarity weight or None,
        the slab's diffusion sum) of slab ``index``."""
        first, stop, h0, h1 = self.parts[index]
        total = compose_linearized(
            step[:, :, h0:h1], self.previous[:, :, h0:h1], self.previous_gradient[:, :, :, h0:h1]
        )
        warped = _warp_slab(self.images, total, h0)
        own = slice(first - h0, stop - h0)
        ncc = self.ncc[index]
        cc = torch.stack(
            [ncc.local_cc(self.fixed_slabs[index], warped[:, c : c + 1]) for c in range(warped.shape[1])], 1
        )
        weight = None
        if self.fixed_mask is not None:
            weight = self.fixed_mask[:, :, h0:h1]
        if self.moving_mask is not None:
            moved = _warp_slab(self.moving_mask, total, h0)
            weight = moved if weight is None else weight * moved
        # forward differences from the slab's own slices (the grid's last slice has none), as
        # ``regularizers.weighted_diffusion``: base voxels in the (D-1, H-1, W-1) interior
        last = min(stop, self.fixed.shape[2] - 1) - h0
        k, k_next = slice(first - h0, last), slice(first - h0 + 1, last + 1)
        j, j_next = slice(0, total.shape[3] - 1), slice(1, total.shape[3])
        i, i_next = slice(0, total.shape[4] - 1), slice(1, total.shape[4])
        base = total[:, :, k, j, i]
        lam_base = lam[:, :, h0:h1][:, :, k, j, i]
        diffusion = total.new_zeros(())
        for ahead in (total[:, :, k_next, j, i], total[:, :, k, j_next, i], total[:, :, k, j, i_next]):
            diffusion = diffusion + (lam_base * (ahead - base).pow(2)).sum()
        weight = None if weight is None else weight[:, :, own]
        return cc[:, :, own], weight, diffusion

    def backward(
        self, step: torch.Tensor, lam: torch.Tensor | None, extra: torch.Tensor | None = None
    ) -> tuple[float, float]:
        """Evaluate the loss at ``step`` (and ``lam``; None: uniform) plus the scalar ``extra`` (e.g. the
        weight map's hyperprior), accumulate its gradient into the tensors they were computed from, and
        return the (similarity, whole loss) values."""
        step_leaf = step.detach().requires_grad_(True)
        learned = lam is not None and lam.requires_grad
        lam_leaf = (torch.ones_like(step[:, :1]) if lam is None else lam.detach()).requires_grad_(learned)
        denominator = numerators = None
        if self.fixed_mask is not None or self.moving_mask is not None:
            with torch.no_grad():  # the weighted mean's two sums over the whole grid
                denominator, numerators = 0.0, [0.0] * len(self.shares)
                for index in range(len(self.parts)):
                    cc, weight, _ = self._terms(step_leaf, lam_leaf, index)
                    denominator += float(weight.sum())
                    for c in range(len(self.shares)):
                        numerators[c] += float((cc[:, c] * weight[:, 0]).sum())
                denominator = max(denominator, 1e-6)
        count = float(self.fixed[0, 0].numel())
        similarity_value = regularization_value = 0.0
        for index in range(len(self.parts)):
            cc, weight, diffusion = self._terms(step_leaf, lam_leaf, index)
            similarity = cc.new_zeros(())
            for c, share in enumerate(self.shares):
                if denominator is None:
                    similarity = similarity - share * cc[:, c].sum() / count
                else:
                    # d(-N/D) = -(dN D - N dD) / D^2, with N and D the whole grid's sums
                    own_n, own_d = (cc[:, c] * weight[:, 0]).sum(), weight.sum()
                    similarity = similarity - share * (
                        own_n / denominator - numerators[c] * own_d / denominator**2
                    )
            regularization = self.regularization * diffusion / self.diffusion_count
            (similarity + regularization).backward()
            similarity_value += float(similarity.detach())
            regularization_value += float(regularization.detach())
        if denominator is not None:  # the value of the ratio (the sum above is that of its gradient's terms)
            similarity_value = -sum(s * n / denominator for s, n in zip(self.shares, numerators))
        tensors, grads = [step], [step_leaf.grad]
        if learned:
            tensors.append(lam)
            grads.append(lam_leaf.grad)
        if extra is not None:
            tensors.append(extra)
            grads.append(torch.ones_like(extra))
            regularization_value += float(extra.detach())
        torch.autograd.backward(tensors, grads)
        return similarity_value, similarity_value + regularization_value
