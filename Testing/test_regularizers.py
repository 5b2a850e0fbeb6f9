"""Tests of RLRegistrationLib.regularizers: diffusion, weighted diffusion and weight-map hyperpriors."""

from __future__ import annotations

import pytest
import torch

from RLRegistrationLib.fields import regularizers

SHAPE = (6, 7, 8)


def _linear_field(gradient: torch.Tensor) -> torch.Tensor:
    """u_c(k, j, i) = sum_d G[c, d] * x_d with x = (i, j, k): constant forward differences G[c, d]."""
    k, j, i = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in SHAPE), indexing="ij")
    x = torch.stack([i, j, k])  # (3, D, H, W)
    return torch.einsum("cd,dkji->ckji", gradient, x)[None] + torch.tensor([1.0, -2.0, 3.0]).view(
        1, 3, 1, 1, 1
    )


GRADIENT = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.5, -0.1], [0.2, 0.05, 0.4]], dtype=torch.float64)


def test_spatial_gradients_of_linear_field():
    dk, dj, di = regularizers.spatial_gradients(_linear_field(GRADIENT))
    for g in (dk, dj, di):
        assert g.shape == (1, 3, 5, 6, 7)
    torch.testing.assert_close(di[0, :, 0, 0, 0], GRADIENT[:, 0])
    torch.testing.assert_close(dj[0, :, 2, 3, 4], GRADIENT[:, 1])
    torch.testing.assert_close(dk[0, :, 4, 5, 6], GRADIENT[:, 2])


def test_diffusion_of_constant_and_zero_field_is_zero():
    assert float(regularizers.diffusion(torch.zeros(1, 3, *SHAPE))) == 0.0
    assert float(regularizers.diffusion(torch.full((1, 3, *SHAPE), 2.5))) == 0.0


def test_diffusion_of_linear_field():
    # (1/3) sum_d mean_{c, voxels} G[c, d]^2 = |G|_F^2 / 9
    expected = float((GRADIENT**2).sum()) / 9.0
    assert float(regularizers.diffusion(_linear_field(GRADIENT))) == pytest.approx(expected, rel=1e-12)


def test_diffusion_penalizes_rough_more_than_smooth():
    g = torch.Generator().manual_seed(0)
    rough = torch.rand(1, 3, *SHAPE, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.avg_pool3d(rough, 3, stride=1, padding=1, count_include_pad=False)
    assert float(regularizers.diffusion(rough)) > 2 * float(regularizers.diffusion(smooth))


def test_weighted_diffusion_limits_and_locality():
    field = _linear_field(GRADIENT)
    ones = torch.ones(1, 1, *SHAPE, dtype=torch.float64)
    plain = regularizers.diffusion(field)
    assert float(regularizers.weighted_diffusion(field, ones)) == pytest.approx(float(plain), rel=1e-12)
    assert float(regularizers.weighted_diffusion(field, torch.zeros_like(ones))) == 0.0
    assert float(regularizers.weighted_diffusion(field, 0.25 * ones)) == pytest.approx(0.25 * float(plain))
    # the weight multiplies the penalty voxel by voxel: a field bent only where lam = 0 costs nothing
    bent = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    bent[:, :, :, :, 5:] = 1.0  # jump between i = 4 and i = 5
    lam = ones.clone()
    lam[..., 4] = 0.0
    assert float(regularizers.diffusion(bent)) > 0
    assert float(regularizers.weighted_diffusion(bent, lam)) == 0.0
    assert float(regularizers.weighted_diffusion(bent, ones)) > 0


def test_hyperpriors_minimal_at_one():
    levels = torch.linspace(0.05, 1.0, 20, dtype=torch.float64)
    beta = [float(regularizers.beta_hyperprior(torch.full((1, 1, 3, 3, 3), float(v)))) for v in levels]
    normal = [float(regularizers.normal_hyperprior(torch.full((1, 1, 3, 3, 3), float(v)))) for v in levels]
    assert min(range(20), key=beta.__getitem__) == 19
    assert min(range(20), key=normal.__getitem__) == 19
    assert beta[-1] == pytest.approx(0.0, abs=1e-12)
    assert normal[-1] == 0.0
    # strictly decreasing towards lam = 1 on (0, 1]
    assert all(a > b for a, b in zip(beta, beta[1:]))
    assert all(a > b for a, b in zip(normal, normal[1:]))
    # known values: -(w_log_beta) * log(lam) and sigma * (lam - 1)^2
    lam = torch.full((1, 1, 2, 2, 2), 0.5)
    assert float(regularizers.beta_hyperprior(lam, w_log_beta=0.18)) == pytest.approx(
        0.18 * 0.6931472, rel=1e-5
    )
    assert float(regularizers.normal_hyperprior(lam, sigma=2.0)) == pytest.approx(0.5)


def test_beta_hyperprior_is_finite_at_zero_weight():
    value = regularizers.beta_hyperprior(torch.zeros(1, 1, 2, 2, 2))
    assert torch.isfinite(value)
    assert float(value) == pytest.approx(-0.18 * torch.log(torch.tensor(1e-6)).item(), rel=1e-5)


def test_weighted_diffusion_gradient_equals_autograd_of_the_formula():
    """The written-out backward pass gives autograd's gradients for both the field and the weight map."""
    g = torch.Generator().manual_seed(3)
    field = torch.randn(1, 3, 5, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    lam = torch.rand(1, 1, 5, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(regularizers.weighted_diffusion, (field, lam))
    crop = lam[:, :, :-1, :-1, :-1]
    reference = sum((crop * d.pow(2)).mean() for d in regularizers.spatial_gradients(field)) / 3.0
    expected = torch.autograd.grad(reference, (field, lam))
    got = torch.autograd.grad(regularizers.weighted_diffusion(field, lam), (field, lam))
    value = float(regularizers.weighted_diffusion(field, lam).detach())
    assert value == pytest.approx(float(reference.detach()), rel=1e-12)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
