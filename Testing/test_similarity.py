"""Tests of RLRegistrationLib.similarity: box filter, local NCC, MIND-SSC and the factory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from RLRegistrationLib.fields import similarity


@pytest.fixture
def texture() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 1, 20, 20, 20, generator=g)


@pytest.fixture
def smooth_image(blob_array) -> torch.Tensor:
    return torch.from_numpy(blob_array((20, 22, 24), seed=5, blobs=25, sigma=(1.5, 3.0)))[None, None]


@pytest.mark.parametrize("window", [3, 5, 9])
def test_box_filter_equals_dense_convolution(window):
    g = torch.Generator().manual_seed(window)
    x = torch.rand(2, 3, 7, 8, 9, generator=g, dtype=torch.float64)
    kernel = torch.ones(3, 1, window, window, window, dtype=torch.float64)
    expected = F.conv3d(x, kernel, padding=window // 2, groups=3)
    got = similarity.box_filter(x, window)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    # a voxel sums its neighbourhood clipped to the volume (zero padding)
    r = window // 2
    k, j, i = 3, 4, 4
    neighbourhood = x[1, 2, max(0, k - r) : k + r + 1, max(0, j - r) : j + r + 1, max(0, i - r) : i + r + 1]
    assert float(got[1, 2, k, j, i]) == pytest.approx(float(neighbourhood.sum()), rel=1e-12)


def test_local_ncc_identical_and_intensity_changes(texture):
    ncc = similarity.LocalNCC(window=9)
    assert float(ncc(texture, texture)) == pytest.approx(-1.0, abs=1e-3)
    # a pure gain is exact even where windows overlap the zero padding
    assert float(ncc(texture, 3.0 * texture)) == pytest.approx(-1.0, abs=1e-3)
    # with an offset the zero padding breaks invariance in border windows only
    assert float(ncc(texture, 2.0 * texture + 0.5)) < -0.95
    shifted = float(ncc(texture, torch.roll(texture, shifts=2, dims=-1)))
    assert shifted > -0.5


def test_local_ncc_smooth_image_shift_is_worse(smooth_image):
    ncc = similarity.LocalNCC(window=7)
    same = float(ncc(smooth_image, smooth_image))
    assert same < -0.9  # not -1: eps dominates windows of near-constant background
    one = float(ncc(smooth_image, torch.roll(smooth_image, 1, dims=-1)))
    three = float(ncc(smooth_image, torch.roll(smooth_image, 3, dims=-1)))
    assert same < one < three


def test_local_ncc_gradient_flows(texture):
    warped = (0.5 * texture + 0.1 * torch.roll(texture, 1, dims=-2)).requires_grad_(True)
    loss = similarity.LocalNCC(window=5)(texture, warped)
    loss.backward()
    assert torch.isfinite(warped.grad).all()
    assert float(warped.grad.abs().sum()) > 0


def test_mindssc_modality_robust(smooth_image):
    mind = similarity.MINDSSC()
    identical = float(mind(smooth_image, smooth_image))
    inverted = float(mind(smooth_image, 1.0 - smooth_image))
    rescaled = float(mind(smooth_image, 3.0 * smooth_image + 2.0))
    shifted = float(mind(smooth_image, torch.roll(smooth_image, 3, dims=-1)))
    assert identical == pytest.approx(0.0, abs=1e-9)
    assert shifted > 1e-2
    assert inverted < 1e-3 * shifted
    assert rescaled < 1e-3 * shifted


def test_mind_descriptor_shape_and_range(smooth_image):
    descriptor = similarity.mind_ssc(smooth_image)
    assert descriptor.shape == (1, 12, *smooth_image.shape[2:])
    assert float(descriptor.min()) >= 0.0
    torch.testing.assert_close(descriptor.amax(dim=1), torch.ones_like(descriptor[:, 0]), atol=1e-6, rtol=0)


def test_mindssc_gradient_flows_and_fixed_cache(smooth_image):
    mind = similarity.MINDSSC()
    warped = torch.roll(smooth_image, 2, dims=-1).clone().requires_grad_(True)
    loss = mind(smooth_image, warped)
    loss.backward()
    assert torch.isfinite(warped.grad).all()
    assert float(warped.grad.abs().sum()) > 0
    # a new fixed tensor must not reuse the cached descriptor of the previous one
    other_fixed = torch.roll(smooth_image, -2, dims=-2)
    moving = smooth_image
    assert float(mind(other_fixed, moving)) == pytest.approx(float(similarity.MINDSSC()(other_fixed, moving)))
    assert float(mind(moving, moving)) == pytest.approx(0.0, abs=1e-9)


def test_mse(texture):
    other = texture.flip(-1)
    assert float(similarity.MSE()(texture, other)) == pytest.approx(float(((texture - other) ** 2).mean()))
    assert float(similarity.MSE()(texture, texture)) == 0.0


def test_make_similarity_names_and_unknown():
    assert isinstance(similarity.make_similarity("ncc", window=5), similarity.LocalNCC)
    assert similarity.make_similarity("ncc", window=5).window == 5
    assert isinstance(similarity.make_similarity("mind"), similarity.MINDSSC)
    assert isinstance(similarity.make_similarity("mse"), similarity.MSE)
    with pytest.raises(ValueError, match="unknown similarity 'nmi'"):
        similarity.make_similarity("nmi")


@pytest.mark.parametrize("axis, channel", [(4, 0), (2, 2)])
def test_ncc_descent_direction_points_towards_alignment(smooth_image, axis, channel):
    """warped(x) = fixed(x - 2 e): sampling warped at x + u aligns it for u = +2 e, so the descent
    direction's component along e is positive on average and the others are not."""
    fixed = smooth_image
    warped = torch.roll(fixed, shifts=2, dims=axis)
    with torch.no_grad():
        direction = similarity.ncc_descent_direction(fixed, warped)
    assert direction.shape == (1, 3, *fixed.shape[2:])
    assert float(direction.pow(2).mean()) == pytest.approx(1.0, rel=1e-4)  # RMS-normalized
    means = direction.mean(dim=(2, 3, 4))[0]
    others = [float(means[c].abs()) for c in range(3) if c != channel]
    assert float(means[channel]) > 0.05 and float(means[channel]) > 3 * max(others)


def test_strided_box_filter_and_ncc_are_the_full_ones_subsampled():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(1, 2, 9, 10, 11, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        similarity.box_filter(x, 5, stride=2), similarity.box_filter(x, 5)[..., ::2, ::2, ::2]
    )
    fixed, warped = x[:, :1], x[:, 1:]
    weight = (torch.rand(1, 1, 9, 10, 11, generator=g, dtype=torch.float64) > 0.3).double()
    full = similarity.LocalNCC(window=5)
    n = float(5**3)
    sums = similarity.box_filter(torch.cat([fixed, warped, fixed**2, warped**2, fixed * warped], 1), 5)
    f, w, ff, ww, fw = sums.unbind(1)
    cc = (fw - f * w / n) ** 2 / ((ff - f * f / n).clamp(min=0) * (ww - w * w / n).clamp(min=0) + full.eps)
    sub, sub_weight = cc[..., ::3, ::3, ::3], weight[:, 0, ::3, ::3, ::3]
    expected = -(sub * sub_weight).sum() / sub_weight.sum()
    got = similarity.LocalNCC(window=5, stride=3)(fixed, warped, weight)
    assert float(got) == pytest.approx(float(expected), rel=1e-12)
