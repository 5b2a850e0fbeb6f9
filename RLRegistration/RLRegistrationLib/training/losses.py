"""The registration loss of one learned step (both families): similarity + lambda-weighted diffusion +
Beta hyperprior on lambda, plus optional weak-supervision label and optimizer-distillation terms."""

from __future__ import annotations

import torch
from torch import nn

from ..fields.regularizers import beta_hyperprior, weighted_diffusion
from ..fields.similarity import make_similarity, soft_dice_loss
from ..fields.spatial import compose_displacements, warp


class RegistrationLoss(nn.Module):
    """Loss of one step: similarity + w_g * lambda-weighted diffusion + w_b * Beta prior, plus
    ``label_weight`` * (1 - soft Dice) of the warped one-hot labels when labels are given (weak
    supervision, as in SynthMorph; 0 = unsupervised), plus ``target_weight`` * the mean squared distance
    (voxels^2 of the network grid) between the total field after the step and a target field when one is
    given (distillation of the optimizer: the target is the field ``tto`` found for the pair; each step is
    pulled toward where the optimizer ends, within the step bound).

    The previous field is a constant; the gradient flows through the step and lambda into the network.
    Computed in float32 even under a bfloat16 autocast: the local sums of NCC lose all precision in
    bfloat16 (a probe run logged NCC values of -2000 for a quantity in [-1, 0]).
    """

    def __init__(
        self,
        similarity="ncc",
        ncc_window=7,
        diffusion_weight=2.0,
        prior_weight=1.0,
        w_log_beta=0.18,
        label_weight=0.0,
        target_weight=0.0,
    ):
        super().__init__()
        kwargs = {"window": ncc_window} if similarity == "ncc" else {}
        self.similarity = make_similarity(similarity, **kwargs)
        self.diffusion_weight, self.prior_weight, self.w_log_beta = diffusion_weight, prior_weight, w_log_beta
        self.label_weight = float(label_weight)
        self.target_weight = float(target_weight)

    def forward(
        self,
        fixed,
        moving,
        previous,
        step,
        weight,
        labels: tuple[torch.Tensor, torch.Tensor] | None = None,
        target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(device_type=step.device.type, enabled=False):
            fixed, moving, previous, step, weight = (
                t.float() for t in (fixed, moving, previous, step, weight)
            )
            labels = None if labels is None else tuple(t.float() for t in labels)
            target = None if target is None else target.float()
            return self._loss(fixed, moving, previous, step, weight, labels, target)

    def _loss(self, fixed, moving, previous, step, weight, labels, target):
        total = compose_displacements(step, previous.detach())
        similarity = self.similarity(fixed, warp(moving, total))
        diffusion = weighted_diffusion(total, weight)
        prior = beta_hyperprior(weight, self.w_log_beta)
        loss = similarity + self.diffusion_weight * diffusion + self.prior_weight * prior
        parts = {"similarity": similarity, "diffusion": diffusion, "prior": prior, "lambda": weight.mean()}
        if self.label_weight > 0 and labels is not None:
            fixed_one_hot, moving_one_hot = labels
            parts["label_loss"] = soft_dice_loss(fixed_one_hot, warp(moving_one_hot, total))
            loss = loss + self.label_weight * parts["label_loss"]
        if self.target_weight > 0 and target is not None:
            parts["target_loss"] = (total - target).pow(2).sum(dim=1).mean()
            loss = loss + self.target_weight * parts["target_loss"]
        return loss, {k: v.detach() for k, v in parts.items()}
