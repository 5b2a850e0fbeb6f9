"""The settings of test-time optimization (``TestTimeOptimizationConfig``), its one-line description and the
option defaults a panel shows: plain data, no torch, so that choosing and checking a policy by name
(``registry``, ``cards``) does not import torch."""

from __future__ import annotations

from dataclasses import dataclass

TTO_DESCRIPTION = "Test-time optimization (Adam on the displacement field; no trained network)"
TTO_MODALITY = "any (ncc: same contrast; mind: cross-modality)"


@dataclass
class TestTimeOptimizationConfig:
    """Settings of the test-time optimization policy (units: working-grid voxels).

    Schedules (tuples) give one value per step; the last value repeats for later steps.
    """

    __test__ = False  # not a pytest class

    iterations: int | tuple[int, ...] = 5  # Adam iterations per step (or a schedule)
    learning_rate: float = 0.2  # Adam step on the control field (control-grid voxels)
    similarity: str = "ncc"  # ncc (mono-modal), mind (multi-modal), mse
    ncc_window: int = 7
    # different contrasts (T1 vs T2): the similarity is the mean (``mapped_weight``) of that of the moving
    # image and that of the moving image mapped to the fixed contrast (conditional mean of the fixed intensity given the aligned
    # moving one, re-estimated each step). "auto": when the pre-aligned images correlate below
    # AUTO_CORRELATION (inside both heads); "on"; "off"
    intensity_mapping: str = "auto"
    mapped_iterations: int | tuple[int, ...] | None = None  # iterations when mapping (None: ``iterations``)
    mapped_weight: float = 0.5  # the mapped image's share of the similarity when mapping
    regularization: float = 2.0  # weight of the (lambda-weighted) diffusion of the total field
    # step optimized on the working grid downsampled by this factor (coarse to fine)
    pyramid: tuple[int, ...] = (2, 2, 2, 1)
    # step field parametrized on a control grid this many (pyramid-level) voxels apart
    control_spacing: tuple[int, ...] = (2,)
    diffeomorphic: bool = True  # step = exp(v), scaling and squaring on the control grid
    # inside the loss, compose step and previous field to first order (``compose_linearized``): no
    # resampling of the previous field per iteration; the chosen step is composed exactly by the session
    linearized_composition: bool = True
    # optimize on the box holding the foreground of both images (plus ``crop_margin`` working voxels) and
    # extend the step outside it by its border values: a skull-stripped brain fills ~half of its grid
    crop_to_foreground: bool = True
    crop_margin: int = 8
    learn_weight_map: bool = True  # optimize a smooth lambda map jointly
    weight_map_spacing: int = 8  # lambda parametrized this many working voxels apart
    weight_map_lr: float = 0.05
    hyperprior: str = "beta"
    hyperprior_weight: float = 0.2
    w_log_beta: float = 0.18


def tto_option_defaults(overrides: dict | None = None) -> dict:
    """Iterations and regularization of a TTO policy with config ``overrides`` (what a panel shows)."""
    config = TestTimeOptimizationConfig()
    values = {"iterations": config.iterations, "regularization": config.regularization}
    return {**values, **{k: v for k, v in (overrides or {}).items() if k in values}}
