"""The one real MRI of the shared data as one side of a benchmark pair (``accuracy.py --pairs vxm:11``).

``../shared/data/vxm/test_scan.npz`` is a real skull-stripped T1 scan (1 mm, 160 x 192 x 224, intensities in
[0, 1]) with its FreeSurfer segmentation, stored without a header. No model or setting of this project was
trained or chosen on it, so a pair of it and a synthetic T1-like subject checks a learned policy against
its peers on a scan it has never seen (the other side, a validation subject, is synthetic as usual).

Its orientation is read from its own segmentation, not assumed: the array axis along which the left and
right cerebral white matter (labels 2, 41) lie apart is left-right, the one along which the lateral
ventricles (4, 43) lie above the brainstem (16) is inferior-superior, the remaining one is
anterior-posterior, signed by the cerebellum cortex (8) lying behind the caudate (11). The image gets the
direction matrix that puts those axes where they belong in LPS, centred on the origin; a mirrored result
(determinant -1) is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

LPS = {"left": (1.0, 0.0, 0.0), "posterior": (0.0, 1.0, 0.0), "superior": (0.0, 0.0, 1.0)}


def direction_from_labels(seg: np.ndarray) -> tuple[float, ...]:
    """SimpleITK direction (row-major 3 x 3) of an image whose array (numpy axes a0, a1, a2) is ``seg``,
    from where its FreeSurfer labels lie (see the module docstring)."""

    def centre(*labels: int) -> np.ndarray:
        return np.argwhere(np.isin(seg, labels)).mean(axis=0)

    towards = {
        "left": centre(2) - centre(41),
        "superior": centre(4, 43) - centre(16),
        "posterior": centre(8) - centre(11),
    }
    free, columns = [0, 1, 2], np.zeros((3, 3))
    for name in ("left", "superior", "posterior"):
        axis = max(free, key=lambda a: abs(towards[name][a]))
        free.remove(axis)
        # numpy axis a is SimpleITK index dimension 2 - a; its column is where the index increases
        columns[:, 2 - axis] = np.sign(towards[name][axis]) * np.asarray(LPS[name])
    if np.linalg.det(columns) < 0:
        raise ValueError("the segmentation gives a mirrored orientation: refusing to guess")
    return tuple(columns.ravel())


def vxm_scan(shared_dir: str | Path) -> tuple[sitk.Image, sitk.Image]:
    """(image float32 in [0, 1], label map UInt16) of the real scan, oriented and centred (1 mm)."""
    data = np.load(Path(shared_dir) / "vxm" / "test_scan.npz")
    seg = np.rint(data["seg"]).astype(np.uint16)
    direction = direction_from_labels(seg)
    out = []
    for array in (data["vol"].astype(np.float32), seg):
        image = sitk.GetImageFromArray(array)
        image.SetDirection(direction)
        centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
        image.SetOrigin([-c for c in centre])
        out.append(image)
    return out[0], out[1]


def real_scan_pair(fixed: str, moving: str, shared_dir: str | Path, contrast_moving: str, seed: int):
    """``(fixed, moving, fixed_labels, moving_labels)`` of a pair with ``vxm`` on one side (or both) and a
    SynthSeg subject on the other, synthesized as ``synthesis.pairs.validation_pair`` does (T1-like as the
    fixed image, ``contrast_moving`` as the moving one)."""
    from RLRegistrationLib.synthesis.pairs import validation_image

    sides = []
    for role, (name, contrast) in enumerate(((fixed, "t1"), (moving, contrast_moving))):
        if name == "vxm":
            sides.append(vxm_scan(shared_dir))
        else:
            sides.append(validation_image(int(name), shared_dir, contrast, seed, role))
    (fixed_image, fixed_labels), (moving_image, moving_labels) = sides
    return fixed_image, moving_image, fixed_labels, moving_labels
