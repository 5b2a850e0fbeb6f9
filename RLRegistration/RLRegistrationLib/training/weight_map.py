"""Stage (c) of SPAC training: teach the lambda head where test-time optimization folds.

    rlreg tune-weight-map --model models/spac-brain-synth --config configs/spac_weight_map.json --out DIR

Why: the lambda head of stage (a) (similarity + lambda-weighted diffusion + hyperprior) learns to be low where
the learned steps deform most, which is also where the test-time optimization after them folds; at equal
folding a uniform lambda did better. Here the head learns from the outcome of the chain it feeds
(``<id>+tto``): for each synthesized training pair the card's chain runs with a *uniform* lambda =
``base_weight``; where its result folds or nearly folds (det J < ``det_threshold``) is blurred with a
Gaussian (``risk_sigma_vox``, working-grid voxels) and scaled so that an isolated folded voxel gets
``risk_gain`` at its centre (clipped to 1): the fold risk r in [0, 1]. The target is
``lambda* = base + (1 - base) r``: stiff where the uniform map let the registration fold, ``base``
elsewhere; and, with ``background_weight``, at least that where the fixed image has nothing to align (its
label map's background farther than ``background_margin_mm`` from the head): there the similarity has no
gradient, so stiffness costs no accuracy and keeps the field from folding where nothing constrains it.
The labels only shape the target; the head predicts it from the images. The head alone is fitted to it
(binary cross-entropy, on the network grid) from the state the chain reads its lambda from (the last
learned step's input); backbone, planner and actor stay as trained,
so the learned steps do not change. The head starts afresh (seeded), so the result does not depend on
the head it replaces.

The targets do not depend on the head (the chain runs with a uniform lambda), so they are computed once,
with the head's input features; the fit then runs over them for ``epochs`` epochs, keeping the head with
the lowest loss on the held-out part (``validation_fraction``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..devices import describe_device
from ..errors import InputError, OutputError
from ..fields.spatial import compose_displacements, warp
from ..policies.base import Policy, PolicyState
from ..policies.cards import CARD_NAME, chain_settings, sha256_of
from ..policies.chained import WeightMapOverride, chained_tto_policy
from ..policies.network_policy import resize_image
from ..policies.networks import SPACNetwork, WeightMapHead, sample_plan
from ..policies.spac_policy import SPACPolicy
from .data import DataConfig, load_banks, load_config, random_pair
from .environment import voxel_jacobian_determinant
from .label_bank import LabelBank


@dataclass
class WeightMapConfig:
    """Settings of the weight-map stage (working-grid voxels of ``data``)."""

    base_weight: float = 0.083  # uniform lambda of the chain runs, and the target away from folds
    det_threshold: float = 0.05  # det J below this counts as (nearly) folded
    risk_sigma_vox: float = 1.0
    risk_gain: float = 4.0
    # lambda of the target where the fixed image has nothing to align: its background (label 0) farther
    # than background_margin_mm from the head; None: base_weight there too
    background_weight: float | None = None
    background_margin_mm: float = 4.0
    pairs: int = 160  # synthesized training pairs (targets)
    validation_fraction: float = 0.15
    epochs: int = 30
    learning_rate: float = 1e-3
    seed: int = 0
    threads: int = 0  # torch threads (0: torch's default)
    # the new head reads the decoder's full-resolution features (true) or those at 1/2 (false); None: as
    # the model's architecture says
    head_full_resolution: bool | None = None
    data: DataConfig = field(default_factory=lambda: DataConfig(spacing_mm=2.0, shape=(80, 96, 112)))

    @classmethod
    def from_dict(cls, values: dict) -> WeightMapConfig:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"weight-map config: unknown keys {sorted(unknown)}")
        values = dict(values)
        data = DataConfig.from_dict(values.pop("data", {}))
        cfg = cls(**values, data=data)
        if not 0.0 < cfg.base_weight <= 1.0:
            raise InputError(f"weight-map config: base_weight must be in (0, 1], got {cfg.base_weight}")
        if cfg.background_weight is not None and not 0.0 < cfg.background_weight <= 1.0:
            raise InputError(
                f"weight-map config: background_weight must be in (0, 1], got {cfg.background_weight}"
            )
        if cfg.pairs < 2 or not 0.0 < cfg.validation_fraction < 1.0:
            raise InputError("weight-map config: needs pairs >= 2 and 0 < validation_fraction < 1")
        if cfg.data.source != "synthetic":
            raise InputError("weight-map config: data.source must be 'synthetic' (it draws augmented pairs)")
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> WeightMapConfig:
        return load_config(cls, path)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["data"]["shape"] = list(self.data.shape)
        return out


def fold_risk(det: torch.Tensor, threshold: float, sigma_vox: float, gain: float) -> torch.Tensor:
    """Fold risk in [0, 1] (same shape as ``det`` (1, 1, D, H, W)): the indicator of det J < ``threshold``
    blurred with a Gaussian of ``sigma_vox`` voxels, scaled so that an isolated marked voxel gets ``gain``
    at its centre, clipped to 1."""
    mask = (det[0, 0] < threshold).float().cpu().numpy()
    if not mask.any():
        return torch.zeros_like(det)
    impulse = np.zeros((9, 9, 9), np.float32)
    impulse[4, 4, 4] = 1.0
    peak = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(impulse), sigma_vox))
    blurred = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(mask), sigma_vox))
    risk = np.clip(gain * blurred / float(peak.max()), 0.0, 1.0)
    return torch.from_numpy(risk)[None, None].to(det)


def no_signal_region(fixed_labels: torch.Tensor, margin_vox: float) -> torch.Tensor:
    """Where the fixed image has nothing to align: background (label 0) more than ``margin_vox`` voxels
    from any labelled voxel. Bool, the shape of ``fixed_labels`` (1, 1, D, H, W)."""
    head = sitk.GetImageFromArray((fixed_labels[0, 0] > 0).to(torch.uint8).cpu().numpy())
    radius = int(round(margin_vox))
    if radius > 0:
        head = sitk.BinaryDilate(head, [radius] * 3, sitk.sitkBall)
    return torch.from_numpy(sitk.GetArrayFromImage(head) == 0)[None, None].to(fixed_labels.device)


def weight_map_target(
    det: torch.Tensor, cfg: WeightMapConfig, no_signal: torch.Tensor | None = None
) -> torch.Tensor:
    """lambda* = base + (1 - base) * fold risk, (1, 1, D, H, W) in [base, 1]; at least
    ``cfg.background_weight`` inside ``no_signal`` (bool, same shape) when both are given."""
    risk = fold_risk(det, cfg.det_threshold, cfg.risk_sigma_vox, cfg.risk_gain)
    target = cfg.base_weight + (1.0 - cfg.base_weight) * risk
    if no_signal is not None and cfg.background_weight is not None:
        target = torch.where(no_signal, target.clamp(min=cfg.background_weight), target)
    return target


def run_policy(
    policy: Policy, fixed: torch.Tensor, moving: torch.Tensor, steps: int, spacing_mm: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``steps`` steps of ``policy`` as a session does (tensors of one working grid, no labels):
    (total field (1, 3, D, H, W) in voxels, the warped image each step started from)."""
    policy.reset(fixed, moving, spacing_mm)
    field = torch.zeros((1, 3, *fixed.shape[2:]), device=fixed.device)
    warped, inputs = moving, []
    for index in range(steps):
        inputs.append(warped)
        proposal = policy.propose(PolicyState(fixed, moving, warped, field, index))
        with torch.no_grad():
            field = compose_displacements(proposal.step_field.detach(), field)
            warped = warp(moving, field)
    return field, inputs


