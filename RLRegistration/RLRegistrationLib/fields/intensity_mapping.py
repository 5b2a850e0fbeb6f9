"""Intensity mapping between two contrasts: the conditional mean of one image given the other.

For a pair of different contrasts (T1 fixed, T2 moving), the moving image is mapped through a lookup table
``lut[b]`` = the mean fixed intensity over the voxels whose (currently aligned) moving intensity falls in
bin ``b``. The mapped moving image has the fixed image's contrast, so a mono-modal similarity (local NCC)
applies; re-estimating the table as the alignment improves sharpens it (Guimond et al., 2001; the table is
what the correlation ratio of Roche et al., 1998 measures).

Intensities are in [0, 1] (the working-grid tensors); the table has ``bins`` evenly spaced bin centres
from 0 to 1 and each voxel votes for its two nearest centres with linear weights, so the table and the
mapping are piecewise linear in the intensity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bin_coordinates(image: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bin index (long) and the weight of the upper bin for each voxel of ``image`` in [0, 1]."""
    position = image.clamp(0.0, 1.0).flatten() * (bins - 1)
    lower = position.floor().clamp(max=bins - 2)
    return lower.long(), position - lower


def conditional_mean_table(
    source: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    bins: int = 64,
    smoothing_bins: float = 1.0,
) -> torch.Tensor:
    """The table (``bins``,) of the mean of ``target`` given ``source`` (same-shaped tensors in [0, 1]).

    ``weight`` (same shape, >= 0) says how much each voxel counts (a mask). Sums and counts are smoothed
    across bins with a Gaussian of ``smoothing_bins`` so that sparsely populated bins borrow from their
    neighbours; bins nobody falls in get the nearest populated value (via the smoothing) or, when the whole
    table is empty, the identity.
    """
    lower, upper_weight = _bin_coordinates(source, bins)
    w = torch.ones_like(upper_weight) if weight is None else weight.flatten().to(upper_weight.dtype)
    values = target.flatten().to(upper_weight.dtype)
    counts = torch.zeros(bins, dtype=values.dtype, device=values.device)
    sums = torch.zeros_like(counts)
    for offset, share in ((0, 1.0 - upper_weight), (1, upper_weight)):
        counts.index_add_(0, lower + offset, w * share)
        sums.index_add_(0, lower + offset, w * share * values)
    if smoothing_bins > 0:
        radius = max(1, int(round(3 * smoothing_bins)))
        x = torch.arange(-radius, radius + 1, dtype=values.dtype, device=values.device)
        kernel = torch.exp(-0.5 * (x / smoothing_bins) ** 2).view(1, 1, -1)
        counts, sums = (
            F.conv1d(F.pad(t.view(1, 1, -1), (radius, radius), mode="replicate"), kernel).view(-1)
            for t in (counts, sums)
        )
    identity = torch.linspace(0.0, 1.0, bins, dtype=values.dtype, device=values.device)
    populated = counts > 1e-6 * counts.sum().clamp_min(1e-12)
    if not bool(populated.any()):
        return identity
    table = torch.where(populated, sums / counts.clamp_min(1e-12), identity)
    # bins without any vote (beyond the smoothing's reach) take the value of the nearest populated bin
    index = torch.arange(bins, device=values.device)
    filled = index[populated]
    nearest = filled[(index.view(-1, 1) - filled.view(1, -1)).abs().argmin(dim=1)]
    return table[nearest]


def apply_table(image: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``image`` (in [0, 1]) mapped through ``table`` (bin centres 0..1), linearly between centres."""
    lower, upper_weight = _bin_coordinates(image, table.numel())
    table = table.to(image.dtype)
    mapped = table[lower] * (1.0 - upper_weight) + table[lower + 1] * upper_weight
    return mapped.view_as(image)


def contrast_correlation(
    fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor | None = None, threshold: float = 0.05
) -> float:
    """Pearson correlation of two aligned images (same shape, in [0, 1]) over the voxels inside both
    (above ``threshold`` in each; times ``weight`` when given): near 1 for two scans of one contrast,
    negative for T1 against T2 (the background, dark in both, would make any pair look alike)."""
    inside = ((fixed > threshold) & (moving > threshold)).to(fixed.dtype)
    w = inside if weight is None else inside * weight
    total = w.sum()
    if float(total) < 2:
        return 0.0
    f_mean, m_mean = (fixed * w).sum() / total, (moving * w).sum() / total
    f, m = fixed - f_mean, moving - m_mean
    covariance = (w * f * m).sum()
    scale = ((w * f * f).sum() * (w * m * m).sum()).sqrt()
    return float(covariance / scale) if float(scale) > 0 else 0.0


def mapping_summary(diagnostics: dict) -> str | None:
    """What a step's diagnostics say of the mapping, for people ("intensity mapping on (...)"); None when
    the step did not map the moving contrast."""
    if not diagnostics.get("intensity_mapping"):
        return None
    correlation = diagnostics.get("contrast_correlation")
    if correlation is None:
        return "intensity mapping on (asked for)"
    return f"intensity mapping on (the pre-aligned images correlate {correlation:.2f}: different contrasts)"
