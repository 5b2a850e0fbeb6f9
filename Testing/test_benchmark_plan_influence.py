"""The variants of ``benchmarks/plan_influence.py`` on a tiny SPAC model: the zero plan is the actor decoding
a plan of zeros (the planner's sigma kept), the sampled plan draws at temperature 1, the mean plan is the
policy as shipped; and the RMS length it reports is in mm."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny_training import write_small_spac_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from plan_influence import make_variant, rms_mm  # noqa: E402

from RLRegistrationLib.policies.registry import register_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("restore_policy_registry")


def test_variants_change_only_the_plan(tmp_path, policy_state):
    network = write_small_spac_model(tmp_path / "spac-unit")
    register_model(tmp_path / "spac-unit")
    state = policy_state()
    proposals = {}
    for variant in ("mean plan", "zero plan", "sampled plan"):
        policy = make_variant("spac-unit", variant)
        policy.precision, policy.bfloat16 = "float32", False
        policy.reset(state.fixed, state.moving, spacing_mm=2.0)
        proposals[variant] = policy.propose(state)
    with torch.no_grad():
        _, _, _, skips = network.plan_distribution(state.fixed, state.warped)
        zero_step, _ = network.actor(torch.zeros((1, network.architecture.plan_dim)), skips)
    torch.testing.assert_close(proposals["zero plan"].step_field, zero_step, atol=1e-5, rtol=0)
    assert proposals["zero plan"].diagnostics["plan_norm"] == 0.0
    assert proposals["sampled plan"].diagnostics["temperature"] == 1.0
    assert proposals["mean plan"].diagnostics["temperature"] == 0.0
    for other in ("zero plan", "sampled plan"):
        assert not torch.allclose(proposals[other].step_field, proposals["mean plan"].step_field, atol=1e-6)


def test_rms_is_in_mm():
    field = torch.zeros((1, 3, 4, 4, 4))
    field[:, 0] = 3.0  # 3 voxels along i everywhere
    field[:, 1] = 4.0
    assert rms_mm(field, 2.0) == pytest.approx(10.0)
