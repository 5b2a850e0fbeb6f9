"""Linear pre-alignment (``prealign``): rigid and affine recovery, the "none" mode, robust centring, masks,
determinism. Small blob volumes (2 mm voxels), so each registration takes well under a second."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from RLRegistrationLib.registration import prealign as prealign_module
from RLRegistrationLib.registration.prealign import PrealignSchedule, prealign

# the pair's own spacing (2 mm) is the finest level; fewer samples keep the tests fast
FAST = PrealignSchedule(samples=20_000, iterations=60)


def _fixed(blob_array, size=40, origin=(-40.0, -35.0, 10.0)):
    image = sitk.GetImageFromArray(blob_array((size,) * 3, seed=0, blobs=30, sigma=(1.5, 3.0)))
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin(origin)
    return image


def _moving(fixed, truth, reference=None):
    """moving(truth(x)) = fixed(x): ``truth`` maps fixed points to moving points."""
    return sitk.Resample(fixed, reference or fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)


def _central_points(image, count=50):
    index = np.random.default_rng(1).uniform(10, 29, (count, 3))
    return [image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in index]


def _max_error(estimate, truth, points):
    return max(
        np.linalg.norm(np.subtract(estimate.TransformPoint(p), truth.TransformPoint(p))) for p in points
    )


def _centre(image):
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])


def test_affine_recovers_rotation_scaling_and_shift(blob_array):
    fixed = _fixed(blob_array)
    truth = sitk.AffineTransform(3)
    truth.SetCenter(_centre(fixed))
    rotation = sitk.Euler3DTransform((0, 0, 0), *np.deg2rad([6.0, -3.0, 4.0]))
    truth.SetMatrix((np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.diag([1.08, 0.95, 1.0])).ravel())
    truth.SetTranslation((5.0, -3.0, 2.0))
    estimate = prealign(fixed, _moving(fixed, truth), "affine", schedule=FAST)
    assert isinstance(estimate, sitk.AffineTransform)
    points = _central_points(fixed)
    assert _max_error(sitk.AffineTransform(3), truth, points) > 5.0
    assert _max_error(estimate, truth, points) < 1.0


def test_rigid_gives_a_rotation_and_recovers_a_rigid_motion(blob_array):
    fixed = _fixed(blob_array)
    truth = sitk.Euler3DTransform(_centre(fixed), *np.deg2rad([5.0, 0.0, -4.0]), (4.0, 2.0, -3.0))
    estimate = prealign(fixed, _moving(fixed, truth), "rigid", schedule=FAST)
    matrix = np.asarray(estimate.GetMatrix()).reshape(3, 3)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-6)
    assert _max_error(estimate, truth, _central_points(fixed)) < 1.0


def test_none_returns_the_initial_transform_or_identity(blob_array):
    fixed = _fixed(blob_array)
    assert prealign(fixed, fixed, "none").GetMatrix() == sitk.AffineTransform(3).GetMatrix()
    shift = sitk.TranslationTransform(3, (1.0, 2.0, 3.0))
    np.testing.assert_allclose(prealign(fixed, fixed, "none", initial=shift).GetTranslation(), (1, 2, 3))
    with pytest.raises(ValueError, match="unknown initialization"):
        prealign(fixed, fixed, "bspline")


def test_large_offset_and_different_field_of_view(blob_array):
    """The moving image sits 30 mm away on a larger grid of its own (whole-head scans of one subject)."""
    fixed = _fixed(blob_array)
    truth = sitk.Euler3DTransform(_centre(fixed), *np.deg2rad([0.0, 4.0, 0.0]), (30.0, -12.0, 8.0))
    reference = sitk.Image([56, 48, 52], sitk.sitkFloat32)
    reference.SetSpacing((2.0, 2.0, 2.0))
    reference.SetOrigin((-30.0, -60.0, 5.0))
    moving = _moving(fixed, truth, reference)
    estimate = prealign(fixed, moving, "affine", schedule=FAST)
    assert _max_error(estimate, truth, _central_points(fixed)) < 1.5


def test_centring_falls_back_to_geometry_when_moments_fail(blob_array):
    fixed = _fixed(blob_array)
    empty = sitk.Image(fixed.GetSize(), sitk.sitkFloat32)
    empty.CopyInformation(fixed)
    level = prealign_module._Level(fixed, empty, None, None, 1000)
    candidates = prealign_module._initial_candidates(level, None)
    assert len(candidates) == 1  # moments of an all-zero image cannot be computed
    np.testing.assert_allclose(candidates[0].GetTranslation(), (0.0, 0.0, 0.0), atol=1e-9)


def test_fixed_mask_restricts_the_metric(blob_array):
    """Two objects move differently; with a mask on one of them, its motion is recovered."""
    objects = [blob_array((40, 40, 16), seed=s, blobs=15, sigma=(1.5, 3.0), margin=0.3) for s in (1, 2)]
    padded = [np.pad(o, ((0, 0), (0, 0), (4, 4))) for o in objects]  # zero bands: rolls wrap no tissue
    fixed_array = np.concatenate(padded, axis=2)
    moving_array = np.concatenate([np.roll(padded[0], 3, axis=2), np.roll(padded[1], -3, axis=2)], axis=2)
    fixed, moving = (sitk.GetImageFromArray(a) for a in (fixed_array, moving_array))
    for image in (fixed, moving):
        image.SetSpacing((2.0, 2.0, 2.0))
    mask_array = np.zeros(fixed_array.shape, np.uint8)
    mask_array[:, :, 24:] = 1  # the right object and its zero band
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(fixed)
    points = [
        fixed.TransformContinuousIndexToPhysicalPoint((i, j, k))
        for i in (30, 36, 42)
        for j in (12, 28)
        for k in (12, 28)
    ]

    def shift(transform):  # mean T(x) - x over the right object
        return np.mean([np.subtract(transform.TransformPoint(p), p) for p in points], axis=0)

    # moving(x - 6 mm along i) = fixed(x) for the right object: T(x) = x - (6, 0, 0)
    for moving_mask in (None, mask):
        estimate = prealign(fixed, moving, "rigid", fixed_mask=mask, moving_mask=moving_mask, schedule=FAST)
        np.testing.assert_allclose(shift(estimate), (-6.0, 0.0, 0.0), atol=0.3)
    unmasked = prealign(fixed, moving, "rigid", schedule=FAST)
    assert abs(shift(unmasked)[0] + 6.0) > 2.0  # without the mask, the left object pulls too


def test_prealign_is_reproducible_and_restores_itk_threads(blob_array):
    fixed = _fixed(blob_array)
    truth = sitk.Euler3DTransform(_centre(fixed), 0.05, 0.0, 0.0, (3.0, 0.0, 0.0))
    moving = _moving(fixed, truth)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    first, second = (prealign(fixed, moving, "affine", schedule=FAST, seed=2) for _ in range(2))
    assert first.GetParameters() == second.GetParameters()
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads


def test_a_level_that_ends_worse_than_it_began_keeps_its_start(blob_array, monkeypatch):
    """An optimizer that leaves the basin (here made to by 100x too large steps; on a T1/T2 brain pair the
    affine stage did so by itself) does not spoil a good start: the level returns the start."""
    fixed = _fixed(blob_array)
    truth = sitk.TranslationTransform(3, (2.0, -1.0, 1.5))
    level = prealign_module._Level(fixed, _moving(fixed, truth), None, None, int(np.prod(fixed.GetSize())))
    start = sitk.VersorRigid3DTransform()
    start.SetCenter(_centre(fixed))
    start.SetTranslation((2.0, -1.0, 1.5))  # at the truth already
    careful = prealign_module._register(level, start, FAST, seed=0)

    build = prealign_module._mattes_method

    def reckless(*args):
        method = build(*args)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=100.0, minStep=50.0, numberOfIterations=5, relaxationFactor=0.99
        )
        method.SetOptimizerScalesFromPhysicalShift()
        return method

    monkeypatch.setattr(prealign_module, "_mattes_method", reckless)
    transform, value = prealign_module._register(level, start, FAST, seed=0)
    assert transform is start
    assert value >= careful[1]  # the start is not better than where the careful optimizer ended
    np.testing.assert_allclose(careful[0].GetTranslation(), start.GetTranslation(), atol=0.3)


def test_the_pyramid_smooths_each_image_once_per_spacing_and_shares_the_copies(blob_array):
    """The smoothed images of the pyramid are kept in ``copies``, where the session's working grid and
    do-no-harm check find them: one Gaussian per image and spacing, equal to smoothing on demand."""
    from RLRegistrationLib.io.imaging import AntialiasedCopies, antialiased

    image = sitk.GetImageFromArray(blob_array((48,) * 3, seed=3, blobs=30, sigma=(2.0, 4.0)))
    image.SetSpacing((1.0, 1.0, 1.0))
    copies = AntialiasedCopies()
    pyramid = prealign_module._Pyramid(image, image, [None, None], copies)
    for spacing in (8.0, 4.0, 2.0):
        pyramid.level(spacing)
    assert len(copies._copies) == 3  # one image (fixed and moving are the same object), three spacings
    shared = copies.get(image, 2.0)
    assert shared is copies.get(image, 2.0)
    expected = antialiased(image, 2.0)  # held: a view of a freed image reads freed memory
    np.testing.assert_array_equal(sitk.GetArrayFromImage(shared), sitk.GetArrayFromImage(expected))


def test_the_finer_levels_are_made_in_the_background_and_the_result_does_not_change(blob_array, monkeypatch):
    """The pyramid's copies are smoothed by a helper thread while the coarser levels register; the
    transform is the same as when each copy is made only when it is needed, on the calling thread."""
    import threading

    from RLRegistrationLib.io import imaging

    fixed = _fixed(blob_array)
    truth = sitk.Euler3DTransform(_centre(fixed), 0.05, 0.0, 0.0, (3.0, 0.0, 0.0))
    moving = _moving(fixed, truth)
    makers = []
    smooth = imaging.antialiased

    def recorded(image, spacing_mm):
        makers.append((spacing_mm, threading.current_thread().name))
        return smooth(image, spacing_mm)

    monkeypatch.setattr(imaging, "antialiased", recorded)
    background = prealign(fixed, moving, "affine", schedule=FAST, seed=2)
    assert [s for s, _ in makers] == [8.0, 8.0, 4.0, 4.0, 2.0, 2.0]  # both images, coarse to fine
    assert all(n.startswith("antialiased-copies") for _, n in makers)

    makers.clear()
    monkeypatch.setattr(imaging.AntialiasedCopies, "prefetch", lambda self, images, spacings: None)
    foreground = prealign(fixed, moving, "affine", schedule=FAST, seed=2)
    assert makers and all(n == threading.current_thread().name for _, n in makers)
    assert background.GetParameters() == foreground.GetParameters()


def test_the_rigid_levels_smoothed_ahead_are_the_ones_the_pyramid_uses(blob_array, monkeypatch):
    """``prefetch_rigid_levels`` (what ``build_session`` starts before making the policy) smooths each image
    once per rigid level on a thread of its own; ``prealign`` then smooths only the finer levels, and
    gives the same transform as without the prefetch."""
    import threading

    from RLRegistrationLib.io import imaging
    from RLRegistrationLib.io.imaging import AntialiasedCopies

    image = sitk.GetImageFromArray(blob_array((48,) * 3, seed=3, blobs=30, sigma=(2.0, 4.0)))
    image.SetSpacing((1.0, 1.0, 1.0))
    truth = sitk.Euler3DTransform(_centre(image), 0.04, 0.0, 0.02, (2.0, -1.0, 0.0))
    moving = _moving(image, truth)
    made = []
    smooth = imaging.antialiased

    def recorded(im, spacing_mm):
        made.append((id(im), spacing_mm, threading.current_thread().name))
        return smooth(im, spacing_mm)

    monkeypatch.setattr(imaging, "antialiased", recorded)
    copies = AntialiasedCopies()
    prealign_module.prefetch_rigid_levels(copies, image, moving, "affine")
    for im in (image, moving):
        for spacing in (8.0, 4.0):
            copies.get(im, spacing)  # waits for the prefetch
    ahead_of_prealign = {(i, s) for i, s, _ in made}
    assert ahead_of_prealign == {(id(im), s) for im in (image, moving) for s in (8.0, 4.0)}
    assert all(name.startswith("antialiased-copies") for *_, name in made)
    ahead = prealign(image, moving, "affine", schedule=FAST, seed=1, copies=copies)
    made_by_prealign = {(i, s) for i, s, _ in made} - ahead_of_prealign
    # only the finer levels' copies (the affine 2 and 1 mm levels of this 1 mm pair)
    assert made_by_prealign == {(id(im), s) for im in (image, moving) for s in (2.0, 1.0)}
    assert len(made) == 8  # no copy was made twice
    assert ahead.GetParameters() == prealign(image, moving, "affine", schedule=FAST, seed=1).GetParameters()
    made.clear()
    prealign_module.prefetch_rigid_levels(
        AntialiasedCopies(), image, moving, "none"
    )  # no pre-alignment: nothing to smooth
    assert made == []


def test_a_copy_asked_for_by_two_threads_at_once_is_made_once(blob_array, monkeypatch):
    import threading
    import time

    from RLRegistrationLib.io import imaging
    from RLRegistrationLib.io.imaging import AntialiasedCopies

    image = sitk.GetImageFromArray(blob_array((24,) * 3, seed=1))
    calls = []
    smooth = imaging.antialiased

    def slow(im, spacing_mm):
        calls.append(spacing_mm)
        time.sleep(0.2)  # both threads ask while the first is still smoothing
        return smooth(im, spacing_mm)

    monkeypatch.setattr(imaging, "antialiased", slow)
    copies = AntialiasedCopies()
    results = [None, None]

    def ask(k):
        results[k] = copies.get(image, 4.0)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [4.0] and results[0] is results[1]
