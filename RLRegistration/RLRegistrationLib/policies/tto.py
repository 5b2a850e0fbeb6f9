"""Test-time optimization (``tto``): each step runs a few Adam iterations on a new step field of this pair.

Also here: the coarse-to-fine helpers it uses (``downsample``, the foreground box it optimizes on, ``crop``
and ``uncrop``), and ``make_tto_policy``; its settings are ``tto_config.TestTimeOptimizationConfig``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import PolicyError
from ..fields.intensity_mapping import apply_table, conditional_mean_table, contrast_correlation
from ..fields.regularizers import beta_hyperprior, normal_hyperprior, weighted_diffusion
from ..fields.similarity import make_similarity
from ..fields.spatial import (
    compose_displacements,
    compose_linearized,
    field_gradient,
    integrate_velocity,
    resize_displacement,
    squarings_needed,
    warp,
)
from ..options import INTENSITY_MAPPINGS
from .base import Policy, PolicyState, PolicyStep, similarity_weight
from .tto_config import TTO_DESCRIPTION, TTO_MODALITY, TestTimeOptimizationConfig
from .tto_slabs import SLAB_VOXELS, SlabbedLoss


def _scheduled(schedule: int | tuple[int, ...], step_index: int) -> int:
    if isinstance(schedule, int):
        return schedule
    return int(schedule[min(step_index, len(schedule) - 1)])


def downsample(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Smooth and resample an image (B, C, D, H, W) to ceil(n / factor) voxels per axis.

    Corner-aligned like ``resize_displacement`` so that fields estimated on the coarse level line up.
    """
    if factor == 1:
        return image
    shape = [max(2, math.ceil(n / factor)) for n in image.shape[2:]]
    # a (2 factor - 1)^3 box mean, as three 1D means: the same values (the box and the part of it inside
    # the volume are products of intervals) at 3 (2 factor - 1) instead of (2 factor - 1)^3 operations
    smooth = image
    for axis in range(3):
        kernel, padding = [1, 1, 1], [0, 0, 0]
        kernel[axis], padding[axis] = 2 * factor - 1, factor - 1
        smooth = F.avg_pool3d(smooth, kernel, stride=1, padding=padding, count_include_pad=False)
    return F.interpolate(smooth, size=shape, mode="trilinear", align_corners=True)


Box = tuple[slice, slice, slice]


def foreground_box(
    images: list[torch.Tensor], margin: int, threshold: float = 0.05, factor: int = 4
) -> Box | None:
    """The index box (k, j, i slices of the grid) around every voxel where one of ``images`` (1, 1, D, H,
    W), in [0, 1], exceeds ``threshold`` after smoothing (``downsample`` by ``factor``, so isolated noise
    does not count), grown by ``margin`` voxels; None when it is the whole grid or nothing is above."""
    shape = images[0].shape[2:]
    coarse = [downsample(image, factor)[0, 0] > threshold for image in images]
    occupied = coarse[0]
    for other in coarse[1:]:
        occupied = occupied | other
    if not bool(occupied.any()):
        return None
    box = []
    for axis, n in enumerate(shape):
        rest = tuple(a for a in range(3) if a != axis)
        where = torch.nonzero(occupied.any(dim=rest)).flatten()
        scale = (n - 1) / max(1, occupied.shape[axis] - 1)  # corner-aligned coarse -> grid index
        low = max(0, math.floor(float(where.min()) * scale) - margin)
        high = min(n, math.ceil(float(where.max()) * scale) + margin + 1)
        box.append(slice(low, high))
    if all(b.start == 0 and b.stop == n for b, n in zip(box, shape)):
        return None
    return tuple(box)


def crop(tensor: torch.Tensor | None, box: Box | None) -> torch.Tensor | None:
    """``tensor`` (B, C, D, H, W) restricted to ``box`` (None: unchanged)."""
    if tensor is None or box is None:
        return tensor
    return tensor[:, :, box[0], box[1], box[2]]


