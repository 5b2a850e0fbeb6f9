"""The test-time optimization's shortcuts give what the plain computations give.

Cached fixed-image NCC statistics, adaptive scaling and squaring, the first-order composition inside
the loss and the foreground crop each make an iteration cheaper; these tests hold each one to the
computation it replaces, with numbers, on small seeded volumes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from RLRegistrationLib.fields import similarity, spatial
from RLRegistrationLib.policies import tto as policies
from RLRegistrationLib.policies.base import PolicyState

TTOConfig = policies.TestTimeOptimizationConfig  # not collected by pytest under this name
TTOPolicy = policies.TestTimeOptimizationPolicy


def _reference_ncc(fixed: torch.Tensor, warped: torch.Tensor, window: int, eps: float = 1e-5):
    """The five-channel formula the cached one replaces."""
    n = float(window**3)
    stacked = torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], dim=1)
    f_sum, w_sum, ff_sum, ww_sum, fw_sum = similarity.box_filter(stacked, window).unbind(dim=1)
    cross = fw_sum - f_sum * w_sum / n
    f_var = (ff_sum - f_sum * f_sum / n).clamp(min=0)
    w_var = (ww_sum - w_sum * w_sum / n).clamp(min=0)
    return -(cross * cross / (f_var * w_var + eps)).mean()


def test_cached_ncc_statistics_give_the_same_loss_and_gradient():
    g = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, 1, 10, 11, 12, generator=g, dtype=torch.float64)
    ncc = similarity.LocalNCC(window=5)
    for seed in (1, 2):  # the second call reuses the fixed statistics of the first
        warped = torch.rand(
            1, 1, 10, 11, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        a, b = warped.clone().requires_grad_(True), warped.clone().requires_grad_(True)
        got, expected = ncc(fixed, a), _reference_ncc(fixed, b, 5)
        assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
        got.backward()
        expected.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    # another fixed tensor is not confused with the cached one, and a fixed image with a gradient gets one
    other = (fixed * 0.5 + 0.2).requires_grad_(True)
    value = ncc(other, warped)
    assert float(value.detach()) == pytest.approx(float(_reference_ncc(other.detach(), warped, 5)), rel=1e-12)
    value.backward()
    assert float(other.grad.abs().sum()) > 0


def test_adaptive_squarings_bound_the_scaled_field_and_match_seven_squarings():
    g = torch.Generator().manual_seed(1)
    velocity = torch.nn.functional.interpolate(
        torch.randn(1, 3, 4, 4, 4, generator=g), size=(16, 16, 16), mode="trilinear", align_corners=True
    )
    for amplitude in (0.1, 1.0, 3.0, 50.0):
        v = velocity * amplitude / float(velocity.abs().amax())
        n = spatial.squarings_needed(v)
        assert 0 <= n <= 7
        assert amplitude / 2**n <= 0.25 or n == 7
        if n > 0:
            assert amplitude / 2 ** (n - 1) > 0.25  # the fewest that reach a quarter voxel
    v = velocity * 1.5 / float(velocity.abs().amax())
    adaptive = spatial.integrate_velocity(v, spatial.squarings_needed(v))
    full = spatial.integrate_velocity(v, 7)
    # both approximate exp(v); at 1.5 voxels they agree to a small fraction of the displacement
    assert float((adaptive - full).abs().max()) < 0.05 * 1.5
    assert spatial.squarings_needed(torch.zeros(1, 3, 4, 4, 4)) == 0


def test_linearized_composition_error_is_second_order_in_the_step(sinusoid_field):
    shape = (24, 26, 28)
    previous = sinusoid_field(shape, 3.0, seed=1, shortest_wavelength=12).tensor()
    step = sinusoid_field(shape, 1.0, seed=2, shortest_wavelength=12).tensor()
    gradient = spatial.field_gradient(previous)
    interior = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))

    def error(scale: float) -> float:
        exact = spatial.compose_displacements(scale * step, previous)
        linear = spatial.compose_linearized(scale * step, previous, gradient)
        return float((exact - linear)[interior].abs().max())

    # a few hundredths of a voxel for a one-voxel step, and less for a smaller one (the exact
    # composition's own trilinear interpolation keeps the ratio from reaching the ideal 1/4)
    assert error(1.0) < 0.1
    assert error(0.5) < 0.5 * error(1.0)
    # the plain sum (no first-order term) is worse by far
    plain = float((spatial.compose_displacements(step, previous) - (step + previous))[interior].abs().max())
    assert plain > 3 * error(1.0)


def _pair_with_background(blob_array, shape=(40, 44, 48), pad=10):
    """A textured block surrounded by ``pad`` voxels of zero background; the moving image shifted by
    (1.5, -1, 1) voxels (i, j, k)."""
    inner = tuple(n - 2 * pad for n in shape)
    fixed = np.zeros(shape, np.float32)
    fixed[pad:-pad, pad:-pad, pad:-pad] = blob_array(inner, seed=4, blobs=30, sigma=(1.5, 3.0))
    fixed /= fixed.max()
    fixed_t = torch.from_numpy(fixed)[None, None]
    shift = torch.zeros(1, 3, *shape)
    shift[:, 0], shift[:, 1], shift[:, 2] = 1.5, -1.0, 1.0
    # moving(x + shift) = fixed(x): moving = fixed o (id - shift)
    moving_t = spatial.warp(fixed_t, -shift)
    return fixed_t, moving_t, shift


def test_foreground_box_holds_both_images_and_a_margin(blob_array):
    fixed, moving, _ = _pair_with_background(blob_array)
    box = policies.foreground_box([fixed, moving], margin=3)
    assert box is not None
    nonzero = torch.nonzero((fixed[0, 0] > 0) | (moving[0, 0] > 0))
    for axis, b in enumerate(box):
        assert b.start <= int(nonzero[:, axis].min()) and int(nonzero[:, axis].max()) < b.stop
        assert b.stop - b.start < fixed.shape[2 + axis]  # the background is left out
    full = torch.ones_like(fixed)
    assert policies.foreground_box([full], margin=3) is None
    assert policies.foreground_box([torch.zeros_like(fixed)], margin=3) is None
    cropped = policies.crop(fixed, box)
    restored = policies.uncrop(cropped, box, tuple(fixed.shape[2:]))
    assert restored.shape == fixed.shape
    torch.testing.assert_close(policies.crop(restored, box), cropped)


def test_cropped_optimization_recovers_the_shift_like_the_full_one(blob_array):
    fixed, moving, shift = _pair_with_background(blob_array)
    inside = (slice(None), slice(None), slice(14, -14), slice(14, -14), slice(14, -14))
    results = {}
    for crop in (False, True):
        config = TTOConfig(iterations=30, pyramid=(1,), crop_to_foreground=crop, crop_margin=4)
        policy = TTOPolicy(config)
        policy.reset(fixed, moving, 1.0)
        field = torch.zeros(1, 3, *fixed.shape[2:])
        for index in range(3):
            proposal = policy.propose(PolicyState(fixed, moving, None, field, index))
            field = spatial.compose_displacements(proposal.step_field, field)
        assert (policy.box is not None) == crop  # made at the first step
        assert proposal.weight_map.shape[2:] == fixed.shape[2:]
        results[crop] = field
        recovered = [float(field[0, c][inside[2:]].mean()) for c in range(3)]
        np.testing.assert_allclose(recovered, [1.5, -1.0, 1.0], atol=0.3)
    # outside the box the step continues its border values: no jump at the box faces
    box = policies.foreground_box([fixed, moving], margin=4)
    k0 = box[0].start
    torch.testing.assert_close(results[True][:, :, k0 - 1], results[True][:, :, k0], atol=0.05, rtol=0)
    assert float((results[True] - results[False])[inside].abs().mean()) < 0.15


def test_with_masks_the_box_is_around_the_masks(blob_array):
    """Only inside the masks does the similarity count: the optimized box holds them, not the images."""
    fixed, moving, _ = _pair_with_background(blob_array)
    mask = torch.zeros_like(fixed)
    mask[:, :, 12:20, 14:22, 16:24] = 1.0
    policy = TTOPolicy(TTOConfig(iterations=1, pyramid=(1,), crop_margin=2))
    policy.reset(fixed, moving, 1.0)
    field = torch.zeros(1, 3, *fixed.shape[2:])
    policy.propose(PolicyState(fixed, moving, None, field, 0, fixed_mask=mask, moving_mask=mask))
    image_box = policies.foreground_box([fixed, moving], margin=2)
    for axis, (low, high) in enumerate([(12, 20), (14, 22), (16, 24)]):
        assert policy.box[axis].start <= low and high <= policy.box[axis].stop
        assert policy.box[axis].stop - policy.box[axis].start < image_box[axis].stop - image_box[axis].start


@pytest.mark.parametrize(
    ("masks", "mapped", "learned"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, False)],
)
def test_slabbed_loss_gives_the_whole_grid_loss_and_gradient(monkeypatch, masks, mapped, learned):
    """The slab-by-slab evaluation (big 1 mm levels) against the one-pass loss of the same iteration, in
    float64: similarity (with masks, with the intensity-mapped image) + weighted diffusion + hyperprior."""
    from RLRegistrationLib.fields.regularizers import beta_hyperprior
    from RLRegistrationLib.policies import tto_slabs

    g = torch.Generator().manual_seed(7)
    shape = (23, 12, 13)

    def smooth(channels, scale=1.0):
        coarse = torch.rand(1, channels, 5, 4, 4, generator=g, dtype=torch.float64)
        return scale * torch.nn.functional.interpolate(
            coarse, size=shape, mode="trilinear", align_corners=True
        )

    fixed, moving = smooth(1), smooth(1)
    image_mapped = smooth(1) if mapped else None
    fixed_mask = (smooth(1) > 0.4).double() if masks else None
    moving_mask = (smooth(1) > 0.3).double() if masks else None
    previous = smooth(3, 1.5) - 0.75
    gradient = spatial.field_gradient(previous)
    control = (smooth(3, 0.8) - 0.4).requires_grad_(True)
    logits = torch.randn(1, 1, *shape, generator=g, dtype=torch.float64, requires_grad=learned)
    policy = TTOPolicy(TTOConfig(ncc_window=5, regularization=2.0, mapped_weight=0.5))

    def lam():
        return torch.sigmoid(logits).clamp(1e-6, 1.0) if learned else None

    def prior(weight):
        return None if weight is None else 0.2 * beta_hyperprior(weight, 0.18)

    monkeypatch.setattr(tto_slabs, "SLAB_VOXELS", 12 * 13 * 4)  # slabs of 5 slices, 2 slices of halo
    loss = tto_slabs.SlabbedLoss(
        fixed, moving, image_mapped, fixed_mask, moving_mask, previous, gradient, 5, 0.5, 2.0
    )
    assert loss.slabbed and len(loss.parts) == 5
    step = control * 1.0
    similarity_value, loss_value = loss.backward(step, lam(), prior(lam()))
    slab_control = control.grad.clone()
    slab_logits = None if logits.grad is None else logits.grad.clone()
    control.grad = logits.grad = None

    total = spatial.compose_linearized(control * 1.0, previous, gradient)
    policy.similarity = similarity.LocalNCC(window=5)
    expected_similarity = policy._similarity(fixed, moving, image_mapped, total, fixed_mask, moving_mask)
    weight = lam()
    from RLRegistrationLib.fields.regularizers import weighted_diffusion

    expected = expected_similarity + 2.0 * weighted_diffusion(
        total, torch.ones_like(total[:, :1]) if weight is None else weight
    )
    if weight is not None:
        expected = expected + prior(weight)
    expected.backward()
    assert similarity_value == pytest.approx(float(expected_similarity), rel=1e-10, abs=1e-12)
    assert loss_value == pytest.approx(float(expected), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(slab_control, control.grad, rtol=1e-9, atol=1e-12)
    if learned:
        torch.testing.assert_close(slab_logits, logits.grad, rtol=1e-9, atol=1e-12)


def test_slabs_cover_the_grid_once_with_their_halo():
    from RLRegistrationLib.policies.tto_slabs import slabs

    parts = slabs(100, 1000, 2, voxels=30_000)
    assert parts[0][0] == 0 and parts[-1][1] == 100
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous, no overlap of own slices
    assert all(h0 == max(0, a - 2) and h1 == min(100, b + 2) for a, b, h0, h1 in parts)
    assert slabs(10, 1000, 2, voxels=30_000) == [(0, 10, 0, 10)]  # small grids: one pass
