"""What the panels show to judge an alignment, in plain NumPy (no Qt, no Slicer): issue 21.

* :func:`robust_range`: the default range of an overlay's colours and colour bar, from its data's 1st and
  99th percentiles (so a few extreme voxels neither flatten the colours nor hide the spread);
* :func:`jacobian_window` and :func:`jacobian_colors`: the local volume change det J in diverging colours
  around 1 (blue: shrinkage, red: growth), folding (det J <= 0) in a signal colour;
* :func:`compare_images`: checkerboard and |fixed - warped| of two images on one grid, each normalized
  robustly first (so two scanners' grey levels compare);
* :func:`sample_linear`: a volume's value at a continuous voxel index (the cursor read-out).
"""

from __future__ import annotations

import numpy as np

#: percentiles of an overlay's default range
ROBUST_PERCENTILES = (1.0, 99.0)
#: det J's diverging colour map (matplotlib's name) and the RGBA of folding voxels (det J <= 0)
JACOBIAN_COLORMAP = "RdBu_r"
FOLDING_RGBA = (0.0, 1.0, 0.0, 1.0)
#: smallest half-width of det J's default range around 1 (a near-identity field still shows colours)
JACOBIAN_MIN_HALF_WIDTH = 0.05
CHECKER_SQUARE_MM = 16.0


def robust_range(
    array: np.ndarray | None, percentiles: tuple[float, float] = ROBUST_PERCENTILES, min_width: float = 1e-3
) -> tuple[float, float] | None:
    """(low, high) = the given percentiles of the finite values of ``array`` (in its own unit), widened to
    ``min_width`` when they coincide; None without finite values."""
    if array is None:
        return None
    values = np.asarray(array)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if high - low < min_width:
        high = low + min_width
    return low, high


def jacobian_window(det: np.ndarray | None) -> tuple[float, float] | None:
    """det J's default range: symmetric around 1 (the middle of the diverging colours), wide enough for the
    1st and 99th percentiles, and reaching below 0 when any voxel folds (so folding gets its signal
    colour); None without data."""
    robust = robust_range(det)
    if robust is None:
        return None
    half = max(abs(robust[0] - 1.0), abs(robust[1] - 1.0), JACOBIAN_MIN_HALF_WIDTH)
    values = np.asarray(det)
    if np.any(values[np.isfinite(values)] <= 0.0):
        half = max(half, 1.02)
    return 1.0 - half, 1.0 + half


def jacobian_colors(window: tuple[float, float], count: int = 256) -> np.ndarray:
    """RGBA (count, 4) of a colour table spread over ``window`` (low, high): a bin whose middle is <= 0 is
    folding (:data:`FOLDING_RGBA`), the others diverging around det J = 1 (white), as far as the window
    reaches on its wider side."""
    from matplotlib import colormaps

    low, high = float(window[0]), float(window[1])
    centres = low + (np.arange(count) + 0.5) * (high - low) / count
    half = max(1.0 - low, high - 1.0, 1e-6)
    colors = colormaps[JACOBIAN_COLORMAP](np.clip(0.5 + (centres - 1.0) / (2.0 * half), 0.0, 1.0))
    colors[centres <= 0.0] = FOLDING_RGBA
    return colors


def normalized(array: np.ndarray) -> np.ndarray:
    """``array`` mapped robustly to [0, 1] (its 1st..99th percentile), float32."""
    low, high = robust_range(array) or (0.0, 1.0)
    return np.clip((np.asarray(array, dtype=np.float32) - low) / (high - low), 0.0, 1.0)


def compare_images(
    fixed: np.ndarray, warped: np.ndarray, mode: str, square_voxels: tuple[int, int, int] = (8, 8, 8)
) -> np.ndarray:
    """One image of the comparison ``mode`` of two arrays on one grid (k, j, i), both normalized to [0, 1]
    (:func:`normalized`): "checkerboard" (squares of ``square_voxels`` (k, j, i) alternating fixed and
    warped) or "difference" (|fixed - warped|). float32 in [0, 1]."""
    if fixed.shape != warped.shape:
        raise ValueError(f"the images must share a grid: {fixed.shape} vs {warped.shape}")
    a, b = normalized(fixed), normalized(warped)
    if mode == "difference":
        return np.abs(a - b)
    if mode == "checkerboard":
        k, j, i = (np.arange(n) // max(1, int(s)) for n, s in zip(fixed.shape, square_voxels))
        odd = (k[:, None, None] + j[None, :, None] + i[None, None, :]) % 2 == 1
        return np.where(odd, b, a).astype(np.float32)
    raise ValueError(f"unknown comparison '{mode}' (choose from checkerboard, difference)")


def sample_linear(array: np.ndarray, ijk: np.ndarray) -> float | None:
    """Trilinear value of ``array`` (k, j, i) at the continuous index ``ijk`` (i, j, k); None outside."""
    ijk = np.asarray(ijk, dtype=np.float64)
    shape_ijk = np.array(array.shape[::-1])
    if np.any(ijk < -0.5) or np.any(ijk > shape_ijk - 0.5):
        return None
    ijk = np.clip(ijk, 0.0, shape_ijk - 1)
    base = np.minimum(np.floor(ijk).astype(int), np.maximum(shape_ijk - 2, 0))
    frac = ijk - base
    value = 0.0
    for corner in np.ndindex(2, 2, 2):
        index = np.minimum(base + corner, shape_ijk - 1)
        weight = np.prod(np.where(corner, frac, 1.0 - frac))
        if weight:
            value += weight * float(array[index[2], index[1], index[0]])
    return value
