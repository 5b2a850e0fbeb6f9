"""Quality-control picture of a registration: slices of fixed / moving / warped / checkerboard /
displacement magnitude / local volume change det J / weight map, and similarity (and Dice) per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..fields.geometry import Grid
from ..fields.metrics import jacobian_of_arrays
from ..io.imaging import intensity_window, normalize_intensity, resample_to_grid
from ..registration.session import RegistrationResult
from .overlay_display import jacobian_colors, jacobian_window


def checkerboard(a: np.ndarray, b: np.ndarray, squares: int = 8) -> np.ndarray:
    """2D checkerboard of two equally shaped slices."""
    rows = (np.arange(a.shape[0]) * squares // max(a.shape[0], 1)) % 2
    cols = (np.arange(a.shape[1]) * squares // max(a.shape[1], 1)) % 2
    mask = (rows[:, None] + cols[None, :]) % 2 == 0
    return np.where(mask, a, b)


PLANES = ("axial", "coronal", "sagittal")
#: the panels with a colour bar
_COLOUR_BAR_PANELS = ("|u| mm", "det J", "weight map λ")


def jacobian_on_fixed_grid(result: RegistrationResult, grid: Grid) -> np.ndarray:
    """det J (local volume change of ``x + u(x)``, 1 = none) of the result's displacement, computed on its
    output grid in physical space (``fields.metrics``) and resampled (linear) to ``grid``: (k, j, i)."""
    det = jacobian_of_arrays(result.field_mm, result.output_grid.spacing, result.output_grid.direction_matrix)
    if result.output_grid != grid:
        det = sitk.GetArrayFromImage(
            resample_to_grid(_as_image(det, result.output_grid), grid, antialias=False, default_value=1.0)
        )
    return np.asarray(det, dtype=np.float32)


def _middle_slices(volume: np.ndarray, grid: Grid) -> list[np.ndarray]:
    """Axial, coronal and sagittal middle slices of a (k, j, i) array on ``grid``, anterior/superior up.

    The volume is first reoriented so that its axes run along L, P, S, whatever the grid's direction.
    """
    oriented = sitk.GetArrayFromImage(sitk.DICOMOrient(_as_image(volume, grid), "LPS"))  # (S, P, L)
    k, j, i = (n // 2 for n in oriented.shape)
    return [oriented[k], np.flipud(oriented[:, j, :]), np.flipud(oriented[:, :, i])]


def write_qc_picture(
    path: str | Path,
    fixed: sitk.Image,
    moving: sitk.Image,
    result: RegistrationResult,
    title: str = "RLRegistration",
) -> Path:
    """Save a PNG summarizing the registration (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    grid = Grid.from_image(fixed)
    window_f, window_m = intensity_window(fixed), intensity_window(moving)
    fixed_a = normalize_intensity(sitk.GetArrayFromImage(fixed), window_f)
    before = normalize_intensity(
        sitk.GetArrayFromImage(resample_to_grid(moving, grid, result.affine, antialias=False)), window_m
    )
    after = normalize_intensity(sitk.GetArrayFromImage(result.warp_image(moving)), window_m)
    u = result.field_mm
    magnitude = np.linalg.norm(u, axis=-1)
    if result.output_grid != grid:
        magnitude = sitk.GetArrayFromImage(
            resample_to_grid(_as_image(magnitude, result.output_grid), grid, antialias=False)
        )
    columns = [
        ("fixed", fixed_a, "gray", (0, 1)),
        ("moving (affine)", before, "gray", (0, 1)),
        ("warped", after, "gray", (0, 1)),
        ("checkerboard", None, "gray", (0, 1)),
        ("|u| mm", magnitude, "magma", (0, max(float(magnitude.max()), 1e-3))),
    ]
    # det J in the overlays' diverging colours around 1 and their window (folding in the signal colour)
    det = jacobian_on_fixed_grid(result, grid)
    det_window = jacobian_window(det) or (0.95, 1.05)
    columns.append(("det J", det, ListedColormap(jacobian_colors(det_window)), det_window))
    if result.weight_map is not None:
        lam = sitk.GetArrayFromImage(resample_to_grid(result.weight_map, grid, antialias=False))
        columns.append(("weight map λ", lam, "viridis", (0, 1)))
    figure, axes = plt.subplots(4, len(columns), figsize=(2.6 * len(columns), 10.5))
    for c, (name, volume, cmap, limits) in enumerate(columns):
        slices = (
            [checkerboard(a, b) for a, b in zip(_middle_slices(fixed_a, grid), _middle_slices(after, grid))]
            if volume is None
            else _middle_slices(volume, grid)
        )
        for r, plane in enumerate(slices):
            ax = axes[r, c]
            image = ax.imshow(plane, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name, fontsize=10)
            if c == 0:
                ax.text(-0.08, 0.5, PLANES[r], transform=ax.transAxes, rotation=90, va="center", ha="right")
        if name in _COLOUR_BAR_PANELS:
            figure.colorbar(image, ax=axes[:3, c], fraction=0.04, shrink=0.6)
    for ax in axes[3]:
        ax.remove()
    curve = figure.add_subplot(4, 1, 4)
    steps = [r.index for r in result.reports]
    curve.plot(steps, [r.similarity for r in result.reports], "o-", label="local NCC (working grid)")
    if result.reports and result.reports[0].dice is not None:
        curve.plot(steps, [r.dice for r in result.reports], "s-", label="mean Dice")
    curve.set_xlabel("step (0 = after affine)")
    curve.grid(alpha=0.3)
    curve.legend(loc="lower right")
    figure.suptitle(title)
    figure.savefig(str(path), dpi=80)
    plt.close(figure)
    return Path(path)


def _as_image(array: np.ndarray, grid: Grid) -> sitk.Image:
    return grid.apply_to(sitk.GetImageFromArray(np.asarray(array, dtype=np.float32)))