def uncrop(tensor: torch.Tensor, box: Box | None, shape: tuple[int, int, int]) -> torch.Tensor:
    """A tensor on ``box`` extended to the grid ``shape`` by its border values (replicate padding)."""
    if box is None:
        return tensor
    padding = []
    for b, n in zip(reversed(box), reversed(shape)):  # F.pad takes the last axis first
        padding += [b.start, n - b.stop]
    return F.pad(tensor, padding, mode="replicate")


#: ``intensity_mapping="auto"`` maps the moving contrast when the pre-aligned images' Pearson correlation
#: inside both heads is below this (``benchmarks/contrast_detection.py``: same-contrast pairs, whole-head
#: same-subject pairs and T1/T2 pairs)
AUTO_CORRELATION = 0.3


class TestTimeOptimizationPolicy(Policy):
    """Each step runs a few Adam iterations on a new step field against the moving image.

    Loss = similarity(F, M o (id + phi_t)) + w * weighted_diffusion(phi_t, lam) [+ hyperprior(lam)] with
    ``phi_t = a_t + phi_{t-1} o (id + a_t)``: composing with the previous field inside the loss regularizes
    the whole deformation, not only the step. Early steps are optimized on a coarser pyramid level (cheap,
    captures large motion), later ones on the working grid. With ``learn_weight_map`` a smooth lam is
    optimized jointly; a given ``weight_map`` (e.g. from a learned policy) is used as is.
    """

    name = "tto"
    description = TTO_DESCRIPTION
    modality = TTO_MODALITY

    __test__ = False  # not a pytest class
    uses_warped = False  # it warps the moving image through each candidate field itself

    def __init__(
        self, config: TestTimeOptimizationConfig | None = None, weight_map: torch.Tensor | None = None
    ):
        self.config = config or TestTimeOptimizationConfig()
        if self.config.intensity_mapping not in INTENSITY_MAPPINGS:
            raise PolicyError(
                f"intensity_mapping '{self.config.intensity_mapping}': choose from {', '.join(INTENSITY_MAPPINGS)}"
            )
        kwargs = {"window": self.config.ncc_window} if self.config.similarity == "ncc" else {}
        self.similarity = make_similarity(self.config.similarity, **kwargs)
        self.fixed_weight_map = weight_map
        self.weight_logits: torch.Tensor | None = None
        self._pyramid: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.box: Box | None = None  # the optimized part of the working grid (None: all of it)
        self._started = False
        self.spacing_mm: float | None = None  # the working grid's (``reset``)
        self.mapping = False  # the moving contrast is mapped (``intensity_mapping``; decided per pair)
        self.contrast_correlation: float | None = None

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        self.spacing_mm = spacing_mm
        self.weight_logits = None
        self._pyramid = {}
        self.box = None
        self._started = False  # the box and the weight map are made at the first step (it has the masks)
        self.mapping, self.contrast_correlation = False, None

    def _start(self, state: PolicyState) -> None:
        """The optimized box (around the masks when given: only there does the similarity count; else
        around the images' foreground) and the initial weight map, once per pair."""
        self._started = True
        if self.config.crop_to_foreground:
            masks = [m for m in (state.fixed_mask, state.moving_mask) if m is not None]
            self.box = foreground_box(masks or [state.fixed, state.moving], self.config.crop_margin)
        self.mapping = self.config.intensity_mapping == "on"
        if self.config.intensity_mapping == "auto":
            weight = similarity_weight(state.fixed_mask, state.moving_mask, torch.zeros_like(state.field))
            self.contrast_correlation = contrast_correlation(
                crop(state.fixed, self.box), crop(state.moving, self.box), crop(weight, self.box)
            )
            self.mapping = self.contrast_correlation < AUTO_CORRELATION
        if self.config.learn_weight_map and self.fixed_weight_map is None:
            cropped = crop(state.fixed, self.box).shape[2:]
            shape = [max(2, math.ceil(n / self.config.weight_map_spacing)) for n in cropped]
            # start at lam = sigmoid(2) ~ 0.88: mostly stiff, free to soften where the data asks
            self.weight_logits = torch.full((1, 1, *shape), 2.0, device=state.fixed.device)

    def current_weight_map(self, shape: tuple[int, int, int]) -> torch.Tensor | None:
        """lam (1, 1, *shape) in (0, 1] over the optimized box, or None when the policy has no weight map."""
        if self.fixed_weight_map is not None:
            given = crop(self.fixed_weight_map, self.box)
            return F.interpolate(given, size=shape, mode="trilinear", align_corners=True)
        if self.weight_logits is None:
            return None
        lam = torch.sigmoid(
            F.interpolate(self.weight_logits, size=shape, mode="trilinear", align_corners=True)
        )
        return lam.clamp(1e-6, 1.0)

    def _level(self, state: PolicyState, factor: int) -> tuple[torch.Tensor, ...]:
        """(fixed, moving, fixed mask or None, moving mask or None) at pyramid ``factor``."""
        if factor not in self._pyramid:
            self._pyramid[factor] = tuple(
                None if t is None else downsample(crop(t, self.box).contiguous(), factor)
                for t in (state.fixed, state.moving, state.fixed_mask, state.moving_mask)
            )
        return self._pyramid[factor]

    def _similarity(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        mapped: torch.Tensor | None,
        total: torch.Tensor,
        fixed_mask: torch.Tensor | None,
        moving_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The similarity loss of ``moving`` warped by ``total``; with a ``mapped`` moving image, the two
        images' losses weighted by ``mapped_weight`` (both warped by one sampling)."""
        weight = similarity_weight(fixed_mask, moving_mask, total)
        if mapped is None:
            return self.similarity(fixed, warp(moving, total), weight)
        both = warp(torch.cat([moving, mapped], dim=1), total)
        share = self.config.mapped_weight
        return (1 - share) * self.similarity(fixed, both[:, :1], weight) + share * self.similarity(
            fixed, both[:, 1:], weight
        )

    @staticmethod
    def _mapped_to_fixed_contrast(
        fixed: torch.Tensor,
        moving: torch.Tensor,
        fixed_mask: torch.Tensor | None,
        moving_mask: torch.Tensor | None,
        field: torch.Tensor,
    ) -> torch.Tensor:
        """``moving`` through the table of the fixed intensity given the moving one aligned by ``field``
        (where the similarity counts)."""
        with torch.no_grad():
            table = conditional_mean_table(
                warp(moving, field), fixed, similarity_weight(fixed_mask, moving_mask, field)
            )
        return apply_table(moving, table)

    def _step_from_control(self, control: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        """Dense step field (voxels of ``shape``) from control-grid values (control voxels)."""
        step = (
            integrate_velocity(control, squarings_needed(control)) if self.config.diffeomorphic else control
        )
        return resize_displacement(step, shape)

    def propose(self, state: PolicyState) -> PolicyStep:
        if not self._started:
            self._start(state)
        cfg = self.config
        full_shape = tuple(state.fixed.shape[2:])
        box_shape = tuple(crop(state.fixed, self.box).shape[2:])
        factor = _scheduled(cfg.pyramid, state.step_index)
        fixed, moving, fixed_mask, moving_mask = self._level(state, factor)
        shape = tuple(fixed.shape[2:])
        previous = crop(state.field.detach(), self.box)
        previous = resize_displacement(previous, shape) if factor > 1 else previous
        mapped = None
        if self.mapping:
            mapped = self._mapped_to_fixed_contrast(fixed, moving, fixed_mask, moving_mask, previous)
        spacing = _scheduled(cfg.control_spacing, state.step_index)
        # control points at least a voxel of the images apart along each axis (thick slices: no
        # deformation finer than the slices)
        level_mm = (self.spacing_mm or 1.0) * factor
        resolution = state.resolution_mm or (0.0, 0.0, 0.0)
        spacings = [max(spacing, math.ceil(r / level_mm - 1e-6)) for r in resolution]
        control_shape = [max(2, math.ceil(n / s)) for n, s in zip(shape, spacings)]
        control = torch.zeros((1, 3, *control_shape), device=fixed.device, requires_grad=True)
        params = [{"params": [control], "lr": cfg.learning_rate}]
        if self.weight_logits is not None:
            self.weight_logits.requires_grad_(True)
            params.append({"params": [self.weight_logits], "lr": cfg.weight_map_lr})
        optimizer = torch.optim.Adam(params)
        if cfg.linearized_composition:
            previous_gradient = field_gradient(previous)

            def compose(step: torch.Tensor) -> torch.Tensor:
                return compose_linearized(step, previous, previous_gradient)
        else:

            def compose(step: torch.Tensor) -> torch.Tensor:
                return compose_displacements(step, previous)

        loss_value = similarity_value = 0.0
        iterations = (
            cfg.iterations if mapped is None or cfg.mapped_iterations is None else cfg.mapped_iterations
        )
        slabbed = None
        if cfg.similarity == "ncc" and cfg.linearized_composition and math.prod(shape) > SLAB_VOXELS:
            slabbed = SlabbedLoss(
                fixed, moving, mapped, fixed_mask, moving_mask, previous, previous_gradient,
                cfg.ncc_window, cfg.mapped_weight, cfg.regularization,
            )  # fmt: skip
        for _ in range(_scheduled(iterations, state.step_index)):
            optimizer.zero_grad(set_to_none=True)
            step_field = self._step_from_control(control, shape)
            if slabbed is not None:  # the same loss and gradient, a slab of the grid at a time
                lam = self.current_weight_map(shape)
                similarity_value, loss_value = slabbed.backward(step_field, lam, self._hyperprior(lam))
                optimizer.step()
                continue
            total = compose(step_field)
            similarity = self._similarity(fixed, moving, mapped, total, fixed_mask, moving_mask)
            loss = similarity + self._regularization(total, shape)
            loss.backward()
            optimizer.step()
            loss_value, similarity_value = float(loss.detach()), float(similarity.detach())
        if self.weight_logits is not None:
            self.weight_logits.requires_grad_(False)
        with torch.no_grad():
            step = uncrop(self._step_from_control(control.detach(), box_shape), self.box, full_shape)
            lam = self.current_weight_map(box_shape)
            lam = None if lam is None else uncrop(lam, self.box, full_shape)
        return PolicyStep(
            step_field=step,
            weight_map=lam,
            diagnostics={
                "loss": loss_value,
                "similarity_loss": similarity_value,
                "pyramid_factor": factor,
                "intensity_mapping": float(self.mapping),
                **(
                    {}
                    if self.contrast_correlation is None
                    else {"contrast_correlation": self.contrast_correlation}
                ),
            },
        )

    def _regularization(self, total: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        cfg = self.config
        lam = self.current_weight_map(shape)
        prior = self._hyperprior(lam)
        if lam is None:
            lam = torch.ones((1, 1, *shape), device=total.device)
        loss = cfg.regularization * weighted_diffusion(total, lam)
        return loss if prior is None else loss + prior

    def _hyperprior(self, lam: torch.Tensor | None) -> torch.Tensor | None:
        """The weight map's hyperprior term of the loss (None without a learned weight map)."""
        cfg = self.config
        if self.weight_logits is None or lam is None:
            return None
        prior = beta_hyperprior(lam, cfg.w_log_beta) if cfg.hyperprior == "beta" else normal_hyperprior(lam)
        return cfg.hyperprior_weight * prior


def make_tto_policy(name: str = "tto", **overrides) -> TestTimeOptimizationPolicy:
    """A TTO policy with config ``overrides`` (None values ignored); ``PolicyError`` for unknown options."""
    config = TestTimeOptimizationConfig()
    for key, value in overrides.items():
        if value is None:
            continue
        if not hasattr(config, key):
            raise PolicyError(f"policy '{name}' has no option '{key}'")
        setattr(config, key, tuple(value) if isinstance(value, list) else value)
    return TestTimeOptimizationPolicy(config)
