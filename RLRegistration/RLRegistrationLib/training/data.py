"""Training and validation pairs synthesized on the fly from brain label maps (SynthMorph recipe).

Label maps (``../shared/data/synthseg/training_seg_XX.nii.gz``) are read once into a ``LabelBank``
(``training.label_bank``: skull-stripped, at the training spacing, cropped around the brain to the training
grid plus a margin; arrays (k, j, i)). Each training pair:

1. two *different* subjects;
2. each label map moved by a random small affine (rotation, scaling, shift; in voxels of the isotropic
   training grid) and a smooth random deformation, sampled (nearest) onto the training grid;
3. optional random axis flips (the same for both images);
4. intensities: a random mean per label (shared by the pair so a mono-modal similarity applies, or one per
   image), per-label texture, bias field, blur and noise of random strengths (``synthesis.synthesize_image``).

Validation pairs (other subjects) use the fixed T1-like contrast and no augmentation. Arrays are (D, H, W)
= (k, j, i); tensors (1, D, H, W) float32 images in [0, 1] and int64 label maps.

With ``render_factor`` f > 1 every pair is made on a grid f times finer (label maps read at
``spacing_mm / f``, augmentation and synthesis there) and brought to the training grid as a registration
session brings a 1 mm scan to the network grid: images averaged over f³ blocks, labels sampled (nearest).
Without it the images are synthesized on the training grid from label maps sampled at 3 mm, blockier than
what the networks see at inference.

With ``source`` "command" the pairs are not synthesized here: ``training.command_pairs`` captures fixed
pairs of 1 mm syntheses as the ``rlreg register`` command prepares them; with ``targets``
"tto-standard" the training pairs also keep the command's optimized field (the distillation target), and
``flips`` mirror them left-right and ``captured_deform_vox`` deforms each drawn image anew.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..synthesis.contrast import contrast_table, synthesize_image
from ..synthesis.pairs import random_smooth_deformation
from .command_pairs import CapturedBank, capture_subject_pairs, load_captured
from .label_bank import LabelBank, crop_around, required_subject

#: where training pairs come from: synthesized on the training grid, or captured from the command's
#: preparation of 1 mm pairs (``training.command_pairs``)
SOURCES = ("synthetic", "command")
#: target fields a captured training pair may keep: none, or the field of ``tto --quality standard``
TARGETS = ("", "tto-standard")


@dataclass
class DataConfig:
    """Where the label maps are and how pairs are synthesized. ``shape`` is the array shape (D, H, W) of
    the training grid at ``spacing_mm``; ranges are (low, high) of uniform draws."""

    shared_dir: str = "../shared/data"
    train_subjects: list[int] = field(default_factory=lambda: list(range(1, 11)))
    val_subjects: list[int] = field(default_factory=lambda: list(range(11, 15)))
    spacing_mm: float = 3.0
    shape: tuple[int, int, int] = (64, 64, 64)
    margin: int = 8  # voxels kept around the crop, so augmentation does not pull in zeros
    rotation_deg: float = 6.0
    scaling: float = 0.06
    shift_vox: float = 2.0
    deform_max_vox: float = 3.0
    deform_spacing_vox: float = 8.0
    noise_std: tuple[float, float] = (0.0, 0.04)
    bias_strength: tuple[float, float] = (0.0, 0.3)
    blur_sigma_vox: tuple[float, float] = (0.0, 0.8)
    same_contrast: bool = True
    flips: bool = False  # synthetic pairs: random axis flips; captured training pairs: left-right
    prealign: bool = True  # affinely align every subject to the first training subject once (as the
    # session's affine pre-alignment does at inference), so pairs differ by residual shape only
    val_pairs: int = 4
    num_workers: int = 0
    render_factor: int = 1  # pairs made on a grid this many times finer, then brought to the training grid
    source: str = "synthetic"  # or "command": pairs as rlreg register prepares them (training.command_pairs)
    capture_cache: str = "runs/captured_pairs"  # folder of the captured pairs (source "command")
    targets: str = ""  # "tto-standard": captured training pairs keep the optimizer's field (source "command")
    captured_deform_vox: float = 0.0  # source "command": each drawn training image moved by a random smooth
    # deformation of at most this many network-grid voxels (control points every deform_spacing_vox); with
    # targets only the fixed image, the target composed with it (command_pairs.deform_pair)

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"config 'data': unknown keys {sorted(unknown)}")
        out = cls(**values)
        out.shape = tuple(int(s) for s in out.shape)
        if int(out.render_factor) < 1:
            raise InputError(f"config 'data': render_factor must be at least 1, got {out.render_factor}")
        if out.source not in SOURCES:
            raise InputError(f"config 'data': source must be one of {', '.join(SOURCES)}, got '{out.source}'")
        if out.targets not in TARGETS:
            raise InputError(f"config 'data': targets must be '' or 'tto-standard', got '{out.targets}'")
        if out.targets and out.source != "command":
            raise InputError("config 'data': targets need source 'command' (the fields of captured pairs)")
        if float(out.captured_deform_vox) > 0 and out.source != "command":
            raise InputError("config 'data': captured_deform_vox deforms captured pairs (source 'command')")
        if out.source == "command" and int(out.render_factor) > 1:
            raise InputError(
                "config 'data': render_factor applies to synthetic pairs, not to source 'command'"
            )
        return out

    def rendering(self) -> DataConfig:
        """The configuration of the grid pairs are made on: ``render_factor`` times finer, with spacing,
        shape, margin and every length in voxels scaled to it (itself when the factor is 1)."""
        f = int(self.render_factor)
        if f == 1:
            return self
        return replace(
            self,
            spacing_mm=self.spacing_mm / f,
            shape=tuple(int(n) * f for n in self.shape),
            margin=self.margin * f,
            shift_vox=self.shift_vox * f,
            deform_max_vox=self.deform_max_vox * f,
            deform_spacing_vox=self.deform_spacing_vox * f,
            blur_sigma_vox=tuple(v * f for v in self.blur_sigma_vox),
            render_factor=1,
        )


def to_training_grid(pair: dict, factor: int) -> dict:
    """A pair made on a grid ``factor`` times finer, on the training grid: images (..., D, H, W) averaged
    over factor³ blocks, label maps sampled at each block's centre voxel."""
    if factor == 1:
        return pair
    out = dict(pair)
    pick = slice(factor // 2, None, factor)
    for key in ("fixed", "moving"):
        out[key] = F.avg_pool3d(pair[key], factor)  # (C, D, H, W) or (N, C, D, H, W)
    for key in ("fixed_labels", "moving_labels"):
        out[key] = pair[key][..., pick, pick, pick].contiguous()
    return out


def load_config(cls, path: str | Path):
    """``cls.from_dict`` of the JSON object in ``path`` (a training config class); ``InputError`` naming the
    file when it is missing, not JSON or has bad values."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config '{path}': file not found")
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError("must hold a JSON object")
        return cls.from_dict(values)
    except (ValueError, TypeError) as error:
        raise InputError(f"config '{path}': {error}") from None


# ------------------------------------------------------------------------------------------ augmentation


def random_affine(rng: np.random.Generator, rotation_deg: float, scaling: float) -> np.ndarray:
    """3x3 matrix R(angles) @ diag(scales) acting on (i, j, k) voxel offsets."""
    ax, ay, az = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx @ np.diag(1.0 + rng.uniform(-scaling, scaling, 3))


def deform_labels(
    source: np.ndarray, shape: Sequence[int], rng: np.random.Generator, cfg: DataConfig
) -> np.ndarray:
    """Sample ``source`` (k, j, i), centred, onto ``shape`` through a random affine + smooth deformation.

    Output voxel p (i, j, k) reads the source at ``A (p - c) + c + t + u(p) + offset`` (nearest), with
    ``offset`` centring the output in the (larger) source.
    """
    shape = tuple(int(s) for s in shape)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    p = np.stack([i, j, k], axis=-1)  # (D, H, W, 3) in (i, j, k)
    centre = (np.asarray(shape[::-1], dtype=np.float32) - 1) / 2.0
    a = random_affine(rng, cfg.rotation_deg, cfg.scaling).astype(np.float32)
    shift = rng.uniform(-cfg.shift_vox, cfg.shift_vox, 3).astype(np.float32)
    max_disp = rng.uniform(0.0, cfg.deform_max_vox) if cfg.deform_max_vox > 0 else 0.0
    u = random_smooth_deformation(shape, rng, max_disp, cfg.deform_spacing_vox).transpose(1, 2, 3, 0)
    offset = (np.asarray(source.shape[::-1], dtype=np.float32) - np.asarray(shape[::-1])) / 2.0
    q = (p - centre) @ a.T + centre + shift + u + offset
    size = np.asarray(source.shape[::-1], dtype=np.float32)
    grid = torch.from_numpy(2.0 * q / np.maximum(size - 1, 1) - 1.0)[None].float()
    src = torch.from_numpy(source.astype(np.float32))[None, None]
    out = F.grid_sample(src, grid, mode="nearest", padding_mode="zeros", align_corners=True)
    return out[0, 0].numpy().round().astype(np.uint16)


def synthesize(labels: np.ndarray, table: dict[int, float], rng: np.random.Generator, cfg: DataConfig):
    """Image (float32 [0, 1]) of a label array with random noise, bias and blur strengths."""
    return synthesize_image(
        labels,
        contrast=table,
        rng=rng,
        noise_std=rng.uniform(*cfg.noise_std),
        bias_strength=rng.uniform(*cfg.bias_strength),
        blur_sigma_vox=rng.uniform(*cfg.blur_sigma_vox),
    )


def random_pair(
    bank: LabelBank, cfg: DataConfig, rng: np.random.Generator, subjects: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """One augmented training pair of two different subjects (a single subject bank pairs it with
    itself), drawn from the bank indices ``subjects`` (default: all). Returns ``fixed``, ``moving``
    (1, D, H, W) float32, ``fixed_labels``, ``moving_labels`` (1, D, H, W) int64 and ``subjects`` (2,)
    int64: the bank indices of the fixed and moving subjects."""
    if cfg.render_factor > 1:
        return to_training_grid(random_pair(bank, cfg.rendering(), rng, subjects), int(cfg.render_factor))
    candidates = list(range(len(bank))) if subjects is None else [int(s) for s in subjects]
    n = len(candidates)
    index = rng.choice(n, size=2, replace=False) if n > 1 else (0, 0)
    a, b = candidates[int(index[0])], candidates[int(index[1])]
    labels = [deform_labels(bank.arrays[s], cfg.shape, rng, cfg) for s in (a, b)]
    if cfg.flips:
        axes = tuple(ax for ax in range(3) if rng.random() < 0.5)
        labels = [np.ascontiguousarray(np.flip(lab, axis=axes)) for lab in labels]
    present = np.union1d(np.unique(labels[0]), np.unique(labels[1]))
    shared = contrast_table("random", present, rng)
    images = [
        synthesize(lab, shared if cfg.same_contrast else contrast_table("random", present, rng), rng, cfg)
        for lab in labels
    ]
    return {
        "fixed": torch.from_numpy(images[0])[None],
        "moving": torch.from_numpy(images[1])[None],
        "fixed_labels": torch.from_numpy(labels[0].astype(np.int64))[None],
        "moving_labels": torch.from_numpy(labels[1].astype(np.int64))[None],
        "subjects": torch.tensor([a, b], dtype=torch.int64),
    }


class SyntheticPairs(torch.utils.data.IterableDataset):
    """Endless stream of ``random_pair`` samples (of the bank indices ``subjects``, default all); seeded
    by (seed, rank, DataLoader worker)."""

    def __init__(
        self,
        bank: LabelBank,
        cfg: DataConfig,
        seed: int = 0,
        rank: int = 0,
        subjects: Sequence[int] | None = None,
    ):
        super().__init__()
        self.bank, self.cfg, self.seed, self.rank, self.subjects = bank, cfg, seed, rank, subjects
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        rng = np.random.default_rng([self.seed, self.rank, worker, self.epoch])
        while True:
            yield random_pair(self.bank, self.cfg, rng, self.subjects)


def pair_loader(
    bank: LabelBank,
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    rank: int = 0,
    restart: int = 0,
    subjects: Sequence[int] | None = None,
):
    """Infinite iterator of batches (dict of (B, 1, D, H, W) tensors, ``subjects`` (B, 2)) of pairs of
    the bank indices ``subjects`` (default all). ``restart`` changes the stream (used when resuming so a
    resumed run does not replay the same pairs)."""
    if isinstance(bank, CapturedBank):
        return bank.stream(batch_size, seed, rank, restart)
    dataset = SyntheticPairs(bank, cfg, seed, rank, subjects)
    dataset.epoch = restart
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )
    return iter(loader)


def phantom_label_map(shape: Sequence[int] = (32, 32, 32), seed: int = 0) -> np.ndarray:
    """Brain-like label phantom (uint16, (k, j, i)) for tests and smoke runs without the shared data:
    nested ellipsoids of cortex (3), white matter (2), ventricles (4, 43), deep nuclei (10, 17) and an
    extra-cerebral shell (600); radii and centres vary with ``seed``."""
    rng = np.random.default_rng(seed)
    idx = np.indices(tuple(int(s) for s in shape), dtype=np.float32)
    n = np.asarray(shape, dtype=np.float32)
    c = (n - 1) / 2 + rng.uniform(-1, 1, 3)

    def ellipsoid(radii, centre=c) -> np.ndarray:
        return sum(((idx[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) <= 1

    out = np.zeros(idx.shape[1:], dtype=np.uint16)
    out[ellipsoid(n * 0.46 * rng.uniform(0.95, 1.05, 3))] = 600
    out[ellipsoid(n * 0.40 * rng.uniform(0.92, 1.05, 3))] = 3
    out[ellipsoid(n * 0.32 * rng.uniform(0.9, 1.05, 3))] = 2
    for label, side in ((4, -1), (43, 1)):
        radii = n * np.array([0.08, 0.16, 0.08]) * rng.uniform(0.8, 1.2, 3)
        out[ellipsoid(radii, c + [0, 0, side * 0.08 * n[2]])] = label
    for label in (10, 17):
        out[ellipsoid(n * 0.07 * rng.uniform(0.8, 1.2, 3), c + n * rng.uniform(-0.2, 0.2, 3))] = label
    return out


def validation_pairs(bank: LabelBank, cfg: DataConfig, count: int, seed: int = 0) -> list[dict]:
    """Fixed validation pairs (i -> i+1 cyclically, then i -> i+2 ...) with the T1-like contrast, no
    augmentation; tensors (1, 1, D, H, W)."""
    if isinstance(bank, CapturedBank):
        return [bank.network_pair(i) for i in range(min(count, len(bank)))]
    if cfg.render_factor > 1:
        pairs = validation_pairs(bank, cfg.rendering(), count, seed)
        return [to_training_grid(pair, int(cfg.render_factor)) for pair in pairs]
    n = len(bank)
    order = [(i, (i + d) % n) for d in range(1, max(n, 2)) for i in range(n) if (i + d) % n != i]
    pairs = []
    for index, (f, m) in enumerate(order[:count]):
        labels = [
            crop_around(bank.arrays[s], (np.asarray(bank.arrays[s].shape) - 1) / 2, cfg.shape) for s in (f, m)
        ]
        images = [
            synthesize_image(lab, contrast="t1", rng=np.random.default_rng([seed, index, role]))
            for role, lab in enumerate(labels)
        ]
        pairs.append(
            {
                "name": f"{bank.names[f]} <- {bank.names[m]}",
                "fixed": torch.from_numpy(images[0])[None, None],
                "moving": torch.from_numpy(images[1])[None, None],
                "fixed_labels": torch.from_numpy(labels[0].astype(np.int64))[None, None],
                "moving_labels": torch.from_numpy(labels[1].astype(np.int64))[None, None],
            }
        )
    return pairs


def load_banks(
    d: DataConfig, with_validation: bool = True, divisor: int = 16
) -> tuple[LabelBank | CapturedBank, LabelBank | CapturedBank | None]:
    """Training and (on the main rank) validation banks of ``d`` (``subject_bank``); only the training
    pairs keep target fields (``d.targets``) and are flipped (``d.flips``)."""
    train_bank = subject_bank(d, d.train_subjects, "random", divisor, training=True)
    val_bank = None
    if with_validation and d.val_pairs > 0:
        val_bank = subject_bank(d, d.val_subjects, "t1", divisor)
    return train_bank, val_bank


def subject_bank(
    d: DataConfig, subjects: Sequence[int], contrast: str = "t1", divisor: int = 16, training: bool = False
) -> LabelBank | CapturedBank:
    """The pairs of ``subjects`` as ``d`` makes them: their label maps on the grid pairs are made on
    (``rendering``), aligned to the first training subject when ``prealign``; with ``source`` "command",
    their captured pairs (``contrast``: "random" for training, "t1" for validation) for the network grid of
    ``spacing_mm`` (``divisor``: the network's), with target fields and flips when ``training``."""
    if d.source == "command":
        return captured_bank(d, subjects, contrast, divisor, training)
    reference = d.train_subjects[0] if d.prealign else None
    grid = d.rendering()
    return LabelBank.from_shared(d.shared_dir, subjects, grid.spacing_mm, grid.shape, grid.margin, reference)


def captured_bank(
    d: DataConfig, subjects: Sequence[int], contrast: str, divisor: int, training: bool = False
) -> CapturedBank:
    """The captured pairs of ``subjects`` (cached in ``d.capture_cache``; with ``d.targets`` for a training
    bank, a cache of their own that keeps the fields); InputError when the label maps are absent."""
    for subject in subjects:
        required_subject(d.shared_dir, subject)  # the clear error before minutes of work
    targets = bool(d.targets) and training
    pairs = load_captured(
        captured_cache_path(d, subjects, contrast, training),
        lambda: capture_subject_pairs(d.shared_dir, subjects, contrast, targets=targets),
    )
    deform = (float(d.captured_deform_vox) if training else 0.0, float(d.deform_spacing_vox))
    return CapturedBank(pairs, d.spacing_mm, divisor, d.shape, flips=d.flips and training, deform=deform)


def captured_cache_path(
    d: DataConfig, subjects: Sequence[int], contrast: str, training: bool = False
) -> Path:
    """The cache file of the captured pairs of ``subjects`` (a training bank with ``d.targets``: its own)."""
    suffix = f"_{d.targets}" if d.targets and training else ""
    return Path(d.capture_cache) / f"{contrast}_{'-'.join(str(int(s)) for s in subjects)}{suffix}.pt"
