"""Session behaviour on a small oblique, anisotropic phantom with a known smooth deformation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.fields.geometry import Grid
from RLRegistrationLib.fields.metrics import evaluate_transform, jacobian_of_field, jacobian_stats
from RLRegistrationLib.io.export import write_transform
from RLRegistrationLib.io.imaging import intensity_window, normalize_intensity
from RLRegistrationLib.policies.registry import make_policy
from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

ROTATION = (0.9800666, -0.1986693, 0.0, 0.1986693, 0.9800666, 0.0, 0.0, 0.0, 1.0)  # 11.5° about z


def _phantom(seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """Ellipsoid 'tissues' (labels 1-4) with smooth intensities on an oblique, anisotropic grid."""
    shape = (36, 44, 40)  # (k, j, i)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    labels = np.zeros(shape, np.uint8)
    labels[(i / 0.85) ** 2 + (j / 0.8) ** 2 + (k / 0.8) ** 2 < 1] = 1
    labels[(i / 0.55) ** 2 + (j / 0.5) ** 2 + (k / 0.55) ** 2 < 1] = 2
    labels[((i - 0.2) / 0.22) ** 2 + ((j + 0.1) / 0.3) ** 2 + (k / 0.3) ** 2 < 1] = 3
    labels[((i + 0.3) / 0.2) ** 2 + ((j - 0.25) / 0.2) ** 2 + ((k + 0.1) / 0.25) ** 2 < 1] = 4
    values = np.array([0.0, 0.35, 0.7, 1.0, 0.15], np.float32)
    image = sitk.GetImageFromArray(values[labels])
    image = sitk.SmoothingRecursiveGaussian(image, 1.0)
    label_image = sitk.GetImageFromArray(labels)
    for img in (image, label_image):
        img.SetSpacing((2.0, 1.6, 2.4))
        img.SetOrigin((-30.0, 12.5, 40.0))
        img.SetDirection(ROTATION)
    return image, label_image


def _smooth_field(reference: sitk.Image, amplitude_mm: float, seed: int) -> sitk.Image:
    """Smooth random displacement (LPS mm) on ``reference``'s grid."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 1, (4, 4, 4, 3))
    field = sitk.GetImageFromArray(coarse, isVector=True)
    grid = Grid.from_image(reference)
    corners = grid.physical_extent_corners()
    field.SetOrigin(tuple(corners.min(axis=0)))
    field.SetSpacing(tuple((corners.max(axis=0) - corners.min(axis=0)) / 3))
    dense = sitk.Resample(field, reference, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkVectorFloat64)
    array = sitk.GetArrayFromImage(dense)
    array *= amplitude_mm / np.abs(array).max()
    out = sitk.GetImageFromArray(array, isVector=True)
    out.CopyInformation(reference)
    return out


@pytest.fixture(scope="module")
def pair():
    fixed, fixed_labels = _phantom()
    deformation = sitk.DisplacementFieldTransform(_smooth_field(fixed, 8.0, seed=3))
    moving = sitk.Resample(fixed, fixed, deformation, sitk.sitkLinear, 0.0)
    moving_labels = sitk.Resample(fixed_labels, fixed, deformation, sitk.sitkNearestNeighbor, 0)
    return fixed, moving, fixed_labels, moving_labels


def _session(pair, steps_policy=None, **options) -> RegistrationSession:
    fixed, moving, fixed_labels, moving_labels = pair
    policy = make_policy("tto", **(steps_policy or {}))
    opts = SessionOptions(working_spacing_mm=2.0, initialization="none", device="cpu", seed=0, **options)
    return RegistrationSession(fixed, moving, policy, opts, fixed_labels, moving_labels)


@pytest.fixture(scope="module")
def finished(pair):
    session = _session(pair, {"iterations": 10})
    reports = list(session.run(6))
    return session, reports


def test_known_deformation_is_recovered(finished):
    session, reports = finished
    initial = session.reports[0].dice
    assert reports[-1].dice > initial + 0.08, (initial, [r.dice for r in reports])
    assert reports[-1].dice > 0.85
    assert reports[-1].similarity > session.reports[0].similarity
    stats = jacobian_stats(jacobian_of_field(session.result().displacement))
    assert stats["folding_percent"] < 0.5


def test_h5_reproduces_warped_image_and_dice(finished, pair, tmp_path):
    session, _ = finished
    fixed, moving, fixed_labels, moving_labels = pair
    result = session.result()
    path = write_transform(result.transform, tmp_path / "t.h5")
    transform = sitk.ReadTransform(str(path))
    from_h5 = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    ours = sitk.GetArrayFromImage(result.warp_image(moving))
    assert np.abs(from_h5 - ours).max() < 1e-5
    # labels through the .h5 give the Dice the session reported
    report = evaluate_transform(fixed_labels, moving_labels, transform, [1, 2, 3, 4], with_hd95=False)
    assert report["dice"] == pytest.approx(session.reports[-1].dice, abs=0.005)


def test_working_grid_warp_matches_sitk_through_h5(finished, pair):
    """The policy's view (torch warp on the working grid) equals SimpleITK resampling through the exported
    transform onto the working grid: the voxel <-> mm conversions agree."""
    session, _ = finished
    _, moving, _, _ = pair
    transform = session.result().transform
    reference = session.grid.reference_image()
    resampled = sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), reference, transform, sitk.sitkLinear, 0.0)
    expected = normalize_intensity(sitk.GetArrayViewFromImage(resampled), intensity_window(moving))
    ours = session.warped_at()
    inside = (
        sitk.GetArrayViewFromImage(
            sitk.Resample(
                sitk.Cast(moving * 0 + 1, sitk.sitkFloat32), reference, transform, sitk.sitkLinear, 0.0
            )
        )
        > 0.999
    )
    inside[:3], inside[-3:], inside[:, :3], inside[:, -3:], inside[:, :, :3], inside[:, :, -3:] = (False,) * 6
    difference = np.abs(ours - expected)[inside]
    assert inside.sum() > 1000
    assert difference.mean() < 0.01
    assert np.percentile(difference, 99) < 0.06


