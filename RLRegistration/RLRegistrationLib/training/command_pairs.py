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

With ``targets`` each captured pair also keeps the field the command's own optimizer finds for it
(``tto --quality standard`` run to the end in the same session, so on the same working grid and after the
same pre-alignment): the target of the optimizer-distillation loss (``losses.RegistrationLoss``'s
``target_weight``, issue 25 item 2). ``flips`` mirror a pair left-right (images, labels and target field,
its left-right component negated): an exact augmentation of a fixed set of captured pairs. ``deform``
moves each image of a drawn pair (with its labels) by its own random smooth deformation on the network
grid, so that a fixed set of brains yields new shapes on every draw (a pair with a target field: only its
fixed image, the target composed with the deformation so that it stays the answer).
"""

from __future__ import annotations

from itertools import permutations
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..fields.spatial import compose_displacements, resize_displacement, warp
from ..io.imaging import resample_to_grid
from ..policies.network_policy import network_shape, resize_image
from ..synthesis.pairs import random_smooth_deformation


def capture_pair(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_labels: sitk.Image,
    moving_labels: sitk.Image,
    target: bool = False,
) -> dict[str, torch.Tensor | float | int]:
    """The working-grid tensors of a session of this pair at standard quality (the 2 mm working grid the
    learned policies run on): ``fixed``, ``moving`` (1, 1, D, H, W) float32 in [0, 1], ``fixed_labels``,
    ``moving_labels`` (1, 1, D, H, W) int16 (FreeSurfer labels fit; a quarter of int64's cache),
    ``spacing_mm`` (the working grid's) and ``left_right_axis`` (the tensor axis, -1 / -2 / -3, closest to
    the patient's left-right direction). With ``target``, also ``target_field`` (1, 3, D, H, W) float16 in
    working-grid voxels: the total field of the session's ``tto`` steps run to the end. The pair is of two
    subjects (``pair`` "different-subjects", what the command finds for such pairs): affine pre-alignment
    and a deformable stage, whatever the images look like."""
    from ..registration.run_spec import RunSpec, build_session

    session, plan = build_session(
        RunSpec(policy="tto", quality="standard", pair="different-subjects", device="cpu"),
        fixed,
        moving,
        keep_steps=False,
    )
    session.prepare()

    def labels_on_grid(labels: sitk.Image, transform) -> torch.Tensor:
        image = resample_to_grid(labels, session.grid, transform, sitk.sitkNearestNeighbor, antialias=False)
        return torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.int16))[None, None]

    out = {
        "fixed": session.fixed_tensor.cpu(),
        "moving": session.moving_tensor.cpu(),
        "fixed_labels": labels_on_grid(fixed_labels, None),
        "moving_labels": labels_on_grid(moving_labels, session.affine),
        "spacing_mm": float(session.grid.spacing[0]),
        "left_right_axis": left_right_axis(session.grid.direction_matrix),
    }
    if target:
        for _ in session.run(plan.steps):
            pass
        out["target_field"] = session.field_at().to(torch.float16).cpu()
    return out


def left_right_axis(direction: np.ndarray) -> int:
    """The tensor axis (-1 = i, -2 = j, -3 = k of (..., D, H, W)) whose direction column is closest to
    LPS x, the patient's left-right."""
    return -1 - int(np.argmax(np.abs(np.asarray(direction)[0, :])))


def flip_pair(pair: dict, axis: int) -> dict:
    """``pair`` (tensors (1, C, D, H, W)) mirrored along tensor ``axis`` (-1 / -2 / -3); a target field's
    component along that axis (channel -1 - axis: the field's channels are (i, j, k)) changes sign."""
    out = dict(pair)
    for key in ("fixed", "moving", "fixed_labels", "moving_labels", "target_field"):
        if key in pair:
            out[key] = pair[key].flip(axis)
    if "target_field" in pair:
        sign = torch.ones(3, dtype=pair["target_field"].dtype)
        sign[-1 - axis] = -1
        out["target_field"] = out["target_field"] * sign.view(1, 3, 1, 1, 1)
    return out


def deform_pair(pair: dict, rng: np.random.Generator, max_vox: float, spacing_vox: float) -> dict:
    """``pair`` (tensors (1, C, D, H, W)) with the fixed and the moving image each warped, with its label
    map, by its own ``random_smooth_deformation`` (largest displacement drawn uniformly up to ``max_vox``,
    control points every ``spacing_vox`` voxels): images trilinear, labels nearest.

    A pair with a target field keeps an exact target: only its fixed image is deformed, by ``u``, and the
    target ``phi`` becomes ``u + phi o (id + u)`` (``compose_displacements``): where the moving image
    warped by ``phi`` matched the fixed one, warped by the new target it matches the deformed fixed one.
    """
    out = dict(pair)
    shape = tuple(pair["fixed"].shape[2:])
    sides = ("fixed",) if "target_field" in pair else ("fixed", "moving")
    for image in sides:
        field = random_smooth_deformation(shape, rng, rng.uniform(0.0, max_vox), spacing_vox)
        u = torch.from_numpy(field)[None].to(pair[image].dtype)
        out[image] = warp(pair[image], u)
        out[f"{image}_labels"] = warp(pair[f"{image}_labels"].float(), u, mode="nearest").long()
        if image == "fixed" and "target_field" in pair:
            out["target_field"] = compose_displacements(u, pair["target_field"].to(u.dtype))
    return out


def capture_subject_pairs(
    shared_dir: str | Path, subjects: Sequence[int], contrast: str, seed: int = 0, targets: bool = False
) -> list[dict]:
    """``capture_pair`` of every ordered pair of ``subjects`` synthesized at 1 mm with one contrast per pair
    (``contrast`` "random": a random intensity per label, drawn per pair; "t1" / "t2": the fixed tables),
    with the optimizer's field when ``targets``."""
    from ..synthesis.contrast import contrast_table
    from ..synthesis.pairs import validation_pair

    pairs = []
    for index, (f, m) in enumerate(permutations([int(s) for s in subjects], 2)):
        table = contrast
        if contrast == "random":
            table = contrast_table("random", range(0, 256), np.random.default_rng([seed, f, m]))
        images = validation_pair(f, m, shared_dir, table, table, seed=seed * 1000 + index)
        pairs.append(
            {**capture_pair(*images, target=targets), "name": f"training_seg_{f:02d} <- training_seg_{m:02d}"}
        )
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
    nearest labels, int64; a target field resized with its vectors rescaled to network-grid voxels), then
    fitted to ``shape``; tensors (1, C, D, H, W)."""
    grid = network_shape(tuple(pair["fixed"].shape[2:]), pair["spacing_mm"] / spacing_mm, divisor)
    out = {"name": pair.get("name", ""), "left_right_axis": int(pair.get("left_right_axis", -1))}
    for key in ("fixed", "moving"):
        out[key] = fit_shape(resize_image(pair[key], grid), shape)
    for key in ("fixed_labels", "moving_labels"):
        labels = F.interpolate(pair[key].float(), size=grid, mode="nearest").long()
        out[key] = fit_shape(labels, shape)
    if "target_field" in pair:
        out["target_field"] = fit_shape(resize_displacement(pair["target_field"].float(), grid), shape)
    return out


class CapturedBank:
    """Captured pairs (``capture_subject_pairs``) on the working grid, and the network grid they are
    trained on (spacing, the network's divisor, the training shape); ``flips``: the training stream mirrors
    each drawn pair left-right with probability 1/2 (``flip_pair``); ``deform``: (largest displacement,
    control-point spacing), network-grid voxels, of the random smooth deformation ``deform_pair`` gives
    each drawn image ((0, _): none)."""

    def __init__(
        self,
        pairs: list[dict],
        spacing_mm: float,
        divisor: int,
        shape: Sequence[int],
        flips: bool = False,
        deform: tuple[float, float] = (0.0, 8.0),
    ):
        self.pairs, self.spacing_mm, self.divisor, self.shape = pairs, spacing_mm, divisor, tuple(shape)
        self.flips, self.deform = bool(flips), (float(deform[0]), float(deform[1]))
        self.keys = ("fixed", "moving", "fixed_labels", "moving_labels") + (
            ("target_field",) if pairs and all("target_field" in p for p in pairs) else ()
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def network_pair(self, index: int) -> dict:
        return on_network_grid(self.pairs[index], self.spacing_mm, self.divisor, self.shape)

    def stream(self, batch_size: int, seed: int, rank: int = 0, restart: int = 0) -> Iterator[dict]:
        """Endless batches (dict of (B, 1, D, H, W) tensors) of pairs drawn uniformly, seeded by (seed, rank,
        restart)."""
        rng = np.random.default_rng([seed, rank, restart, 17])
        while True:
            chosen = []
            for index in rng.integers(0, len(self), batch_size):
                pair = self.network_pair(int(index))
                if self.flips and rng.random() < 0.5:
                    pair = flip_pair(pair, pair["left_right_axis"])
                if self.deform[0] > 0:
                    pair = deform_pair(pair, rng, *self.deform)
                chosen.append(pair)
            yield {k: torch.cat([pair[k] for pair in chosen]) for k in self.keys}


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
