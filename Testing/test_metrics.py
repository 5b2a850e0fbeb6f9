"""Tests of RLRegistrationLib.metrics: Dice, HD95, Jacobian statistics and whole-transform evaluation."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from RLRegistrationLib.fields import metrics


def test_evaluation_labels():
    labels = metrics.evaluation_labels()
    assert len(labels) == 30
    assert all(isinstance(v, int) and v > 0 for v in labels)
    assert len(set(labels)) == 30
    assert {2, 3, 4, 17, 41, 53, 63} <= set(labels)


def test_dice_per_label_known_arrays():
    fixed = np.array([1, 1, 1, 1, 2, 2, 0, 0, 0, 0], dtype=np.int16).reshape(1, 2, 5)
    warped = np.array([1, 1, 0, 0, 2, 2, 2, 3, 0, 0], dtype=np.int16).reshape(1, 2, 5)
    scores = metrics.dice_per_label(fixed, warped)
    assert set(scores) == {1, 2}  # only labels present in both by default
    assert scores[1] == pytest.approx(2 * 2 / (4 + 2))
    assert scores[2] == pytest.approx(2 * 2 / (2 + 3))
    explicit = metrics.dice_per_label(fixed, warped, labels=[1, 3, 5])
    assert explicit == pytest.approx({1: 2 / 3, 3: 0.0})  # 5 absent from both: skipped
    assert metrics.mean_dice(fixed, warped) == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics.dice_per_label(fixed, fixed) == {1: 1.0, 2: 1.0}
    assert np.isnan(metrics.mean_dice(fixed, warped, labels=[7]))


HD95_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import SimpleITK as sitk
    from RLRegistrationLib import metrics

    SPACING = (0.7, 1.3, 2.5)
    DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z: distances unchanged

    def image(mask):
        im = sitk.GetImageFromArray(mask.astype(np.uint8))
        im.SetSpacing(SPACING)
        im.SetDirection(DIRECTION)
        im.SetOrigin((12.0, -7.0, 30.0))
        return im

    def contour(mask):
        inner = mask.copy()
        for axis in range(3):
            for step in (1, -1):
                inner &= np.roll(mask, step, axis=axis)
        return np.argwhere(mask & ~inner) * np.array(SPACING[::-1])

    def brute_hd95(a, b):
        ca, cb = contour(a), contour(b)
        d = np.sqrt(((ca[:, None, :] - cb[None, :, :]) ** 2).sum(-1))
        return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))

    shape = (20, 24, 28)
    cases = {}
    a = np.zeros(shape, bool); b = a.copy()
    a[5, 6:14, 8:18] = True; b[8, 6:14, 8:18] = True          # plates 3 slices apart along k
    cases["plates_k"] = (a, b, 3 * 2.5)
    a = np.zeros(shape, bool); b = a.copy()
    a[4:12, 6:14, 10] = True; b[4:12, 6:14, 14] = True        # plates 4 columns apart along i
    cases["plates_i"] = (a, b, 4 * 0.7)
    a = np.zeros(shape, bool); b = a.copy()
    a[5:11, 6:12, 8:18] = True; b[5:11, 8:14, 8:18] = True    # cubes offset by 2 rows along j
    cases["cubes_j"] = (a, b, brute_hd95(a, b))
    cases["identical"] = (a, a, 0.0)
    out = {}
    for name, (a, b, expected) in cases.items():
        got = [metrics.hd95_per_label(image(a), image(b))[1] for _ in range(3)]
        out[name] = {"got": got, "expected": expected}
    print(json.dumps(out))
    """
)


def test_hd95_known_offsets_anisotropic(run_isolated):
    # run in a fresh interpreter: the use-after-free can crash the process
    result = run_isolated(HD95_SCRIPT)
    assert result.returncode == 0, result.stderr[-2000:]
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values["cubes_j"]["expected"] > 1.3  # the brute-force reference is non-trivial
    for name, case in values.items():
        np.testing.assert_allclose(case["got"], case["expected"], atol=1e-4, err_msg=name)


def test_jacobian_stats_crafted():
    det = np.array([1.0, 1.0, np.e, 1 / np.e])  # log det = 0, 0, 1, -1
    stats = metrics.jacobian_stats(det)
    assert stats["folding_percent"] == 0.0
    assert stats["sdlogj"] == pytest.approx(np.sqrt(0.5))
    assert stats["jacobian_min"] == pytest.approx(1 / np.e)

    det = np.array([[-0.5, 0.0], [np.e, 1.0]])
    stats = metrics.jacobian_stats(det)
    assert stats["folding_percent"] == pytest.approx(50.0)
    assert stats["jacobian_min"] == -0.5
    logs = np.array([np.log(1e-9), np.log(1e-9), 1.0, 0.0])  # non-positive values clipped to 1e-9
    assert stats["sdlogj"] == pytest.approx(float(logs.std()))

    mask = np.array([[False, False], [True, True]])
    masked = metrics.jacobian_stats(det, mask)
    assert masked["folding_percent"] == 0.0
    assert masked["sdlogj"] == pytest.approx(0.5)
    assert masked["jacobian_min"] == 1.0


