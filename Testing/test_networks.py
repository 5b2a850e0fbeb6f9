"""Tests of RLRegistrationLib.networks: SPAC backbone, planner, actor, weight-map head and critics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from RLRegistrationLib.fields.similarity import ncc_descent_direction
from RLRegistrationLib.policies.networks import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    SPACAgent,
    SPACArchitecture,
    SPACNetwork,
    count_parameters,
    network_input,
    sample_plan,
)
from RLRegistrationLib.training.losses import RegistrationLoss

SMALL = SPACArchitecture(
    channels=(4, 8, 8, 8), decoder_channels=(8, 8, 8, 4), plan_dim=8, weight_head_channels=4, critic_hidden=16
)


def _pair(shape=(16, 16, 16), batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1, *shape), generator=g), torch.rand((batch, 1, *shape), generator=g)


@pytest.mark.parametrize("shape", [(16, 16, 16), (16, 32, 48)])
def test_shapes_and_bounds(shape):
    net = SPACNetwork(SMALL)
    with torch.no_grad():  # make the field large so that the bound matters
        net.actor.flow.weight.normal_(std=1.0)
    fixed, warped = _pair(shape, batch=2)
    with torch.no_grad():
        out = net(fixed, warped)
    assert out.plan.shape == out.mean.shape == out.log_std.shape == (2, SMALL.plan_dim)
    assert out.log_prob.shape == (2,)
    assert float(out.log_std.min()) >= LOG_STD_MIN and float(out.log_std.max()) <= LOG_STD_MAX
    assert out.step.shape == (2, 3, *shape)
    assert float(out.step.abs().max()) <= SMALL.max_step + 1e-6
    assert float(out.step.abs().max()) > 0.5 * SMALL.max_step  # the tanh bound is active
    assert out.weight.shape == (2, 1, *shape)
    assert float(out.weight.min()) > 0 and float(out.weight.max()) <= 1.0
    with torch.no_grad():
        smaller = net(fixed, warped, max_step=0.5).step  # test-time bound
    assert float(smaller.abs().max()) <= 0.5 + 1e-6


def test_grid_must_be_divisible():
    net = SPACNetwork(SMALL)
    with pytest.raises(ValueError, match="multiple of 16"):
        net(*_pair((16, 20, 16)))


def test_deterministic_plan_is_the_mean_and_sampling_is_seeded():
    net = SPACNetwork(SMALL)
    fixed, warped = _pair()
    out = net(fixed, warped, deterministic=True)
    torch.testing.assert_close(out.plan, out.mean)
    a = net(fixed, warped, generator=torch.Generator().manual_seed(3)).plan
    b = net(fixed, warped, generator=torch.Generator().manual_seed(3)).plan
    c = net(fixed, warped, generator=torch.Generator().manual_seed(4)).plan
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_log_prob_is_gaussian_density():
    mean, log_std = torch.zeros(1, 2), torch.log(torch.tensor([[0.5, 2.0]]))
    plan, log_prob = sample_plan(mean, log_std, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(plan).sum(1)
    torch.testing.assert_close(log_prob, expected)


def test_registration_loss_reaches_planner_actor_and_weight_head():
    net = SPACNetwork(SMALL)
    fixed, warped = _pair(seed=1)
    out = net(fixed, warped)
    loss, parts = RegistrationLoss(ncc_window=5)(
        fixed, warped, torch.zeros(1, 3, 16, 16, 16), out.step, out.weight
    )
    loss.backward()
    for name, module in [
        ("backbone", net.backbone),
        ("planner", net.planner),
        ("actor", net.actor),
        ("weight head", net.weight_head),
    ]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"no gradient reaches the {name}"
    assert set(parts) >= {"similarity", "diffusion", "prior", "lambda"}


class TinyBackbone(nn.Module):
    """Another backbone with the documented interface: forward(x) -> (bottleneck, skips)."""

    def __init__(self):
        super().__init__()
        self.down1 = nn.Conv3d(2, 6, 3, 2, 1)
        self.down2 = nn.Conv3d(6, 10, 3, 2, 1)
        self.bottleneck_channels = 10
        self.skip_channels = [2, 6]

    def forward(self, x):
        h = torch.relu(self.down1(x))
        return torch.relu(self.down2(h)), [x, h]


def test_heads_attach_to_another_backbone():
    arch = SPACArchitecture(channels=(6, 10), decoder_channels=(6, 4), plan_dim=4, weight_head_channels=4)
    net = SPACNetwork(arch, backbone=TinyBackbone())
    out = net(*_pair((8, 12, 16)))
    assert out.step.shape == (1, 3, 8, 12, 16) and out.weight.shape == (1, 1, 8, 12, 16)


def test_twin_critics_and_soft_target_update():
    agent = SPACAgent(SMALL)
    embedding, plan = torch.randn(3, 2 * SMALL.channels[-1]), torch.randn(3, SMALL.plan_dim)
    q1, q2 = agent.critic(embedding, plan)
    assert q1.shape == q2.shape == (3,) and not torch.allclose(q1, q2)
    assert all(not p.requires_grad for p in agent.target_critic.parameters())
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in agent.target_critic.parameters()]
    agent.soft_update(0.25)
    for old, new, source in zip(before, agent.target_critic.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * source)


def test_default_network_is_small():
    assert 2e5 < count_parameters(SPACNetwork()) < 6e5


def test_similarity_gradient_input_adds_three_channels():
    arch = SPACArchitecture.from_dict({**SMALL.to_dict(), "in_channels": 5, "similarity_gradient": True})
    network = SPACNetwork(arch)
    fixed, warped = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    x = network_input(fixed, warped, arch)
    assert x.shape == (1, 5, 16, 16, 16)
    torch.testing.assert_close(x[:, 2:], ncc_descent_direction(fixed, warped))
    with torch.no_grad():  # the descent direction needs autograd internally; inference runs without it
        assert network(fixed, warped, deterministic=True).step.shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="in_channels 2"):
        SPACArchitecture(in_channels=2, similarity_gradient=True)
