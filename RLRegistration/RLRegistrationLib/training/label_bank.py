"""Label maps of the SynthSeg subjects as training reads them (``LabelBank``): each read once from
``<shared>/synthseg/training_seg_XX.nii.gz`` (FreeSurfer values), skull-stripped, downsampled (nearest) to
the training spacing, optionally aligned affinely to a reference subject, and cropped around the brain to
the training grid plus a margin. Arrays are (D, H, W) = (k, j, i), uint16; a missing file is an
``InputError`` naming it and the shared data folder."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.imaging import affine_prealign
from ..synthesis.contrast import brain_mask, load_label_map, skull_strip_labels, synthesize_volume
from ..synthesis.pairs import downsample_labels

# labels that run down the spinal canal: ignored when centring a crop (as synthesis.validation_pair does)
_CENTRE_EXCLUDE = (16, 24)


def subject_path(shared_dir: str | Path, subject: int) -> Path:
    """``<shared_dir>/synthseg/training_seg_XX.nii.gz`` (or ``<shared_dir>/training_seg_XX.nii.gz``)."""
    shared_dir = Path(shared_dir)
    folder = shared_dir / "synthseg" if (shared_dir / "synthseg").is_dir() else shared_dir
    return folder / f"training_seg_{int(subject):02d}.nii.gz"


def crop_around(array: np.ndarray, centre: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """Crop (zero-pad where needed) ``array`` to ``shape`` centred on the index ``centre`` (same axes)."""
    out = np.zeros(tuple(int(s) for s in shape), dtype=array.dtype)
    src, dst = [], []
    for c, n, size in zip(centre, array.shape, shape):
        start = int(round(c - (size - 1) / 2.0))
        lo, hi = max(start, 0), min(start + size, n)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - start, lo - start + max(0, hi - lo)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def brain_centre(labels: np.ndarray) -> np.ndarray:
    """Centre (k, j, i) of the brain's bounding box, ignoring brainstem and CSF (spinal canal)."""
    core = brain_mask(labels) & ~np.isin(labels, _CENTRE_EXCLUDE)
    idx = np.argwhere(core if core.any() else brain_mask(labels))
    if idx.size == 0:
        return (np.asarray(labels.shape) - 1) / 2.0
    return (idx.min(axis=0) + idx.max(axis=0)) / 2.0


class LabelBank:
    """Skull-stripped label maps (uint16 arrays (k, j, i)) on the training grid plus ``margin`` voxels."""

    def __init__(self, arrays: list[np.ndarray], names: list[str] | None = None):
        self.arrays = arrays
        self.names = names or [f"subject{i}" for i in range(len(arrays))]

    def __len__(self) -> int:
        return len(self.arrays)

    @classmethod
    def from_arrays(cls, label_maps: list[np.ndarray], shape: Sequence[int], margin: int = 0) -> LabelBank:
        """Label maps already at the training spacing: skull-strip, crop around the brain."""
        padded = [int(s) + 2 * margin for s in shape]
        arrays = []
        for labels in label_maps:
            labels = skull_strip_labels(np.asarray(labels)).astype(np.uint16)
            arrays.append(crop_around(labels, brain_centre(labels), padded))
        return cls(arrays)

    @classmethod
    def from_shared(
        cls,
        shared_dir: str | Path,
        subjects: Sequence[int],
        spacing_mm: float,
        shape,
        margin: int = 0,
        reference: int | None = None,
    ) -> LabelBank:
        """Read SynthSeg subjects, downsample (nearest) to ``spacing_mm``, optionally align each one
        affinely to subject ``reference``, crop around the brain; clear error when the data is absent."""
        images, names = [], []
        for subject in subjects:
            images.append(read_subject(shared_dir, subject, spacing_mm))
            names.append(f"training_seg_{int(subject):02d}")
        if reference is not None:
            target = read_subject(shared_dir, reference, spacing_mm)
            images = [align_labels(target, image) for image in images]
        bank = cls.from_arrays([sitk.GetArrayFromImage(image) for image in images], shape, margin)
        bank.names = names
        return bank


def required_subject(shared_dir: str | Path, subject: int) -> Path:
    """``subject_path``, or InputError naming it and the shared data folder when it is absent."""
    path = subject_path(shared_dir, subject)
    if not path.is_file():
        raise InputError(
            f"training data not found: {path}. Training needs the SynthSeg label maps of the shared data "
            "folder (../shared/data/synthseg/training_seg_XX.nii.gz); pass --shared-dir pointing at "
            "../shared/data"
        )
    return path


def read_subject(shared_dir: str | Path, subject: int, spacing_mm: float) -> sitk.Image:
    """Label map of a SynthSeg subject, skull-stripped, at ``spacing_mm`` (nearest)."""
    image = downsample_labels(load_label_map(required_subject(shared_dir, subject)), spacing_mm)
    stripped = sitk.GetImageFromArray(skull_strip_labels(sitk.GetArrayFromImage(image)))
    stripped.CopyInformation(image)
    return stripped


def align_labels(reference: sitk.Image, labels: sitk.Image) -> sitk.Image:
    """``labels`` resampled (nearest) on ``reference``'s grid through an affine fitted between T1-like
    syntheses of both (``imaging.affine_prealign``, Mattes MI): the pre-alignment the shipped models were
    trained with. The session now pre-aligns with ``prealign.prealign`` (rigid then affine down to 1 mm);
    switching the training data to it means retraining the models."""
    fixed = synthesize_volume(reference, contrast="t1", rng=0)
    moving = synthesize_volume(labels, contrast="t1", rng=1)
    transform = affine_prealign(fixed, moving, seed=0)
    return sitk.Resample(labels, reference, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