def test_jacobian_of_field_affine_on_oblique_grid(oblique_grid, rotation_matrix):
    a = rotation_matrix(8, -5, 12) @ np.array([[1.2, 0.1, 0.0], [0.0, 0.9, 0.05], [0.1, 0.0, 1.1]])
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(a.ravel()))
    affine.SetCenter((-20.0, 15.0, 60.0))
    affine.SetTranslation((1.0, 2.0, -1.0))
    g = oblique_grid
    field = sitk.TransformToDisplacementField(
        affine, sitk.sitkVectorFloat64, g.size, g.origin, g.spacing, g.direction
    )
    det = metrics.jacobian_of_field(field)
    assert det.shape == g.shape
    np.testing.assert_allclose(det, np.linalg.det(a), atol=1e-4)
    assert abs(np.linalg.det(a) - 1.0) > 0.15


def _label_volume(shape) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int16)
    labels[2:6, 2:7, 1:5] = 2
    labels[2:6, 2:7, 5:9] = 3  # i <= 8: still inside the grid after a shift of 2 along +i
    labels[5:7, 3:9, 3:8] = 17
    return labels


def test_evaluate_transform_identity_and_translation(oblique_grid, image_on_grid):
    g = oblique_grid
    fixed_array = _label_volume(g.shape)
    fixed = image_on_grid(fixed_array, g)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    zero_field = sitk.TransformToDisplacementField(
        identity, sitk.sitkVectorFloat64, g.size, g.origin, g.spacing, g.direction
    )
    report = metrics.evaluate_transform(fixed, fixed, identity, displacement=zero_field, with_hd95=False)
    assert report["dice"] == 1.0
    assert report["dice_per_label"] == {2: 1.0, 3: 1.0, 17: 1.0}
    assert report["folding_percent"] == 0.0
    assert report["sdlogj"] == pytest.approx(0.0, abs=1e-6)
    assert report["jacobian_min"] == pytest.approx(1.0, abs=1e-6)
    # moving = fixed moved by 2 voxels along +i; T(x) = x + offset maps fixed points onto moving points
    moving_array = np.zeros_like(fixed_array)
    moving_array[..., 2:] = fixed_array[..., :-2]
    moving = image_on_grid(moving_array, g)
    offset = g.index_to_physical_matrix @ np.array([2.0, 0.0, 0.0])
    forward = sitk.TranslationTransform(3, tuple(offset))
    assert metrics.evaluate_transform(fixed, moving, forward, with_hd95=False)["dice"] == pytest.approx(1.0)
    backward = sitk.TranslationTransform(3, tuple(-offset))
    assert metrics.evaluate_transform(fixed, moving, backward, with_hd95=False)["dice"] < 0.6
    restricted = metrics.evaluate_transform(fixed, moving, forward, labels=[2, 3], with_hd95=False)
    assert set(restricted["dice_per_label"]) == {2, 3}


def test_resample_labels_keeps_integer_type(oblique_grid, image_on_grid):
    labels = image_on_grid(_label_volume(oblique_grid.shape), oblique_grid)
    out = metrics.resample_labels(labels, labels, sitk.Transform(3, sitk.sitkIdentity))
    assert out.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), _label_volume(oblique_grid.shape))


def test_auroc_known_rankings():
    positive = np.array([True, True, False, False, False])
    assert metrics.auroc(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), positive) == 1.0
    assert metrics.auroc(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), positive) == 0.0
    assert metrics.auroc(np.ones(5), positive) == 0.5  # all tied: chance
    # one positive (3.0) above 2 of the 3 negatives, the other (1.0) tied with one: (3 + 0.5) / 6
    assert metrics.auroc(np.array([3.0, 1.0, 4.0, 1.0, 0.0]), positive) == pytest.approx(3.5 / 6)
    assert np.isnan(metrics.auroc(np.ones(3), np.zeros(3, dtype=bool)))


def test_auroc_matches_pairwise_count_and_ignores_scale():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=200).astype(float)  # many ties
    positive = rng.random(200) < 0.1 + 0.15 * scores  # 0.1 at score 0 to 0.85 at score 5
    pos, neg = scores[positive], scores[~positive]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        pos.size * neg.size
    )
    assert metrics.auroc(scores, positive) == pytest.approx(pairwise)
    assert metrics.auroc(3.0 * scores + 7.0, positive) == pytest.approx(pairwise)
    assert metrics.auroc(scores, positive) > 0.5  # the positives lean to high scores
