"""Image similarity losses (lower is better) on tensors (B, C, D, H, W) of the same grid.

* ``LocalNCC``: local normalized cross-correlation with a separable box filter (mono-modal).
* ``MINDSSC``: modality-independent neighbourhood descriptor, self-similarity context (multi-modal).
* ``MSE``.

Each takes an optional ``weight`` (B, 1, D, H, W) in [0, 1]: the loss is then the weighted mean over
voxels (a mask restricting the similarity to a region); without it, the plain mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-voxel ``values`` (B, D, H, W) weighted by ``weight`` (B, 1, D, H, W); plain mean
    without one."""
    if weight is None:
        return values.mean()
    w = weight[:, 0]
    return (values * w).sum() / w.sum().clamp_min(1e-6)


def box_filter(x: torch.Tensor, window: int, stride: int = 1) -> torch.Tensor:
    """Sum over a ``window``^3 neighbourhood (zero padded), as three separable 1D convolutions; with
    ``stride`` s only at the voxels whose indices are multiples of s (``x[..., ::s, ::s, ::s]``'s shape)."""
    channels = x.shape[1]
    pad = window // 2
    out = x
    for axis in range(3):
        shape, padding, steps = [1, 1, 1], [0, 0, 0], [1, 1, 1]
        shape[axis], padding[axis], steps[axis] = window, pad, stride
        kernel = torch.ones((channels, 1, *shape), dtype=x.dtype, device=x.device)
        out = F.conv3d(out, kernel, padding=tuple(padding), stride=tuple(steps), groups=channels)
    return out