def test_step_back_and_continue(pair):
    session = _session(pair, {"iterations": 2})
    list(session.run(2))
    assert session.step_count == 2
    field_after_one = session.field_at(1).clone()
    assert session.step_back() == 1
    assert len(session.fields) == len(session.reports) == 2
    assert np.array_equal(session.field_at().numpy(), field_after_one.numpy())
    reports = list(session.run(1))
    assert [r.index for r in reports] == [2]
    assert session.step_back() == 1
    assert session.step_back() == 0
    assert session.step_back() == 0  # the affine-only state stays
    assert float(session.field_at().abs().max()) == 0.0


def test_cancel_from_another_thread_stops_within_a_step(pair):
    session = _session(pair, {"iterations": 2})
    session.prepare()
    seen = []

    def worker():
        for report in session.run(50):
            seen.append(report.index)
            if report.index == 1:
                session.cancel()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert session.cancelled
    assert seen == [1]
    assert session.step_count == 1
    assert len(session.fields) == len(session.reports) == len(session.weight_maps) == 2
    # continue after a cancel
    assert [r.index for r in session.run(1)] == [2]
    assert not session.cancelled


def test_weight_map_is_in_range_and_not_flat(finished):
    session, _ = finished
    lam = session.weight_map_at()
    assert lam is not None
    assert float(lam.min()) > 0 and float(lam.max()) <= 1.0
    assert float(lam.max() - lam.min()) > 1e-3


def test_labels_must_come_in_pairs(pair):
    fixed, moving, fixed_labels, _ = pair
    with pytest.raises(InputError, match="both"):
        RegistrationSession(
            fixed, moving, make_policy("tto"), SessionOptions(device="cpu"), fixed_labels, None
        )


def test_labels_on_another_grid_are_refused(pair):
    fixed, moving, fixed_labels, moving_labels = pair
    shifted = sitk.Image(fixed_labels)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="same grid"):
        RegistrationSession(
            fixed, moving, make_policy("tto"), SessionOptions(device="cpu"), shifted, moving_labels
        )


def test_affine_stage_recovers_a_translation(pair):
    fixed, _, fixed_labels, _ = pair
    shift = sitk.TranslationTransform(3, (4.0, -3.0, 2.0))
    moving = sitk.Resample(fixed, fixed, shift, sitk.sitkLinear, 0.0)
    session = RegistrationSession(fixed, moving, make_policy("tto"), SessionOptions(device="cpu"))
    session.prepare()
    point = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint((20.0, 22.0, 18.0)))
    mapped = np.asarray(session.affine.TransformPoint(tuple(point)))
    # moving(y) = fixed(y + s): the fixed point x sits at y = x - s in the moving image
    assert np.linalg.norm(mapped - (point - (4.0, -3.0, 2.0))) < 1.0


def test_reports_of_a_large_working_grid_average_the_ncc_over_a_subset(pair, monkeypatch):
    """Above ``REPORT_MAX_VOXELS`` the reports' NCC is the mean over every s-th voxel per axis (a report at
    1 mm cost a tenth of a step): the registration is unchanged and the value is close to the full mean."""
    from RLRegistrationLib.registration import session as session_module

    full = _session(pair)
    full_reports = list(full.run(2))
    grid_voxels = int(np.prod(full.grid.shape))
    monkeypatch.setattr(session_module, "REPORT_MAX_VOXELS", grid_voxels // 4)
    strided = _session(pair)
    strided_reports = list(strided.run(2))
    assert strided._similarity.stride == 2
    torch.testing.assert_close(strided.field_at(), full.field_at())
    for a, b in zip(strided_reports, full_reports):
        assert a.similarity == pytest.approx(b.similarity, abs=0.02)
    assert strided_reports[-1].similarity > strided.reports[0].similarity


@pytest.mark.parametrize(("working_mm", "finest_mm"), [(2.0, 2.0), (3.0, 3.0), (0.5, 1.0)])
def test_the_affine_stage_stops_at_the_working_grid(pair, monkeypatch, working_mm, finest_mm):
    """The pre-alignment's finest level is the working grid's spacing (never finer than 1 mm): a linear
    stage resolved finer than the deformable stage that follows costs time and changes little of what it
    keeps (training pairs, ``--quality standard``: Dice 0.7919 -> 0.7914, benchmarks/RESULTS.md)."""
    from RLRegistrationLib.registration import session as session_module

    schedules = []

    def recording(*args, schedule=None, **kwargs):
        schedules.append(schedule)
        return session_module.prealign.__wrapped__(*args, schedule=schedule, **kwargs)

    recording.__wrapped__ = session_module.prealign
    monkeypatch.setattr(session_module, "prealign", recording)
    fixed, moving, _, _ = pair
    options = SessionOptions(working_spacing_mm=working_mm, device="cpu", max_working_voxels=None)
    RegistrationSession(fixed, moving, make_policy("tto"), options).prepare()
    assert [s.finest_mm for s in schedules] == [finest_mm]
