"""Mixed precision that cannot cost a registration or a training run: the fully connected layers stay
float32 under a bfloat16 autocast, a policy whose bfloat16 pass gives NaN takes the step again in float32,
and a training update with a non-finite gradient is skipped with the weights kept."""

from __future__ import annotations

import math

import torch
from tiny_training import write_small_spac_model
from torch import nn

from RLRegistrationLib.policies.morphseek_network import (
    MorphSeekArchitecture,
    MorphSeekNetwork,
    latent_log_prob,
)
from RLRegistrationLib.policies.networks import Float32Linear, SPACAgent, SPACArchitecture
from RLRegistrationLib.policies.spac_policy import SPACPolicy
from RLRegistrationLib.training.family_trainer import optimizer_step


def test_fully_connected_layers_run_in_float32_under_bfloat16_autocast():
    torch.manual_seed(0)
    layer = Float32Linear(24, 16)  # inner dimension 24: not a multiple of 32
    x = torch.randn(5, 24)
    with torch.autocast("cpu", torch.bfloat16):
        inside = layer(x.bfloat16())
        convolved = nn.Conv3d(1, 1, 1)(torch.randn(1, 1, 2, 2, 2))
    assert convolved.dtype == torch.bfloat16  # the autocast is on for the rest
    assert inside.dtype == torch.float32
    # bfloat16 input is upcast exactly: the result is the float32 layer's on the rounded input
    torch.testing.assert_close(inside, nn.functional.linear(x.bfloat16().float(), layer.weight, layer.bias))
    agent = SPACAgent(SPACArchitecture(channels=(4, 8, 8, 8), decoder_channels=(8, 8, 8, 4), plan_dim=8))
    linear = [m for m in agent.modules() if isinstance(m, nn.Linear)]  # planner, projection, 4 critics
    assert len(linear) == 2 + 4 * 3 and all(isinstance(m, Float32Linear) for m in linear)
    # the same state dict as nn.Linear: shipped weights load unchanged
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_the_policies_distributions_are_float32_under_bfloat16_autocast():
    """The log-density of a sample sums the whole latent (MorphSeek) or plan (SPAC): in bfloat16 a latent of
    64 x 6 x 7 x 6 numbers read 31-49 nats off, as much as the differences GRPO weighs."""
    torch.manual_seed(0)
    small = {"channels": (4, 8, 8, 8), "decoder_channels": (8, 8, 8, 4), "weight_head_channels": 4}
    fixed, warped = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 1, 32, 32, 32)
    morphseek = MorphSeekNetwork(MorphSeekArchitecture(**small))
    spac = SPACAgent(SPACArchitecture(**small, plan_dim=8)).network
    with torch.autocast("cpu", torch.bfloat16):
        latent = morphseek(fixed, warped, temperature=1.0)
        plan = spac(fixed, warped)
    for out in (latent, plan):
        assert out.mean.dtype == out.log_std.dtype == out.log_prob.dtype == torch.float32
    assert latent.step.dtype == torch.bfloat16  # the convolutions stay in bfloat16
    expected = latent_log_prob(latent.z.detach(), latent.mean, latent.log_std, 1.0)
    torch.testing.assert_close(latent.log_prob, expected, rtol=1e-6, atol=1e-4)


def test_a_non_finite_bfloat16_step_is_taken_again_in_float32(tmp_path, policy_state, monkeypatch):
    """A bfloat16 kernel fault (NaN out of a network pass) gives the float32 step, and the policy stays in
    float32 for the rest of the session."""
    write_small_spac_model(tmp_path / "m")
    state = policy_state((32, 32, 32))
    reference = SPACPolicy(tmp_path / "m", device="cpu", precision="float32")
    reference.reset(state.fixed, state.moving)
    expected = reference.propose(state)
    policy = SPACPolicy(tmp_path / "m", device="cpu", precision="bfloat16")
    head = policy.network.weight_head
    original = head.forward
    calls = []

    def faulty(features, shape):
        weight = original(features, shape)
        calls.append(torch.is_autocast_enabled("cpu"))
        return weight * torch.nan if torch.is_autocast_enabled("cpu") else weight

    monkeypatch.setattr(head, "forward", faulty)
    policy.reset(state.fixed, state.moving)
    proposal = policy.propose(state)
    assert calls == [True, False] and not policy.bfloat16
    assert proposal.diagnostics["network_bfloat16"] == 0.0
    torch.testing.assert_close(proposal.step_field, expected.step_field, rtol=0, atol=0)
    torch.testing.assert_close(proposal.weight_map, expected.weight_map, rtol=0, atol=0)
    policy.propose(state)
    assert calls == [True, False, False]  # float32 from then on: one fault costs one extra pass


def test_an_update_with_a_non_finite_gradient_is_skipped():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 3)
    norm, applied = optimizer_step(optimizer, model(x).sum() * torch.inf, max_norm=1.0)
    assert not applied and not math.isfinite(norm)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    norm, applied = optimizer_step(optimizer, model(x).pow(2).sum(), max_norm=1.0)
    assert applied and math.isfinite(norm) and norm > 0
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_nan_gradient_in_any_parameter_group_skips_the_update():
    """One group finite, the next NaN (as a bfloat16 conv3d weight gradient can be): the update is skipped,
    whatever the order of the groups (a NaN after a finite norm once slipped through ``max``)."""
    torch.manual_seed(0)
    for nan_group in (0, 1):
        first, second = nn.Linear(3, 1), nn.Linear(3, 1)
        optimizer = torch.optim.Adam([{"params": first.parameters()}, {"params": second.parameters()}])
        before = [p.detach().clone() for p in (*first.parameters(), *second.parameters())]
        x = torch.randn(4, 3)
        outputs = [first(x).sum(), second(x).sum()]
        outputs[nan_group] = outputs[nan_group] * torch.nan
        norm, applied = optimizer_step(optimizer, outputs[0] + outputs[1], max_norm=1.0)
        assert not applied and math.isnan(norm)
        after = [p.detach() for p in (*first.parameters(), *second.parameters())]
        assert all(torch.equal(a, b) for a, b in zip(before, after))
