"""The real scan's orientation in ``benchmarks/real_scan.py`` is read from its segmentation: a label map in
LPS order, stored with its axes permuted and flipped in any way, gets the direction that puts every label
back where it was in physical space; a mirrored map is refused."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from real_scan import direction_from_labels  # noqa: E402

#: label -> centre (x, y, z) in LPS voxels of a 20 x 24 x 28 map: left / right white matter, ventricles above
#: the brainstem, cerebellum behind the caudate
BLOBS = {
    2: (14, 12, 16),
    41: (5, 12, 16),
    4: (11, 11, 20),
    43: (8, 11, 20),
    16: (10, 14, 6),
    8: (10, 20, 8),
    11: (10, 6, 17),
}


def lps_label_map() -> np.ndarray:
    """numpy array (x, y, z): axis 0 towards Left, 1 towards Posterior, 2 towards Superior."""
    labels = np.zeros((20, 24, 28), dtype=np.uint16)
    for value, (x, y, z) in BLOBS.items():
        labels[x - 1 : x + 2, y - 1 : y + 2, z - 1 : z + 2] = value
    return labels


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", [f for n in range(4) for f in itertools.combinations(range(3), n)])
def test_every_stored_orientation_is_put_back(order, flips):
    reference = lps_label_map()
    stored = np.transpose(reference, order)
    for axis in flips:
        stored = np.flip(stored, axis)
    # numpy's axis order is ITK's index order reversed (an odd permutation): a stored array is a real
    # (unmirrored) head when its own permutation and flips are odd together
    if np.linalg.det(np.eye(3)[list(order)]) * (-1) ** len(flips) > 0:
        with pytest.raises(ValueError, match="mirrored"):
            direction_from_labels(stored)
        return
    image = sitk.GetImageFromArray(np.ascontiguousarray(stored))
    image.SetDirection(direction_from_labels(stored))

    def physical(value: int) -> np.ndarray:
        centre = np.argwhere(stored == value).mean(axis=0)[::-1]  # SimpleITK index (i, j, k)
        return np.asarray(image.TransformContinuousIndexToPhysicalPoint(centre.tolist()))

    # the physical offsets between the labels are those of the LPS map, whatever the storage
    for value, lps in BLOBS.items():
        expected = np.subtract(lps, BLOBS[2])
        assert np.allclose(physical(value) - physical(2), expected), (value, order, flips)
