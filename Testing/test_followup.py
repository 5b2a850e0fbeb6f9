"""Same-subject follow-up pairs (``followup``) on a small synthetic whole-head label map: the fixed labels
are the moving ones seen through the true transform, the follow-up has less neck, the motion is small."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from RLRegistrationLib.synthesis.followup import follow_up_from_labels


def _head(size=40):
    """A 'head' (label 530 shell) around a 'brain' (labels 2 and 3), SynthSeg-like direction (j inferior)."""
    k, j, i = np.indices((size,) * 3)
    r = np.sqrt((k - size / 2) ** 2 + (j - size / 2) ** 2 + (i - size / 2) ** 2)
    labels = (
        np.where(r < 18, 530, 0) + np.where(r < 14, 2 - 530, 0) + np.where((r < 14) & (i < size / 2), 1, 0)
    )
    image = sitk.GetImageFromArray(labels.astype(np.uint16))
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, -1.0, 0.0))
    image.SetOrigin((-40.0, 40.0, 40.0))
    return image


def test_follow_up_pair_is_consistent_with_its_true_transform():
    pair = follow_up_from_labels(_head(), seed=3, spacing_mm=2.0, neck_cut_mm=6.0)
    assert pair.fixed.GetSize()[1] == pair.moving.GetSize()[1] - 3  # 6 mm less at the inferior end
    assert pair.fixed.GetOrigin() == pair.moving.GetOrigin()  # j increases downwards: the cut is at its end
    resampled = sitk.Resample(pair.moving_labels, pair.fixed_labels, pair.truth, sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(pair.fixed_labels)
    )
    assert set(np.unique(sitk.GetArrayViewFromImage(pair.fixed_labels))) == {0, 2, 3, 530}
    centre = pair.fixed.TransformContinuousIndexToPhysicalPoint([19.5, 19.5, 19.5])
    assert 0.5 < np.linalg.norm(np.subtract(pair.truth.TransformPoint(centre), centre)) < 15.0
    for image in (pair.fixed, pair.moving):
        array = sitk.GetArrayViewFromImage(image)
        assert array.dtype == np.float32 and array.max() > 0.5  # whole head: the shell is not stripped


def test_follow_up_pair_is_reproducible():
    first, second = (follow_up_from_labels(_head(), seed=1, spacing_mm=2.0) for _ in range(2))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first.fixed), sitk.GetArrayFromImage(second.fixed))