@torch.no_grad()
def head_features(network: SPACNetwork, fixed: torch.Tensor, warped: torch.Tensor, max_step: float):
    """The decoder features the lambda head reads for the state (fixed, warped) on the network grid, with
    the plan at its mean (as at inference)."""
    mean, log_std, _, skips = network.plan_distribution(fixed, warped)
    plan, _ = sample_plan(mean, log_std, deterministic=True)
    return network.actor(plan, skips, max_step)[1]


def make_samples(
    first: SPACPolicy, cfg: WeightMapConfig, bank: LabelBank, progress: bool = True
) -> tuple[list[dict], dict]:
    """One sample per synthesized pair: the head's input features and the target lambda* (network grid);
    plus statistics of the chain runs (% folded, % of voxels with a target above halfway to 1)."""
    chain = chain_settings(first.card, first.model_dir / CARD_NAME)
    if chain.learned_steps < 1:
        raise InputError(f"model '{first.model_dir}': its chain has no learned step, so reads no lambda map")
    policy = chained_tto_policy(
        WeightMapOverride(first, value=cfg.base_weight), chain.learned_steps, chain.tto, first.name
    )
    rng = np.random.default_rng(cfg.seed)
    samples, folded, covered = [], [], []
    for _ in _progress(range(cfg.pairs), progress, "chain runs"):
        pair = random_pair(bank, cfg.data, rng)
        fixed, moving = pair["fixed"][None], pair["moving"][None]
        field, inputs = run_policy(policy, fixed, moving, chain.total_steps, cfg.data.spacing_mm)
        det = voxel_jacobian_determinant(field)
        margin = cfg.background_margin_mm / cfg.data.spacing_mm
        target = weight_map_target(det, cfg, no_signal_region(pair["fixed_labels"][None], margin))
        folded.append(100.0 * float((det <= 0).float().mean()))
        covered.append(100.0 * float((target > cfg.base_weight + 0.5 * (1 - cfg.base_weight)).float().mean()))
        warped = first.to_network(inputs[chain.learned_steps - 1])
        features = head_features(first.network, first._fixed, warped, first.max_step)
        target = resize_image(target, first.shape)
        samples.append({"features": features, "target": target})
    stats = {"chain_folding_percent": float(np.mean(folded)), "target_stiff_percent": float(np.mean(covered))}
    return samples, stats