class LocalNCC(torch.nn.Module):
    """Negative mean squared local normalized cross-correlation over ``window``^3 neighbourhoods.

    The fixed image's local sums do not change while a registration optimizes against it: for a fixed
    tensor that needs no gradient they are computed once and kept while the same tensor object is passed
    (do not modify it in place meanwhile); only the three sums that involve the warped image are filtered
    on each call."""

    def __init__(self, window: int = 9, eps: float = 1e-5, stride: int = 1):
        super().__init__()
        self.window = window
        self.eps = eps
        # > 1: the mean over the voxels whose indices are multiples of ``stride`` (a cheaper estimate of
        # the same mean, for reports on large grids)
        self.stride = int(stride)
        self._fixed_stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def fixed_statistics(self, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local sum and (n times the) local variance of ``fixed``, (B, D, H, W) each."""
        if fixed.requires_grad:
            return self._statistics(fixed)
        if self._fixed_stats is None or self._fixed_stats[0] is not fixed:
            self._fixed_stats = (fixed, *self._statistics(fixed))
        return self._fixed_stats[1], self._fixed_stats[2]

    def _statistics(self, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = float(self.window**3)
        stacked = torch.cat([fixed, fixed * fixed], dim=1)
        f_sum, ff_sum = box_filter(stacked, self.window, self.stride).unbind(dim=1)
        return f_sum, (ff_sum - f_sum * f_sum / n).clamp(min=0)

    def local_cc(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Squared local correlation (B, D, H, W) of single-channel images (at every ``stride``-th voxel)."""
        n = float(self.window**3)
        f_sum, f_var = self.fixed_statistics(fixed)
        stacked = torch.cat([warped, warped * warped, fixed * warped], dim=1)
        w_sum, ww_sum, fw_sum = box_filter(stacked, self.window, self.stride).unbind(dim=1)
        cross = fw_sum - f_sum * w_sum / n
        w_var = (ww_sum - w_sum * w_sum / n).clamp(min=0)
        return cross * cross / (f_var * w_var + self.eps)

    def forward(
        self, fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        cc = self.local_cc(fixed, warped)
        if weight is not None and self.stride > 1:
            weight = weight[:, :, :: self.stride, :: self.stride, :: self.stride]
        return -weighted_mean(cc, weight)


class MSE(torch.nn.Module):
    def forward(
        self, fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        if weight is None:
            return F.mse_loss(warped, fixed)
        return weighted_mean(((warped - fixed) ** 2).mean(dim=1), weight)


def mind_ssc(image: torch.Tensor, radius: int = 2, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptor (B, 12, D, H, W) of a single-channel image (Heinrich et al., 2013).

    Twelve patch distances between pairs of the six-neighbourhood (at ``dilation`` voxels), each averaged
    over a ``(2 radius + 1)``^3 patch, turned into exp(-D/V) with V the local mean distance.
    """
    six = torch.tensor([[0, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 2], [2, 1, 1], [1, 2, 1]], dtype=torch.long)
    # the 12 pairs of six-neighbourhood points at squared distance 2
    pairs = [(a, b) for a in range(6) for b in range(a + 1, 6) if int(((six[a] - six[b]) ** 2).sum()) == 2]
    padded = F.pad(image, (dilation,) * 6, mode="replicate")
    d, h, w = image.shape[2:]

    def shifted(p: torch.Tensor) -> torch.Tensor:
        k0, j0, i0 = (int(v) * dilation for v in p)
        return padded[:, :, k0 : k0 + d, j0 : j0 + h, i0 : i0 + w]

    diffs = torch.cat([(shifted(six[a]) - shifted(six[b])) ** 2 for a, b in pairs], dim=1)
    window = 2 * radius + 1
    ssd = box_filter(F.pad(diffs, (radius,) * 6, mode="replicate"), window)[
        :, :, radius:-radius, radius:-radius, radius:-radius
    ] / float(window**3)
    ssd = ssd - ssd.min(dim=1, keepdim=True).values
    variance = ssd.mean(dim=1, keepdim=True)
    mean_var = variance.mean()
    variance = variance.clamp(min=mean_var.item() * 1e-3 + 1e-8, max=mean_var.item() * 1e3 + 1e-8)
    descriptor = torch.exp(-ssd / variance)
    return descriptor / descriptor.max(dim=1, keepdim=True).values.clamp(min=1e-8)


class MINDSSC(torch.nn.Module):
    """Mean squared difference of MIND-SSC descriptors: robust across modalities (T1 vs T2, MR vs CT)."""

    def __init__(self, radius: int = 2, dilation: int = 2):
        super().__init__()
        self.radius = radius
        self.dilation = dilation
        self._fixed_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(
        self, fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        # the fixed descriptor is constant during an optimization: compute it once per tensor
        if self._fixed_cache is None or self._fixed_cache[0] is not fixed:
            self._fixed_cache = (fixed, mind_ssc(fixed, self.radius, self.dilation).detach())
        descriptor = mind_ssc(warped, self.radius, self.dilation)
        if weight is None:
            return F.mse_loss(descriptor, self._fixed_cache[1])
        return weighted_mean(((descriptor - self._fixed_cache[1]) ** 2).mean(dim=1), weight)


SIMILARITIES = {"ncc": LocalNCC, "mind": MINDSSC, "mse": MSE}


def make_similarity(name: str, **kwargs) -> torch.nn.Module:
    """Similarity by name: ``ncc`` (mono-modal), ``mind`` (multi-modal) or ``mse``."""
    if name not in SIMILARITIES:
        raise ValueError(f"unknown similarity '{name}' (choose from {', '.join(SIMILARITIES)})")
    return SIMILARITIES[name](**kwargs)


def soft_dice_loss(fixed_one_hot: torch.Tensor, warped_one_hot: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (channel 0 = background is left out) of two
    one-hot / probabilistic label maps (B, K, D, H, W); classes absent from both count as Dice 1.

    The label-overlap loss of SynthMorph-style training on synthetic images (weak supervision)."""
    a, b = fixed_one_hot[:, 1:].flatten(2), warped_one_hot[:, 1:].flatten(2)
    total = a.sum(2) + b.sum(2)
    dice = (2 * (a * b).sum(2) + 1e-5) / (total + 1e-5)
    return 1.0 - dice.mean()


def ncc_descent_direction(fixed: torch.Tensor, warped: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Where a gradient-descent step on local NCC would move each voxel of ``warped``: ``-dL/du`` at u = 0
    for a displacement u of the warped image, (B, 3, D, H, W), channels (i, j, k), divided by its RMS per
    batch item (unitless). ``dL/du = dL/dW * grad W`` (chain rule through the warp). The inputs get no
    gradient; works inside ``torch.no_grad``.

    A state feature of the learned policies: with it, the networks learn step-wise registration from a
    few hundred synthetic pairs instead of not at all within a CPU budget (see ``networks``)."""
    with torch.enable_grad():
        image = warped.detach().requires_grad_(True)
        loss = LocalNCC(window)(fixed.detach(), image) * image[0].numel()
        (intensity_gradient,) = torch.autograd.grad(loss, image)
    d_k, d_j, d_i = torch.gradient(warped.detach()[:, 0], dim=(1, 2, 3))
    direction = -intensity_gradient * torch.stack([d_i, d_j, d_k], dim=1)
    rms = direction.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-8)
    return direction / rms[:, None, None, None, None]
