"""Training pairs as the ``rlreg register`` command prepares them (``data.source: "command"``).

The synthetic pairs of ``training.data`` are made on the training grid; a session instead reads two 1 mm
scans, pre-aligns them affinely, crops and resamples them to its working grid with antialiasing,
normalizes their intensities by percentiles and resizes the result to the network's grid (each dimension a
multiple of the network's divisor, so the voxels are not quite isotropic). A network fine-tuned on the first
kind of pair and judged on the second can improve on one and lose on the other (``benchmarks/RESULTS.md``,
"does SPAC's SAC stage pay").

Here each ordered pair of two subjects is synthesized at 1 mm (``synthesis.pairs.validation_pair``, one
contrast shared by both images: random per pair for training, T1-like for validation) and *captured*
through the session's own preparation (``RegistrationSession.prepare``): the working-grid tensors, with
the label maps resampled (nearest) onto the same grid, the moving one through the pre-alignment. A
training episode resizes them to the network grid exactly as ``NetworkPolicy`` does, then pads or crops
them (centred) to the training shape so that batches and the replay buffer keep one shape.
"""

from __future__ import annotations

from itertools import permutations
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..io.imaging import resample_to_grid
from ..policies.network_policy import network_shape, resize_image


def capture_pair(
    fixed: sitk.Image, moving: sitk.Image, fixed_labels: sitk.Image, moving_labels: sitk.Image
) -> dict[str, torch.Tensor | float]:
    """The working-grid tensors of a session of this pair at standard quality (the 2 mm working grid the
    learned policies run on): ``fixed``, ``moving`` (1, 1, D, H, W) float32 in [0, 1], ``fixed_labels``,
    ``moving_labels`` (1, 1, D, H, W) int16 (FreeSurfer labels fit; a quarter of int64's cache) and
    ``spacing_mm`` (the working grid's)."""
    from ..registration.run_spec import RunSpec, build_session

    session, _ = build_session(
        RunSpec(policy="tto", quality="standard", device="cpu"), fixed, moving, keep_steps=False
    )
    session.prepare()

    def labels_on_grid(labels: sitk.Image, transform) -> torch.Tensor:
        image = resample_to_grid(labels, session.grid, transform, sitk.sitkNearestNeighbor, antialias=False)
        return torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.int16))[None, None]

    return {
        "fixed": session.fixed_tensor.cpu(),
        "moving": session.moving_tensor.cpu(),
        "fixed_labels": labels_on_grid(fixed_labels, None),
        "moving_labels": labels_on_grid(moving_labels, session.affine),
        "spacing_mm": float(session.grid.spacing[0]),
    }


def capture_subject_pairs(
    shared_dir: str | Path, subjects: Sequence[int], contrast: str, seed: int = 0
) -> list[dict]:
    """``capture_pair`` of every ordered pair of ``subjects`` synthesized at 1 mm with one contrast per pair
    (``contrast`` "random": a random intensity per label, drawn per pair; "t1" / "t2": the fixed tables)."""
    from ..synthesis.contrast import contrast_table
    from ..synthesis.pairs import validation_pair

    pairs = []
    for index, (f, m) in enumerate(permutations([int(s) for s in subjects], 2)):
        table = contrast
        if contrast == "random":
            table = contrast_table("random", range(0, 256), np.random.default_rng([seed, f, m]))
        images = validation_pair(f, m, shared_dir, table, table, seed=seed * 1000 + index)
        pairs.append({**capture_pair(*images), "name": f"training_seg_{f:02d} <- training_seg_{m:02d}"})
    return pairs


def fit_shape(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``tensor`` (..., D, H, W) zero-padded or cropped, centred, to ``shape``."""
    for axis, size in zip(range(-3, 0), shape):
        n = tensor.shape[axis]
        if n > size:
            start = (n - size) // 2
            tensor = tensor.narrow(axis, start, size)
        elif n < size:
            before = (size - n) // 2
            pad = [0, 0] * 3
            pad[2 * (-1 - axis)] = before
            pad[2 * (-1 - axis) + 1] = size - n - before
            tensor = F.pad(tensor, pad)
    return tensor.contiguous()


def on_network_grid(pair: dict, spacing_mm: float, divisor: int, shape: Sequence[int]) -> dict:
    """A captured pair on the network grid of ``spacing_mm`` (``NetworkPolicy``'s resize: trilinear images,
    nearest labels, int64), then fitted to ``shape``; tensors (1, 1, D, H, W)."""
    grid = network_shape(tuple(pair["fixed"].shape[2:]), pair["spacing_mm"] / spacing_mm, divisor)
    out = {"name": pair.get("name", "")}
    for key in ("fixed", "moving"):
        out[key] = fit_shape(resize_image(pair[key], grid), shape)
    for key in ("fixed_labels", "moving_labels"):
        labels = F.interpolate(pair[key].float(), size=grid, mode="nearest").long()
        out[key] = fit_shape(labels, shape)
    return out


class CapturedBank:
    """Captured pairs (``capture_subject_pairs``) on the working grid, and the network grid they are
    trained on (spacing, the network's divisor, the training shape)."""

    def __init__(self, pairs: list[dict], spacing_mm: float, divisor: int, shape: Sequence[int]):
        self.pairs, self.spacing_mm, self.divisor, self.shape = pairs, spacing_mm, divisor, tuple(shape)

    def __len__(self) -> int:
        return len(self.pairs)

    def network_pair(self, index: int) -> dict:
        return on_network_grid(self.pairs[index], self.spacing_mm, self.divisor, self.shape)

    def stream(self, batch_size: int, seed: int, rank: int = 0, restart: int = 0) -> Iterator[dict]:
        """Endless batches (dict of (B, 1, D, H, W) tensors) of pairs drawn uniformly, seeded by (seed, rank,
        restart)."""
        rng = np.random.default_rng([seed, rank, restart, 17])
        keys = ("fixed", "moving", "fixed_labels", "moving_labels")
        while True:
            chosen = [self.network_pair(int(i)) for i in rng.integers(0, len(self), batch_size)]
            yield {k: torch.cat([pair[k] for pair in chosen]) for k in keys}


def load_captured(path: Path, make) -> list[dict]:
    """The captured pairs cached at ``path``, made by ``make()`` and written there on first use."""
    if path.is_file():
        return torch.load(path, weights_only=True)  # tensors, numbers and names only
    pairs = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(pairs, partial)
    partial.replace(path)
    return pairs
