"""The registration environment of step-wise policies (training and evaluation), batched.

State: (fixed, moving o (id + phi_t)) on the working grid, tensors (B, 1, D, H, W) in [0, 1]. Action: a step
field ``a_t`` (B, 3, D, H, W) in working-grid voxels, composed as ``phi_t = a_t + phi_{t-1} o (id + a_t)``
(docs/ARCHITECTURE.md §3, ``spatial.compose_displacements``); the warped image is always resampled from the original
moving image.

Reward of a step: ``dice_scale * (Dice_t - Dice_{t-1}) - fold_weight * 100 * folded_fraction_t``, where Dice
is the mean Dice over the classes of

* ``"kmeans"`` (default, no labels needed): K-means pseudo-segmentations, ``clusters`` intensity classes of
  each image inside its foreground, computed once per pair and matched by sorted cluster mean;
* ``"labels"`` (weak supervision): the true label maps, when given to ``reset``.

The moving segmentation is warped by soft (one-hot, trilinear) warping and turned back into labels by
argmax. ``folded_fraction_t`` is the fraction of voxels with det(I + grad phi_t) <= 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..fields.geometry import Grid
from ..fields.spatial import compose_displacements, jacobian_determinant, warp


@dataclass
class EnvState:
    """Batched state at step ``t``: images (B, 1, D, H, W), total field (B, 3, D, H, W) in voxels."""

    fixed: torch.Tensor
    moving: torch.Tensor
    warped: torch.Tensor
    field: torch.Tensor
    t: int

    def observation(self) -> torch.Tensor:
        """What the policy sees: (B, 2, D, H, W) = (fixed, warped)."""
        return torch.cat([self.fixed, self.warped], dim=1)


# ------------------------------------------------------------------------------------- pseudo-labels


def kmeans_pseudo_labels(
    image: torch.Tensor, clusters: int = 3, foreground_threshold: float = 0.02, iterations: int = 15
) -> torch.Tensor:
    """1D K-means of the intensities inside ``image > foreground_threshold``, per batch item.

    Returns labels (B, 1, D, H, W) int64: 0 outside the foreground, 1..``clusters`` by increasing cluster
    mean (so the classes of two images of the same contrast correspond). Initial centres at the
    quantiles (2k - 1) / (2 clusters) of the foreground intensities.
    """
    out = torch.zeros(image.shape, dtype=torch.long, device=image.device)
    for b in range(image.shape[0]):
        values = image[b, 0]
        mask = values > foreground_threshold
        x = values[mask].float()
        if x.numel() < clusters:
            continue
        q = (2 * torch.arange(clusters, device=x.device, dtype=x.dtype) + 1) / (2 * clusters)
        sample = x if x.numel() <= 200_000 else x[torch.linspace(0, x.numel() - 1, 200_000).long()]
        centres = torch.quantile(sample, q)
        for _ in range(iterations):
            assign = (x[:, None] - centres[None]).abs().argmin(dim=1)
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            counts = torch.zeros_like(centres).index_add_(0, assign, torch.ones_like(x))
            centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        centres = centres.sort().values
        assign = (x[:, None] - centres[None]).abs().argmin(dim=1)
        out[b, 0][mask] = assign + 1
    return out


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, 1, D, H, W) int labels in [0, classes) -> (B, classes, D, H, W) float."""
    return F.one_hot(labels[:, 0].clamp(0, classes - 1), classes).permute(0, 4, 1, 2, 3).float()


def compact_label_table(*label_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, lut): the sorted label values present in any of ``label_maps`` and a lookup table
    mapping each value to its index 0..K-1 (background 0 stays 0 when present)."""
    values = torch.unique(torch.cat([m.flatten() for m in label_maps]))
    lut = torch.zeros(int(values.max()) + 1, dtype=torch.long, device=values.device)
    lut[values] = torch.arange(values.numel(), device=values.device)
    return values, lut


def paired_one_hot(
    fixed_labels: torch.Tensor, moving_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot (B, K, D, H, W) of two label maps (B, 1, D, H, W) over the K values present in either
    (channel 0 = the smallest value, background when present)."""
    values, lut = compact_label_table(fixed_labels, moving_labels)
    return one_hot(lut[fixed_labels], values.numel()), one_hot(lut[moving_labels], values.numel())


