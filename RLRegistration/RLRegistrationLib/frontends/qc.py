"""Quality-control picture of a registration: slices of fixed / moving / warped / checkerboard /
displacement magnitude / local volume change det J / weight map, and similarity (and Dice) per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..fields.geometry import Grid
from ..fields.metrics import jacobian_of_arrays
from ..io.imaging import intensity_window, normalize_intensity, resample_to_grid
from ..registration.result import RegistrationResult
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


def jacobian_on_output_grid(result: RegistrationResult) -> np.ndarray:
    """det J (local volume change of ``x + u(x)``, 1 = none) of the result's displacement on its output
    grid, in physical space (``fields.metrics``): (k, j, i) float32."""
    grid = result.output_grid
    return np.asarray(jacobian_of_arrays(result.field_mm, grid.spacing, grid.direction_matrix), np.float32)


def jacobian_on_fixed_grid(result: RegistrationResult, grid: Grid) -> np.ndarray:
    """det J of the result's displacement (:func:`jacobian_on_output_grid`) resampled (linear) to
    ``grid``: (k, j, i)."""
    det = jacobian_on_output_grid(result)
    if result.output_grid != grid:
        det = sitk.GetArrayFromImage(
            resample_to_grid(_as_image(det, result.output_grid), grid, antialias=False, default_value=1.0)
        )
    return np.asarray(det, dtype=np.float32)


class MiddleSlices:
    """The axial, coronal and sagittal middle slices of a grid, anterior/superior up, whatever the grid's
    direction (its axes reoriented to run along L, P, S). Any image (or one seen through a transform) is
    resampled onto just these three planes, so a picture of a large volume costs three slices of memory."""

    def __init__(self, grid: Grid) -> None:
        # the geometry only: a one-byte image is reoriented, never the data
        oriented = sitk.DICOMOrient(grid.reference_image(sitk.sitkUInt8), "LPS")  # array (S, P, L)
        i, j, k = (n // 2 for n in oriented.GetSize())
        self.planes = (oriented[:, :, k : k + 1], oriented[:, j : j + 1, :], oriented[i : i + 1, :, :])

    def of(
        self, image: sitk.Image, transform: sitk.Transform | None = None, default_value: float = 0.0
    ) -> list[np.ndarray]:
        """``image`` (through ``transform``: plane point -> image point; linear) on the three planes."""
        identity = sitk.Transform(3, sitk.sitkIdentity)
        arrays = [
            sitk.GetArrayFromImage(
                sitk.Resample(
                    image, plane, transform or identity, sitk.sitkLinear, default_value, sitk.sitkFloat32
                )
            )
            for plane in self.planes
        ]
        return [arrays[0][0], np.flipud(arrays[1][:, 0, :]), np.flipud(arrays[2][:, :, 0])]


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

    slices = MiddleSlices(Grid.from_image(fixed))
    window_f, window_m = intensity_window(fixed), intensity_window(moving)
    fixed_a = [normalize_intensity(plane, window_f) for plane in slices.of(fixed)]
    before = [normalize_intensity(plane, window_m) for plane in slices.of(moving, result.affine)]
    after = [normalize_intensity(plane, window_m) for plane in slices.of(moving, result.transform)]
    magnitude = _as_image(np.linalg.norm(result.field_mm, axis=-1), result.output_grid)
    top = max(float(sitk.GetArrayViewFromImage(magnitude).max()), 1e-3)
    # det J in the overlays' diverging colours around 1 and their window (folding in the signal colour)
    det = jacobian_on_output_grid(result)
    det_window = jacobian_window(det) or (0.95, 1.05)
    det_planes = slices.of(_as_image(det, result.output_grid), default_value=1.0)
    del det
    columns = [
        ("fixed", fixed_a, "gray", (0, 1)),
        ("moving (affine)", before, "gray", (0, 1)),
        ("warped", after, "gray", (0, 1)),
        ("checkerboard", [checkerboard(a, b) for a, b in zip(fixed_a, after)], "gray", (0, 1)),
        ("|u| mm", slices.of(magnitude), "magma", (0, top)),
        ("det J", det_planes, ListedColormap(jacobian_colors(det_window)), det_window),
    ]
    if result.weight_map is not None:
        columns.append(("weight map λ", slices.of(result.weight_map), "viridis", (0, 1)))
    figure, axes = plt.subplots(4, len(columns), figsize=(2.6 * len(columns), 10.5))
    for c, (name, planes, cmap, limits) in enumerate(columns):
        for r, plane in enumerate(planes):
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
