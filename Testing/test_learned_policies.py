"""Tests of RLRegistrationLib.learned_policies: model folders (card + weights) and their checks, SPACPolicy
in a session, chaining with test-time optimization, discovery and registration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from RLRegistrationLib import policies
from RLRegistrationLib.errors import DeviceError, PolicyError
from RLRegistrationLib.learned_policies import (
    ChainedPolicy,
    SPACPolicy,
    discover_models,
    load_model,
    sha256_of,
)
from RLRegistrationLib.networks import SPACArchitecture, SPACNetwork
from RLRegistrationLib.policies import PolicyState, available_policies, make_policy
from RLRegistrationLib.session import RegistrationSession, SessionOptions
from RLRegistrationLib.training.train import TrainConfig, save_model

SMALL = SPACArchitecture(
    channels=(4, 8, 8, 8), decoder_channels=(8, 8, 8, 4), plan_dim=8, weight_head_channels=4, critic_hidden=16
)


def _write_model(folder: Path, model_id: str = "spac-unit", spacing_mm: float = 2.0) -> SPACNetwork:
    torch.manual_seed(1)
    network = SPACNetwork(SMALL)
    with torch.no_grad():  # a visible field
        network.actor.flow.weight.normal_(std=0.05)
    cfg = TrainConfig.from_dict({"id": model_id, "model": SMALL.to_dict()})
    cfg.data.shape, cfg.data.spacing_mm = (16, 16, 16), spacing_mm
    save_model(folder, network.state_dict(), cfg, {"command": "test"}, {"val_dice": 0.5})
    return network.eval()


@pytest.fixture(autouse=True)
def _restore_policy_registry():
    """Models registered by a test point into its tmp folder: forget them afterwards."""
    saved = dict(policies._REGISTRY)
    yield
    policies._REGISTRY.clear()
    policies._REGISTRY.update(saved)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "models" / "spac-unit"
    _write_model(folder)
    return folder


def _edit_card(folder: Path, **changes) -> None:
    path = folder / "card.json"
    card = json.loads(path.read_text())
    for key, value in changes.items():
        card[key] = value
    path.write_text(json.dumps(card))


def _state(shape=(16, 16, 16), seed=0, step_index=0) -> PolicyState:
    g = torch.Generator().manual_seed(seed)
    fixed, moving = torch.rand((1, 1, *shape), generator=g), torch.rand((1, 1, *shape), generator=g)
    return PolicyState(fixed, moving, moving, torch.zeros(1, 3, *shape), step_index)


# ---------------------------------------------------------------------------------------------- loading


def test_save_load_gives_identical_outputs(tmp_path):
    original = _write_model(tmp_path / "m")
    loaded, card = load_model(tmp_path / "m")
    state = _state()
    with torch.no_grad():
        a = original(state.fixed, state.warped, deterministic=True)
        b = loaded(state.fixed, state.warped, deterministic=True)
    torch.testing.assert_close(a.step, b.step, rtol=0, atol=0)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    policy = SPACPolicy(tmp_path / "m", device="cpu", input_spacing_mm=card["working_grid"]["spacing_mm"])
    policy.reset(state.fixed, state.moving)
    proposal = policy.propose(state)
    torch.testing.assert_close(proposal.step_field, a.step, rtol=0, atol=0)
    torch.testing.assert_close(proposal.weight_map, a.weight, rtol=0, atol=0)
    assert set(proposal.diagnostics) >= {"plan_norm", "lambda_mean", "max_step_vox"}


def test_missing_folder_or_card(tmp_path, model_dir):
    with pytest.raises(PolicyError, match="model folder .*nowhere.* not found"):
        load_model(tmp_path / "nowhere")
    (model_dir / "card.json").unlink()
    with pytest.raises(PolicyError, match=r"card\.json' not found"):
        load_model(model_dir)


def test_checksum_mismatch(model_dir):
    weights = model_dir / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PolicyError, match="weights corrupted or modified"):
        load_model(model_dir)


def test_truncated_weights(model_dir):
    weights = model_dir / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(PolicyError, match="weights corrupted or modified"):
        load_model(model_dir)
    _edit_card(model_dir, sha256=sha256_of(weights))  # a card that matches the broken file
    with pytest.raises(PolicyError, match="cannot be loaded.*truncated"):
        load_model(model_dir)


def test_architecture_mismatch(model_dir):
    card = json.loads((model_dir / "card.json").read_text())
    _edit_card(model_dir, architecture={**card["architecture"], "channels": [4, 8, 8, 16]})
    with pytest.raises(PolicyError, match="do not match the architecture.*differ in shape"):
        load_model(model_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"working_grid": {"shape": [16, 20, 16], "spacing_mm": 2.0}}, "multiples of 16"),
        ({"working_grid": {"shape": [16, 16, 16], "spacing_mm": 0}}, "spacing_mm"),
        ({"family": "other"}, "family 'other'"),
    ],
)
def test_bad_card(model_dir, change, message):
    _edit_card(model_dir, **change)
    with pytest.raises(PolicyError, match=message):
        load_model(model_dir)


def test_card_with_wrong_input_channels(model_dir):
    card = json.loads((model_dir / "card.json").read_text())
    _edit_card(model_dir, architecture={**card["architecture"], "in_channels": 3})
    with pytest.raises(PolicyError, match="in_channels 3"):
        load_model(model_dir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(model_dir):
    with pytest.raises(DeviceError, match="CUDA"):
        SPACPolicy(model_dir, device="cuda")


# ----------------------------------------------------------------------------------------------- policy


def test_policy_runs_on_other_working_grids(model_dir):
    policy = SPACPolicy(model_dir, device="cpu", input_spacing_mm=1.0)  # finer session grid than the card
    state = _state((32, 48, 32))
    policy.reset(state.fixed, state.moving)
    assert policy.shape == (16, 32, 16)
    proposal = policy.propose(state)
    assert proposal.step_field.shape == (1, 3, 32, 48, 32)
    assert proposal.weight_map.shape == (1, 1, 32, 48, 32)
    assert float(proposal.weight_map.min()) > 0 and float(proposal.weight_map.max()) <= 1


def test_stochastic_plans_are_seeded(model_dir):
    state = _state()
    steps = []
    for seed in (5, 5, 6):
        policy = SPACPolicy(model_dir, device="cpu", stochastic=True, seed=seed, input_spacing_mm=2.0)
        policy.reset(state.fixed, state.moving)
        steps.append(policy.propose(state).step_field)
    torch.testing.assert_close(steps[0], steps[1])
    assert not torch.allclose(steps[0], steps[2])


def test_chained_policy_hands_field_and_lambda_to_tto(model_dir):
    tto = policies.TestTimeOptimizationPolicy(policies.TestTimeOptimizationConfig(iterations=2, pyramid=(1,)))
    chained = ChainedPolicy(SPACPolicy(model_dir, device="cpu", input_spacing_mm=2.0), 1, tto)
    state = _state()
    chained.reset(state.fixed, state.moving)
    first = chained.propose(state)
    assert first.diagnostics["stage"] == 0.0
    second_state = PolicyState(state.fixed, state.moving, state.warped, first.step_field, 1)
    second = chained.propose(second_state)
    assert second.diagnostics["stage"] == 1.0
    assert tto.fixed_weight_map is first.weight_map and tto.weight_logits is None
    torch.testing.assert_close(second.weight_map, first.weight_map)


def test_discovery_registers_models_and_their_tto_chain(model_dir):
    found = discover_models(model_dir.parent)
    assert found == {"spac-unit": model_dir}
    assert {"spac-unit", "spac-unit+tto"} <= set(available_policies())
    policy = make_policy("spac-unit", iterations=None, similarity=None, regularization=None, device="cpu")
    assert isinstance(policy, SPACPolicy) and policy.name == "spac-unit"
    with pytest.raises(PolicyError, match="no option 'iterations'"):
        make_policy("spac-unit", iterations=5)
    chained = make_policy("spac-unit+tto", iterations=3, device="cpu")
    assert isinstance(chained, ChainedPolicy) and chained.then.config.iterations == 3
    assert chained.first_steps == 5  # the card's inference steps


def test_learned_policy_in_a_session(model_dir, blob_array, make_grid, image_on_grid):
    grid = make_grid((20, 18, 16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    fixed = image_on_grid(blob_array(grid.shape, seed=1), grid)
    moving = image_on_grid(np.roll(blob_array(grid.shape, seed=1), 1, axis=2), grid)
    discover_models(model_dir.parent)
    options = SessionOptions(working_spacing_mm=2.0, affine=False, device="cpu")
    session = RegistrationSession(
        fixed, moving, make_policy("spac-unit+tto", first_steps=1, iterations=2), options
    )
    reports = list(session.run(2))
    assert [r.diagnostics["stage"] for r in reports] == [0.0, 1.0]
    result = session.result()
    assert result.weight_map is not None and result.displacement.GetSize() == fixed.GetSize()
