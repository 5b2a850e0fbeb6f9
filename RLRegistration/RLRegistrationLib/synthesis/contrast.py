"""Synthetic intensity images from brain label maps (the SynthMorph recipe).

Real label maps (FreeSurfer label values; labels >= 500 are extra-cerebral tissue classes of the SynthSeg
training maps, 0 is background) are turned into intensity images: one mean intensity per label (a fixed
T1-like or T2-like table, or random intensities for training), a small smooth per-label texture, a smooth
multiplicative bias field, a Gaussian blur (partial-volume look) and additive Gaussian noise. The result is
rescaled robustly to [0, 1].

Also here: the random smooth fields (``smooth_random_field``) the textures, bias fields and deformations
are made of. Crops, grids, deformations and validation pairs are in ``synthesis.pairs``.

Pure numpy + SimpleITK: nothing here imports ``slicer`` or ``torch``.

Array conventions: numpy arrays from SimpleITK are indexed (k, j, i) = (D, H, W); SimpleITK sizes and
indices are (i, j, k) = (x, y, z).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

#: Labels at or above this value are extra-cerebral (skull, scalp, fat, ...) in the SynthSeg label maps.
EXTRA_CEREBRAL_MIN_LABEL = 500

# Fallback intensities for brain labels missing from a table (grey-matter-like).
_DEFAULT_BRAIN = {"t1": 0.58, "t2": 0.55}


def _table(pairs: Mapping[tuple[int, ...], float]) -> Mapping[int, float]:
    """Expand ``{(label, label, ...): value}`` into a read-only ``{label: value}`` mapping."""
    out: dict[int, float] = {}
    for labels, value in pairs.items():
        for label in labels:
            out[label] = float(value)
    return MappingProxyType(out)


#: T1-weighted-like mean intensity per FreeSurfer label (max 1): WM bright, GM mid, CSF dark.
T1_LIKE: Mapping[int, float] = _table(
    {
        (0,): 0.0,  # background / air
        (2, 41): 0.88,  # cerebral white matter
        (7, 46): 0.85,  # cerebellum white matter
        (85,): 0.80,  # optic chiasm
        (3, 42): 0.58,  # cerebral cortex
        (8, 47): 0.60,  # cerebellum cortex
        (17, 53): 0.57,  # hippocampus
        (18, 54): 0.60,  # amygdala
        (26, 58): 0.63,  # accumbens
        (11, 50): 0.65,  # caudate
        (12, 51): 0.68,  # putamen
        (10, 49): 0.75,  # thalamus
        (13, 52): 0.78,  # pallidum
        (28, 60): 0.74,  # ventral DC
        (16,): 0.72,  # brainstem
        (25, 57): 0.55,  # lesion / WM hypointensity (mapped to WM by SynthSeg)
        (77,): 0.55,  # WM hypointensities
        (30, 62): 0.45,  # vessel
        (31, 63): 0.40,  # choroid plexus
        (4, 43): 0.18,  # lateral ventricle
        (5, 44): 0.18,  # inferior lateral ventricle
        (14,): 0.17,  # 3rd ventricle
        (15,): 0.17,  # 4th ventricle
        (72,): 0.17,  # 5th ventricle
        (24,): 0.15,  # CSF
        (136, 163): 0.22,  # SynthSeg sub-class of the lateral ventricles
        (137, 164): 0.20,  # SynthSeg sub-class of the inferior lateral ventricles
        # Extra-cerebral SynthSeg classes (not documented individually): varied, skull-like dark,
        # fat/scalp-like bright.
        (502,): 0.25,
        (506,): 0.65,
        (507,): 0.40,
        (508,): 0.10,
        (509,): 0.90,
        (511,): 0.55,
        (512,): 0.20,
        (514,): 0.35,
        (515,): 0.75,
        (516,): 0.05,
        (530,): 0.45,
    }
)

#: T2-weighted-like mean intensity per FreeSurfer label: roughly T1 inverted (CSF bright, WM dark).
T2_LIKE: Mapping[int, float] = _table(
    {
        (0,): 0.0,
        (2, 41): 0.35,
        (7, 46): 0.36,
        (85,): 0.40,
        (3, 42): 0.55,
        (8, 47): 0.55,
        (17, 53): 0.58,
        (18, 54): 0.56,
        (26, 58): 0.53,
        (11, 50): 0.55,
        (12, 51): 0.48,
        (10, 49): 0.45,
        (13, 52): 0.38,
        (28, 60): 0.42,
        (16,): 0.42,
        (25, 57): 0.80,
        (77,): 0.75,
        (30, 62): 0.30,
        (31, 63): 0.70,
        (4, 43): 0.95,
        (5, 44): 0.93,
        (14,): 0.95,
        (15,): 0.95,
        (72,): 0.95,
        (24,): 0.97,
        (136, 163): 0.90,
        (137, 164): 0.90,
        (502,): 0.60,
        (506,): 0.70,
        (507,): 0.30,
        (508,): 0.08,
        (509,): 0.80,
        (511,): 0.45,
        (512,): 0.15,
        (514,): 0.55,
        (515,): 0.65,
        (516,): 0.05,
        (530,): 0.85,
    }
)


# ----------------------------------------------------------------------------------------------- helpers


def as_rng(rng: np.random.Generator | int | Sequence[int] | None) -> np.random.Generator:
    """Return ``rng`` if it is a Generator, else a new Generator seeded with it (None: OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _as_int_labels(labels: np.ndarray) -> np.ndarray:
    """Validate a label array (integer-valued, non-negative) and return it as int64."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise ValueError("label map has non-integer values")
        labels = rounded
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"label map must be numeric, got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    if labels.size and labels.min() < 0:
        raise ValueError("label map has negative values")
    return labels


def _upsample_linear(field: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Separable (tri)linear upsampling of the trailing ``len(shape)`` axes, corners aligned.

    Exact multilinear interpolation of the control grid, written with numpy only.
    """
    out = np.asarray(field, dtype=np.float32)
    first = out.ndim - len(shape)
    for offset, size in enumerate(shape):
        axis = first + offset
        n = out.shape[axis]
        if n == size:
            continue
        if n == 1:
            out = np.repeat(out, size, axis=axis)
            continue
        pos = np.linspace(0.0, n - 1, int(size), dtype=np.float64)
        i0 = np.minimum(np.floor(pos).astype(np.int64), n - 2)
        w = (pos - i0).astype(np.float32)
        w_shape = [1] * out.ndim
        w_shape[axis] = int(size)
        w = w.reshape(w_shape)
        out = np.take(out, i0, axis=axis) * (1.0 - w) + np.take(out, i0 + 1, axis=axis) * w
    return out.astype(np.float32, copy=False)


def _control_points(size: int, spacing_vox: float) -> int:
    """Number of control points along an axis of ``size`` voxels for a control spacing in voxels."""
    if spacing_vox <= 0:
        raise ValueError("control spacing must be positive")
    return max(2, int(round((size - 1) / spacing_vox)) + 1)


def smooth_random_field(
    shape: Sequence[int], rng: np.random.Generator, spacing_vox: float, channels: int | None = None
) -> np.ndarray:
    """Standard-normal values on a coarse control grid, upsampled (trilinear) to ``shape``."""
    ctrl = tuple(_control_points(int(s), spacing_vox) for s in shape)
    lead = () if channels is None else (channels,)
    coarse = rng.standard_normal(lead + ctrl).astype(np.float32)
    return _upsample_linear(coarse, shape)


def _gaussian_blur(array: np.ndarray, sigma_vox: float) -> np.ndarray:
    """Gaussian blur with a standard deviation in voxels (SimpleITK DiscreteGaussian)."""
    if sigma_vox <= 0:
        return array.astype(np.float32, copy=False)
    image = sitk.GetImageFromArray(array.astype(np.float32, copy=False))
    blurred = sitk.DiscreteGaussian(
        image, variance=float(sigma_vox) ** 2, maximumKernelWidth=64, maximumError=0.01, useImageSpacing=False
    )
    return sitk.GetArrayFromImage(blurred).astype(np.float32, copy=False)


def _default_intensity(label: int, kind: str) -> float:
    """Intensity for a label missing from a fixed table: grey-ish for brain, seeded pseudo-random else."""
    if label == 0:
        return 0.0
    if label < EXTRA_CEREBRAL_MIN_LABEL:
        return _DEFAULT_BRAIN.get(kind, 0.55)
    salt = 1 if kind == "t2" else 0
    return float(np.random.default_rng([label, salt]).uniform(0.1, 0.9))


# --------------------------------------------------------------------------------------------- label maps


def load_label_map(path: str | Path) -> sitk.Image:
    """Read a label map and return it as a UInt16 image with the same geometry.

    The SynthSeg maps are stored as float32; values are rounded and checked to be integers in
    [0, 65535].
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map not found: {path}")
    image = sitk.ReadImage(str(path))
    array = _as_int_labels(sitk.GetArrayViewFromImage(image))
    if array.size and array.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"label values above 65535 in {path}")
    out = sitk.GetImageFromArray(array.astype(np.uint16))
    out.CopyInformation(image)
    return out


def brain_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the skull-stripped brain: labels > 0 and < 500 (extra-cerebral classes excluded)."""
    labels = np.asarray(labels)
    return (labels > 0) & (labels < EXTRA_CEREBRAL_MIN_LABEL)


def skull_strip_labels(labels: np.ndarray) -> np.ndarray:
    """Copy of ``labels`` with everything outside :func:`brain_mask` set to 0."""
    labels = np.asarray(labels)
    return np.where(brain_mask(labels), labels, np.zeros((), dtype=labels.dtype))


def contrast_table(
    kind: str,
    label_values: Iterable[int],
    rng: np.random.Generator | int | Sequence[int] | None = None,
) -> dict[int, float]:
    """Mean intensity per label for ``kind`` in {"t1", "t2", "random"}.

    * "t1" / "t2": :data:`T1_LIKE` / :data:`T2_LIKE`; labels missing from the table get a grey-matter-like
      value if they are brain labels (< 500), else a pseudo-random value seeded by the label itself (so it
      does not consume ``rng``).
    * "random": an independent uniform value in [0, 1] per label, drawn from ``rng`` in ascending label
      order (None: fresh OS entropy).

    Background (label 0) is always 0.
    """
    kind = kind.lower()
    labels = sorted({int(v) for v in label_values})
    if kind == "random":
        gen = as_rng(rng)
        values = gen.uniform(0.0, 1.0, size=len(labels))
        table = {label: float(v) for label, v in zip(labels, values)}
    elif kind in ("t1", "t2"):
        base = T1_LIKE if kind == "t1" else T2_LIKE
        table = {label: base.get(label, _default_intensity(label, kind)) for label in labels}
    else:
        raise ValueError(f"unknown contrast kind {kind!r}; expected 't1', 't2' or 'random'")
    if 0 in table:
        table[0] = 0.0
    return table


def _lookup(labels: np.ndarray, table: Mapping[int, float], default: float = 0.0) -> np.ndarray:
    """Map every voxel's label through ``table`` (labels are small non-negative ints)."""
    lut = np.full(int(labels.max()) + 1 if labels.size else 1, default, dtype=np.float32)
    for label, value in table.items():
        if 0 <= label < lut.size:
            lut[label] = value
    return lut[labels]


def _robust_rescale(image: np.ndarray, reference: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Divide by the ``percentile`` of the reference voxels and clip to [0, 1] (0 stays 0)."""
    values = image[reference]
    top = float(np.percentile(values, percentile)) if values.size else 0.0
    if top <= 0:
        top = float(image.max()) if image.size and image.max() > 0 else 1.0
    return np.clip(image / top, 0.0, 1.0).astype(np.float32)


# -------------------------------------------------------------------------------------------- synthesis


def synthesize_image(
    labels: np.ndarray,
    contrast: str | Mapping[int, float] = "t1",
    rng: np.random.Generator | int | Sequence[int] | None = None,
    noise_std: float = 0.02,
    bias_strength: float = 0.2,
    blur_sigma_vox: float = 0.5,
    skull_strip: bool = True,
    texture_std: float = 0.03,
    texture_spacing_vox: float = 4.0,
    bias_control_points: int = 4,
) -> np.ndarray:
    """Synthesize an intensity image (float32 in [0, 1], same shape) from a 3D label array.

    Steps, all random draws from ``rng`` (a Generator, or a seed; None: fresh OS entropy), so a given seed
    gives the same image:

    1. mean intensity per label from ``contrast`` ("t1", "t2", "random" or an explicit ``{label: value}``
       table; see :func:`contrast_table`);
    2. per-label texture: one smooth standard-normal field (control spacing ``texture_spacing_vox``)
       times a random per-label amplitude in [-texture_std, texture_std];
    3. multiplicative bias field ``exp(bias_strength * g)``, ``g`` standard normal on a
       ``bias_control_points``³ grid upsampled trilinearly;
    4. Gaussian blur of ``blur_sigma_vox`` voxels (partial-volume look);
    5. additive Gaussian noise of ``noise_std``;
    6. with ``skull_strip``: labels >= 500 are treated as background and voxels outside
       :func:`brain_mask` are set to 0;
    7. robust rescale: divided by the 99.5th percentile of the foreground, clipped to [0, 1].
    """
    labels = _as_int_labels(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D label array, got shape {labels.shape}")
    gen = as_rng(rng)
    if skull_strip:
        labels = np.where(brain_mask(labels), labels, 0)
    present = np.unique(labels)

    if isinstance(contrast, str):
        table = contrast_table(contrast, present, gen)
    else:
        table = {int(k): float(v) for k, v in contrast.items()}
        for label in present:
            table.setdefault(int(label), _default_intensity(int(label), "t1"))
    image = _lookup(labels, table)

    if texture_std > 0:
        amplitude = {int(label): float(a) for label, a in zip(present, gen.uniform(-1, 1, present.size))}
        amplitude[0] = 0.0
        texture = smooth_random_field(labels.shape, gen, texture_spacing_vox)
        image += texture_std * _lookup(labels, amplitude) * texture
        del texture

    if bias_strength > 0:
        ctrl = (max(2, int(bias_control_points)),) * 3
        coarse = gen.standard_normal(ctrl).astype(np.float32)
        image *= np.exp(bias_strength * _upsample_linear(coarse, labels.shape))

    image = _gaussian_blur(image, blur_sigma_vox)
    if noise_std > 0:
        image += noise_std * gen.standard_normal(labels.shape, dtype=np.float32)
    image = np.maximum(image, 0.0)

    foreground = labels > 0
    if skull_strip:
        image[~foreground] = 0.0
    return _robust_rescale(image, foreground)


def synthesize_volume(label_image: sitk.Image, **kwargs) -> sitk.Image:
    """:func:`synthesize_image` on a SimpleITK label image; returns a float32 image with its geometry.

    Keyword arguments are passed to :func:`synthesize_image` (``contrast``, ``rng``, ``noise_std``, ...).
    """
    labels = sitk.GetArrayViewFromImage(label_image)
    image = sitk.GetImageFromArray(synthesize_image(labels, **kwargs))
    image.CopyInformation(label_image)
    return image