def warp_labels(labels_one_hot: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Soft (trilinear) warping of one-hot labels, then argmax: (B, 1, D, H, W) int64."""
    return warp(labels_one_hot, field, padding_mode="border").argmax(dim=1, keepdim=True)


def mean_dice(fixed: torch.Tensor, warped: torch.Tensor, classes: list[int] | torch.Tensor) -> torch.Tensor:
    """Mean Dice (B,) over ``classes`` of two label maps (B, 1, D, H, W); classes absent from both are
    skipped."""
    scores = []
    for c in classes:
        a = (fixed == int(c)).flatten(1).float()
        b = (warped == int(c)).flatten(1).float()
        total = a.sum(1) + b.sum(1)
        scores.append(torch.where(total > 0, 2 * (a * b).sum(1) / total.clamp(min=1), torch.nan))
    stacked = torch.stack(scores, dim=1)
    return torch.nanmean(stacked, dim=1).nan_to_num(0.0)


def voxel_jacobian_determinant(field: torch.Tensor) -> torch.Tensor:
    """det(I + grad u) (1, 1, D, H, W) of a voxel-unit field (1, 3, D, H, W) of an isotropic grid (where
    voxel units give the same det J as millimetres)."""
    d, h, w = field.shape[2:]
    grid = Grid((w, h, d), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return jacobian_determinant(field, grid)


def folded_fraction(field: torch.Tensor) -> torch.Tensor:
    """Fraction (B,) of voxels with det(I + grad u) <= 0 of voxel-unit fields (B, 3, D, H, W) of the
    (isotropic) working grid."""
    return torch.stack([(voxel_jacobian_determinant(f[None]) <= 0).float().mean() for f in field])


# -------------------------------------------------------------------------------------- environment


class RegistrationEnv:
    """Batched step-wise registration episodes of ``episode_length`` steps.

    ``reset(fixed, moving[, fixed_labels, moving_labels])`` starts an episode (identity field);
    ``step(a)`` composes the step, returns ``(state, reward (B,), done, info)``. Reward in Dice points
    (x ``dice_scale``) minus the folding penalty (see the module docstring).
    """

    def __init__(
        self,
        episode_length: int = 5,
        reward: str = "kmeans",
        clusters: int = 3,
        dice_scale: float = 100.0,
        fold_weight: float = 1.0,
        foreground_threshold: float = 0.02,
        label_classes: list[int] | None = None,
    ):
        if reward not in ("kmeans", "labels"):
            raise ValueError(f"reward must be 'kmeans' or 'labels', got '{reward}'")
        self.episode_length = int(episode_length)
        self.reward_kind = reward
        self.clusters = clusters
        self.dice_scale = dice_scale
        self.fold_weight = fold_weight
        self.foreground_threshold = foreground_threshold
        self.label_classes = label_classes
        self.state: EnvState | None = None

    def reset(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        fixed_labels: torch.Tensor | None = None,
        moving_labels: torch.Tensor | None = None,
    ) -> EnvState:
        """New episode on a batch of pairs; pseudo-labels (or the given labels) are prepared once."""
        self.state = EnvState(fixed, moving, moving.clone(), torch.zeros_like(fixed).repeat(1, 3, 1, 1, 1), 0)
        if self.reward_kind == "labels":
            if fixed_labels is None or moving_labels is None:
                raise ValueError("reward 'labels' needs fixed_labels and moving_labels")
            self._prepare_segmentations(fixed_labels.long(), moving_labels.long(), self.label_classes)
        else:
            fixed_seg = kmeans_pseudo_labels(fixed, self.clusters, self.foreground_threshold)
            moving_seg = kmeans_pseudo_labels(moving, self.clusters, self.foreground_threshold)
            self._prepare_segmentations(fixed_seg, moving_seg, list(range(1, self.clusters + 1)))
        self.dice = self.segmentation_dice(self.state.field)
        self.initial_dice = self.dice.clone()
        self.folded = torch.zeros(fixed.shape[0], device=fixed.device)
        return self.state

    def _prepare_segmentations(
        self, fixed_seg: torch.Tensor, moving_seg: torch.Tensor, classes: list[int] | None
    ) -> None:
        """Relabel both segmentations to 0..K-1 (one-hot warping needs compact classes) and pick the
        scored classes: ``classes`` (original values; default all non-zero) present in either map."""
        values, lut = compact_label_table(fixed_seg, moving_seg)
        present = [int(v) for v in values if int(v) != 0]
        wanted = present if classes is None else [c for c in classes if c in present]
        self._scored = [int(lut[c]) for c in wanted]
        self._fixed_seg = lut[fixed_seg]
        self._moving_one_hot = one_hot(lut[moving_seg], values.numel())

    def segmentation_dice(self, field: torch.Tensor) -> torch.Tensor:
        """Mean Dice (B,) of the fixed and the warped moving segmentations for a total ``field``."""
        return mean_dice(self._fixed_seg, warp_labels(self._moving_one_hot, field), self._scored)

    @torch.no_grad()
    def step(self, step_field: torch.Tensor) -> tuple[EnvState, torch.Tensor, bool, dict]:
        """Apply ``step_field`` (B, 3, D, H, W), voxels. Returns (state, reward (B,), done, info)."""
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        s = self.state
        field = compose_displacements(step_field.detach(), s.field)
        self.state = EnvState(s.fixed, s.moving, warp(s.moving, field), field, s.t + 1)
        dice = self.segmentation_dice(field)
        folded = folded_fraction(field) if self.fold_weight else torch.zeros_like(dice)
        reward = self.dice_scale * (dice - self.dice) - self.fold_weight * 100.0 * folded
        self.dice, self.folded = dice, folded
        done = self.state.t >= self.episode_length
        info = {"dice": dice, "folded_fraction": folded, "dice_gain": dice - self.initial_dice}
        return self.state, reward, done, info