def fit_head(network: SPACNetwork, samples: list[dict], cfg: WeightMapConfig, progress: bool = True) -> dict:
    """Fit ``network.weight_head`` to the samples' targets (BCE); the head with the lowest held-out loss is
    kept. Returns the losses before and after, and the epoch kept."""
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(samples), generator=generator).tolist()
    held = max(1, round(cfg.validation_fraction * len(samples)))
    validation, training = [samples[i] for i in order[:held]], [samples[i] for i in order[held:]]
    head = network.weight_head
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.learning_rate)

    def loss_of(sample: dict) -> torch.Tensor:
        weight = head(sample["features"], tuple(sample["target"].shape[2:]))
        return F.binary_cross_entropy(weight, sample["target"])

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(np.mean([float(loss_of(s)) for s in validation]))

    before = best = held_out_loss()
    best_state, best_epoch = {k: v.clone() for k, v in head.state_dict().items()}, 0
    for epoch in _progress(range(1, cfg.epochs + 1), progress, "head epochs"):
        for index in torch.randperm(len(training), generator=generator).tolist():
            optimizer.zero_grad(set_to_none=True)
            loss_of(training[index]).backward()
            optimizer.step()
        current = held_out_loss()
        if current < best:
            best, best_epoch = current, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return {"held_out_bce_before": before, "held_out_bce_after": best, "epoch_kept": best_epoch}


def tune_weight_map(
    model_dir: str | Path,
    out_dir: str | Path,
    cfg: WeightMapConfig,
    overwrite: bool = False,
    shared_dir: str | Path | None = None,
    bank: LabelBank | None = None,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Run stage (c) on the SPAC model in ``model_dir`` and write the tuned model (``weights.pt`` + a copy
    of the card with the new checksum and a ``training.weight_map`` block) to ``out_dir``. ``out_dir`` may
    be ``model_dir`` only with ``overwrite``. ``bank`` replaces the label maps read from ``shared_dir``
    (tests)."""
    start = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if (out_dir / CARD_NAME).exists() and not overwrite:
        raise OutputError(f"{out_dir / CARD_NAME} exists (use --overwrite to replace the model)")
    if shared_dir is not None:
        cfg.data.shared_dir = str(shared_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if bank is None:
        bank, _ = load_banks(cfg.data, with_validation=False)
    first = SPACPolicy(model_dir, device="cpu", input_spacing_mm=cfg.data.spacing_mm)
    network, card = first.network, dict(first.card)
    if cfg.head_full_resolution is not None:
        full = bool(cfg.head_full_resolution)
        network.architecture = replace(network.architecture, weight_head_full_resolution=full)
        network.actor.use_full_resolution_features(full)
        card["architecture"] = {**card["architecture"], "weight_head_full_resolution": full}
    network.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # a fresh head: the result does not depend on the head it replaces
    network.weight_head = WeightMapHead(
        network.actor.feature_channels, network.architecture.weight_head_channels
    )
    samples, stats = make_samples(first, cfg, bank, progress)
    fit = fit_head(network, samples, cfg, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / str(card["weights"])
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, weights)
    card["sha256"] = sha256_of(weights)
    card["parameters"] = sum(v.numel() for v in network.state_dict().values())
    card["training"] = {
        **card.get("training", {}),
        "weight_map": {
            "command": command or "tune_weight_map(...)",
            "from_sha256": str(first.card["sha256"]),
            "config": cfg.to_dict(),
            **stats,
            **fit,
            "wall_time_s": round(time.perf_counter() - start, 1),
            "hardware": f"{describe_device(torch.device('cpu'))}, {os.cpu_count()} CPU cores, "
            f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        },
    }
    (out_dir / CARD_NAME).write_text(json.dumps(card, indent=2))
    return out_dir


def _progress(items, enabled: bool, what: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=what, dynamic_ncols=True)
