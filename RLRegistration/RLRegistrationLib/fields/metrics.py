"""Accuracy and regularity measures: Dice, HD95 (mm), folding (% det J <= 0) and SDlogJ; and how well a
map (e.g. the spread of sampled trajectories) ranks where an error remains (AUROC)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .geometry import Grid, field_image_to_tensor, physical_to_voxel
from .spatial import jacobian_determinant

EVAL_LABELS_FILE = Path(__file__).resolve().parent.parent / "sample_data" / "labels_30.txt"


def evaluation_labels() -> list[int]:
    """The 30 FreeSurfer labels registration papers report Dice on (VoxelMorph's list)."""
    values = []
    for line in EVAL_LABELS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        values.extend(int(v) for v in line.replace(",", " ").split())
    return values


def parse_label_list(text: str) -> list[int] | None:
    """Labels to score from a word: "all" (None: every shared non-zero label), "30" (``evaluation_labels``)
    or comma-separated integers; ``InputError`` otherwise."""
    from ..errors import InputError

    if text == "all":
        return None
    if text == "30":
        return evaluation_labels()
    try:
        labels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        labels = []
    if not labels or any(v <= 0 for v in labels):
        raise InputError(f"--labels: expected 'all', '30' or comma-separated positive integers, got '{text}'")
    return labels


def common_labels(fixed: np.ndarray, moving: np.ndarray, labels: Iterable[int] | None = None) -> list[int]:
    """``labels`` if given, else every non-zero label present in both maps."""
    if labels is not None:
        return [int(label) for label in labels]
    return sorted(int(v) for v in np.intersect1d(np.unique(fixed), np.unique(moving)) if v != 0)


def dice_per_label(
    fixed: np.ndarray, warped: np.ndarray, labels: Iterable[int] | None = None
) -> dict[int, float]:
    """Dice overlap per label of two label arrays on the same grid; labels absent from both are skipped."""
    scores = {}
    for label in common_labels(fixed, warped, labels):
        a = fixed == label
        b = warped == label
        total = int(a.sum()) + int(b.sum())
        if total:
            scores[label] = 2.0 * float(np.logical_and(a, b).sum()) / total
    return scores


def mean_dice(fixed: np.ndarray, warped: np.ndarray, labels: Iterable[int] | None = None) -> float:
    scores = dice_per_label(fixed, warped, labels)
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def hd95_per_label(
    fixed: sitk.Image, warped: sitk.Image, labels: Iterable[int] | None = None, margin: int = 3
) -> dict[int, float]:
    """95th percentile symmetric surface distance (mm) per label, with the images' spacing and direction."""
    fa = sitk.GetArrayViewFromImage(fixed)
    wa = sitk.GetArrayViewFromImage(warped)
    result = {}
    for label in common_labels(fa, wa, labels):
        a = fa == label
        b = wa == label
        if not a.any() or not b.any():
            continue
        box = _bounding_box(a | b, margin)
        ia = _crop_mask(a, box, fixed)
        ib = _crop_mask(b, box, fixed)
        d_ab = _surface_distances(ia, ib)
        d_ba = _surface_distances(ib, ia)
        result[label] = float(np.percentile(np.concatenate([d_ab, d_ba]), 95))
    return result


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    nonzero = np.nonzero(mask)
    return tuple(
        slice(max(0, int(idx.min()) - margin), min(n, int(idx.max()) + margin + 1))
        for idx, n in zip(nonzero, mask.shape)
    )


def _crop_mask(mask: np.ndarray, box: tuple[slice, ...], reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(mask[box].astype(np.uint8))
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    start = [box[2].start, box[1].start, box[0].start]
    image.SetOrigin(reference.TransformIndexToPhysicalPoint([int(s) for s in start]))
    return image


def _surface_distances(source: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Distances (mm) from the surface voxels of ``source`` to the surface of ``target``."""
    distance = sitk.Abs(sitk.SignedMaurerDistanceMap(target, squaredDistance=False, useImageSpacing=True))
    contour = sitk.LabelContour(source)  # keep the image alive: a view does not
    surface = sitk.GetArrayViewFromImage(contour) > 0
    return sitk.GetArrayViewFromImage(distance)[surface].astype(np.float64)


def jacobian_of_field(field: sitk.Image) -> np.ndarray:
    """det(I + du/dx) in physical space of a vector image of LPS mm displacements (array order k, j, i)."""
    grid = Grid.from_image(field)
    u_vox = physical_to_voxel(field_image_to_tensor(field).double(), grid)
    return jacobian_determinant(u_vox, grid)[0, 0].numpy()


def jacobian_of_arrays(vectors_mm: np.ndarray, spacing, direction) -> np.ndarray:
    """det(I + du/dx) (no unit: the local volume change of ``x + u(x)``) of displacement vectors
    ``(k, j, i, 3)`` in mm on a grid of ``spacing`` (mm, i, j, k) and ``direction`` (3x3, columns: the index
    axes), in physical space as :func:`jacobian_of_field` computes it (central differences inside).

    The same for LPS and RAS arrays: flipping two axes of the points and of the vectors leaves det J
    unchanged, so Slicer's RAS grid arrays give the library's numbers.
    """
    vectors = np.asarray(vectors_mm)  # float32 stays float32: the differences are taken in float64 by slabs
    if vectors.dtype not in (np.float32, np.float64):
        vectors = vectors.astype(np.float64)
    if vectors.ndim != 4 or vectors.shape[-1] != 3:
        raise ValueError(f"displacements of shape (k, j, i, 3) are required, got {vectors.shape}")
    grid = Grid(
        (int(vectors.shape[2]), int(vectors.shape[1]), int(vectors.shape[0])),
        tuple(float(s) for s in spacing),
        (0.0, 0.0, 0.0),
        tuple(float(d) for d in np.asarray(direction, dtype=np.float64).reshape(9)),
    )
    u_mm = torch.from_numpy(np.ascontiguousarray(vectors)).permute(3, 0, 1, 2)[None]
    return jacobian_determinant(physical_to_voxel(u_mm, grid), grid)[0, 0].numpy()


def jacobian_image(displacement: sitk.Image) -> sitk.Image:
    """det J of ``x + u(x)`` (:func:`jacobian_of_field`) as a float32 image on the field's grid (what
    ``rlreg register --jacobian`` writes: 1 = no change, < 1 shrinkage, > 1 growth, <= 0 folding)."""
    image = sitk.GetImageFromArray(jacobian_of_field(displacement).astype(np.float32))
    image.CopyInformation(displacement)
    return image


def jacobian_stats(det: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Folding (% voxels with det J <= 0) and SDlogJ (std of log det J, clipped to [1e-9, 1e9])."""
    values = det[mask] if mask is not None else det.ravel()
    folding = 100.0 * float((values <= 0).mean())
    sdlogj = float(np.log(np.clip(values, 1e-9, 1e9)).std())
    return {"folding_percent": folding, "sdlogj": sdlogj, "jacobian_min": float(values.min())}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` as a ranking of the ``positive`` entries (bool) above the
    others: the probability that a random positive scores higher than a random negative, ties counting
    half (the Mann-Whitney U statistic over n_pos * n_neg). 1: a perfect ranking, 0.5: no better than
    chance, whatever the scale of the scores. NaN when either class is empty."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # rank of each distinct value (1-based), the mean of the ranks its ties occupy
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(mean_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def resample_labels(labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Moving labels on the fixed grid through ``transform`` (fixed -> moving), nearest neighbour."""
    return sitk.Resample(labels, reference, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def evaluate_transform(
    fixed_labels: sitk.Image,
    moving_labels: sitk.Image,
    transform: sitk.Transform,
    labels: Iterable[int] | None = None,
    displacement: sitk.Image | None = None,
    with_hd95: bool = True,
) -> dict[str, float]:
    """Mean Dice, mean HD95 (mm) of labels resampled through ``transform``, and Jacobian statistics of
    ``displacement`` (the deformable part) when given."""
    warped = resample_labels(moving_labels, fixed_labels, transform)
    fa = sitk.GetArrayViewFromImage(fixed_labels)
    wa = sitk.GetArrayViewFromImage(warped)
    labels = common_labels(fa, sitk.GetArrayViewFromImage(moving_labels), labels)
    scores = dice_per_label(fa, wa, labels)
    report: dict[str, float] = {"dice": float(np.mean(list(scores.values()))) if scores else float("nan")}
    if with_hd95:
        hd = hd95_per_label(fixed_labels, warped, labels)
        report["hd95_mm"] = float(np.mean(list(hd.values()))) if hd else float("nan")
    if displacement is not None:
        report.update(jacobian_stats(jacobian_of_field(displacement)))
    report["dice_per_label"] = scores  # type: ignore[assignment]
    return report
