"""Tests of RLRegistrationLib.learned_policies: model folders (card + weights) and their checks, SPACPolicy
in a session, chaining with test-time optimization, discovery and registration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_training import write_small_spac_model

from RLRegistrationLib.devices import network_bfloat16
from RLRegistrationLib.errors import DeviceError, PolicyError
from RLRegistrationLib.frontends.cli import main as cli_main
from RLRegistrationLib.policies.base import PolicyState
from RLRegistrationLib.policies.cards import chain_settings, read_card, sha256_of
from RLRegistrationLib.policies.chained import ChainedPolicy
from RLRegistrationLib.policies.network_policy import load_model
from RLRegistrationLib.policies.registry import (
    available_policies,
    discover_models,
    make_policy,
    policy_default_steps,
    policy_option_defaults,
    register_model,
)
from RLRegistrationLib.policies.spac_policy import SPACPolicy
from RLRegistrationLib.policies.tto import TestTimeOptimizationConfig, TestTimeOptimizationPolicy
from RLRegistrationLib.registration.run_spec import schedule_steps
from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

pytestmark = pytest.mark.usefixtures("restore_policy_registry")


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "models" / "spac-unit"
    write_small_spac_model(folder)
    return folder


# ---------------------------------------------------------------------------------------------- loading


def test_save_load_gives_identical_outputs(tmp_path, policy_state):
    original = write_small_spac_model(tmp_path / "m")
    loaded, card = load_model(tmp_path / "m")
    state = policy_state()
    with torch.no_grad():
        a = original(state.fixed, state.warped, deterministic=True)
        b = loaded(state.fixed, state.warped, deterministic=True)
    torch.testing.assert_close(a.step, b.step, rtol=0, atol=0)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    spacing = card["working_grid"]["spacing_mm"]
    policy = SPACPolicy(tmp_path / "m", device="cpu", input_spacing_mm=spacing, precision="float32")
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


def test_truncated_weights(model_dir, edit_card):
    weights = model_dir / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(PolicyError, match="weights corrupted or modified"):
        load_model(model_dir)
    edit_card(model_dir, sha256=sha256_of(weights))  # a card that matches the broken file
    with pytest.raises(PolicyError, match="cannot be loaded.*truncated"):
        load_model(model_dir)


def test_architecture_mismatch(model_dir, edit_card):
    card = json.loads((model_dir / "card.json").read_text())
    edit_card(model_dir, architecture={**card["architecture"], "channels": [4, 8, 8, 16]})
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
def test_bad_card(model_dir, change, message, edit_card):
    edit_card(model_dir, **change)
    with pytest.raises(PolicyError, match=message):
        load_model(model_dir)


def test_card_with_wrong_input_channels(model_dir, edit_card):
    card = json.loads((model_dir / "card.json").read_text())
    edit_card(model_dir, architecture={**card["architecture"], "in_channels": 3})
    with pytest.raises(PolicyError, match="in_channels 3"):
        load_model(model_dir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(model_dir):
    with pytest.raises(DeviceError, match="CUDA"):
        SPACPolicy(model_dir, device="cuda")


# ----------------------------------------------------------------------------------------------- policy


def test_policy_runs_on_other_working_grids(model_dir, policy_state):
    policy = SPACPolicy(model_dir, device="cpu", input_spacing_mm=1.0)  # finer session grid than the card
    state = policy_state((32, 48, 32))
    policy.reset(state.fixed, state.moving)
    assert policy.shape == (16, 32, 16)
    proposal = policy.propose(state)
    assert proposal.step_field.shape == (1, 3, 32, 48, 32)
    assert proposal.weight_map.shape == (1, 1, 32, 48, 32)
    assert float(proposal.weight_map.min()) > 0 and float(proposal.weight_map.max()) <= 1


def test_stochastic_plans_are_seeded(model_dir, policy_state):
    state = policy_state()
    steps = []
    for seed in (5, 5, 6):
        policy = SPACPolicy(model_dir, device="cpu", temperature=1.0, seed=seed, input_spacing_mm=2.0)
        policy.reset(state.fixed, state.moving)
        steps.append(policy.propose(state).step_field)
    torch.testing.assert_close(steps[0], steps[1])
    assert not torch.allclose(steps[0], steps[2])


def test_chained_policy_hands_field_and_lambda_to_tto(model_dir, policy_state):
    tto = TestTimeOptimizationPolicy(TestTimeOptimizationConfig(iterations=2, pyramid=(1,)))
    chained = ChainedPolicy(SPACPolicy(model_dir, device="cpu", input_spacing_mm=2.0), 1, tto)
    state = policy_state()
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
    assert chained.first_steps == 5  # the card's inference steps (no inference.chain)
    assert chained.then.config.pyramid == (1,)  # fine TTO steps
    assert policy_default_steps("spac-unit") == 5 and policy_default_steps("spac-unit+tto") == 8


def test_a_model_offered_only_as_a_chain_registers_the_chain_alone(model_dir, edit_card):
    edit_card(model_dir, inference={"steps": 5, "offered_alone": False})
    assert discover_models(model_dir.parent) == {"spac-unit": model_dir}
    assert "spac-unit+tto" in available_policies() and "spac-unit" not in available_policies()
    with pytest.raises(PolicyError, match="unknown policy 'spac-unit'"):
        make_policy("spac-unit")
    edit_card(model_dir, inference={"steps": 5, "offered_alone": "no"})
    with pytest.warns(UserWarning, match=r"card\.json': inference\.offered_alone must be true or false"):
        assert discover_models(model_dir.parent) == {}


def test_a_registered_folder_wins_over_others_of_the_same_id(model_dir, edit_card):
    other = model_dir.parent / "z-copy"
    write_small_spac_model(other)
    edit_card(other, inference={"steps": 3})
    with pytest.warns(
        UserWarning, match=r"'spac-unit' is in both .*spac-unit and .*z-copy; using the latter"
    ):
        found = discover_models(model_dir.parent)
    assert found == {"spac-unit": other} and policy_default_steps("spac-unit") == 3
    assert register_model(model_dir) == "spac-unit"  # e.g. a benchmark's --model: exactly this folder
    assert policy_default_steps("spac-unit") == 5
    assert make_policy("spac-unit", device="cpu").model_dir == model_dir


def test_card_chain_settings_set_the_handover_and_user_options_win(model_dir, edit_card):
    chain = {"learned_steps": 2, "then_steps": 4, "tto": {"pyramid": [2, 1], "regularization": 4.0}}
    edit_card(model_dir, inference={"steps": 5, "max_step": 2.0, "chain": chain})
    discover_models(model_dir.parent)
    assert policy_default_steps("spac-unit+tto") == 6 and policy_default_steps("spac-unit") == 5
    assert policy_option_defaults("spac-unit+tto") == {"iterations": 5, "regularization": 4.0}
    assert policy_option_defaults("tto") == {"iterations": 5, "regularization": 2.0}
    assert policy_option_defaults("spac-unit") == {}
    chained = make_policy("spac-unit+tto", device="cpu")
    assert chained.first_steps == 2
    assert chained.then.config.pyramid == (2, 1) and chained.then.config.regularization == 4.0
    chained = make_policy("spac-unit+tto", regularization=1.5, iterations=None, first_steps=1)
    assert chained.then.config.regularization == 1.5 and chained.first_steps == 1
    assert chained.then.config.pyramid == (2, 1)
    # options for one similarity replace the chain's when a run uses it; the user's still win
    chain["tto_by_similarity"] = {"mind": {"regularization": 1.0, "pyramid": [1]}}
    edit_card(model_dir, inference={"steps": 5, "chain": chain})
    discover_models(model_dir.parent)
    mind = make_policy("spac-unit+tto", similarity="mind", regularization=None, device="cpu").then.config
    assert (mind.similarity, mind.regularization, mind.pyramid) == ("mind", 1.0, (1,))
    ncc = make_policy("spac-unit+tto", similarity="ncc", device="cpu").then.config
    assert (ncc.similarity, ncc.regularization, ncc.pyramid) == ("ncc", 4.0, (2, 1))
    assert (
        make_policy("spac-unit+tto", similarity="mind", regularization=3.0).then.config.regularization == 3.0
    )
    # a chain block without tto options keeps the fine-only TTO stage of cards without a block
    edit_card(model_dir, inference={"steps": 5, "chain": {"learned_steps": 1}})
    assert chain_settings(read_card(model_dir)).tto == {"pyramid": (1,)}


@pytest.mark.parametrize(
    "chain, message",
    [
        ({"learned_steps": -1}, "learned_steps -1"),
        ({"learned_steps": 0, "then_steps": 0}, "sum >= 1"),
        ({"learned_steps": 2, "tto": {"pyramids": [1]}}, "unknown option 'pyramids'"),
        ([3, 1], "must be an object"),
        ({"learned_steps": 2, "tto_by_similarity": [1]}, "tto_by_similarity must be an object"),
        (
            {"learned_steps": 2, "tto_by_similarity": {"mind": {"step": 1}}},
            "tto_by_similarity.mind has unknown",
        ),
        (
            {"learned_steps": 2, "tto_by_similarity": {"mind": 2.0}},
            "tto_by_similarity.mind must be an object",
        ),
    ],
)
def test_bad_chain_settings_name_the_card(model_dir, edit_card, chain, message):
    edit_card(model_dir, inference={"steps": 5, "chain": chain})
    with pytest.raises(PolicyError, match=rf"card\.json.*inference\.chain.*{message}"):
        chain_settings(read_card(model_dir), model_dir / "card.json")
    with pytest.warns(UserWarning, match="skipping model"):
        assert discover_models(model_dir.parent) == {}


def test_cli_runs_the_chain_for_its_default_steps(model_dir, edit_card, small_pair, tmp_path, capsys):
    chain = {"learned_steps": 1, "then_steps": 2, "tto": {"iterations": 1}}
    edit_card(model_dir, inference={"steps": 5, "max_step": 2.0, "chain": chain})
    discover_models(model_dir.parent)
    fixed, moving = small_pair
    report = tmp_path / "report.json"
    argv = [
        "register",
        fixed,
        moving,
        "-o",
        tmp_path / "t.h5",
        "--policy",
        "spac-unit+tto",
        "--quality",  # the card's chain (auto runs the fine schedule: the next test)
        "standard",
        "--initialization",
        "none",
        "--pair",  # a one-voxel shift of one image reads as one session: its linear result, no step
        "different-subjects",
    ]
    assert cli_main([str(a) for a in [*argv, "--device", "cpu", "--report", report, "--quiet"]]) == 0
    assert len(json.loads(report.read_text())["steps"]) == 1 + 3  # the initial state, then 1 + 2 steps
    capsys.readouterr()
    assert cli_main(["info"]) == 0
    lines = [
        line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("spac-unit+tto")
    ]
    assert lines and "(3 steps at --quality standard, " in lines[0]


def test_cli_runs_the_chain_at_fine_as_its_card_says(model_dir, edit_card, small_pair, tmp_path):
    """``--quality fine`` with a chain: the card's ``inference.chain.fine`` learned steps, then the fine
    levels it does not skip (on the 2 mm pair: 4, 4, 2, 2 mm less the first two), as many steps in all."""
    chain = {
        "learned_steps": 1,
        "then_steps": 2,
        "tto": {"iterations": 1},
        "fine": {"learned_steps": 2, "skip_levels": 2, "tto": {"iterations": 1}},
    }
    edit_card(model_dir, inference={"steps": 5, "max_step": 2.0, "chain": chain})
    discover_models(model_dir.parent)
    fixed, moving = small_pair
    report = tmp_path / "report.json"
    argv = [fixed, moving, "-o", tmp_path / "t.h5", "--policy", "spac-unit+tto", "--quality", "fine"]
    argv += ["--initialization", "none", "--pair", "different-subjects", "--no-harm-check"]
    assert (
        cli_main([str(a) for a in ["register", *argv, "--device", "cpu", "--report", report, "--quiet"]]) == 0
    )
    steps = json.loads(report.read_text())["steps"]
    assert len(steps) == 1 + 2 + 2  # the initial state, 2 learned steps, the two 2 mm TTO levels
    assert (tmp_path / "t.h5").is_file()


def test_learned_policy_in_a_session(model_dir, blob_array, make_grid, image_on_grid):
    grid = make_grid((20, 18, 16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    fixed = image_on_grid(blob_array(grid.shape, seed=1), grid)
    moving = image_on_grid(np.roll(blob_array(grid.shape, seed=1), 1, axis=2), grid)
    discover_models(model_dir.parent)
    options = SessionOptions(working_spacing_mm=2.0, initialization="none", device="cpu")
    session = RegistrationSession(
        fixed, moving, make_policy("spac-unit+tto", first_steps=1, iterations=2), options
    )
    reports = list(session.run(2))
    assert [r.diagnostics["stage"] for r in reports] == [0.0, 1.0]
    result = session.result()
    assert result.weight_map is not None and result.displacement.GetSize() == fixed.GetSize()


# ------------------------------------------------------------------------------------ diffeomorphic steps


def folding_phantom(shape=(16, 16, 16)) -> torch.Tensor:
    """A smooth step field (1, 3, D, H, W), voxels, that folds: the i component 1.5 sin(2 pi x / 6) (a
    network step with max_step 1.5) has a central difference down to -1.3, so det(I + grad u) < 0 where
    it dips."""
    x = torch.arange(shape[2], dtype=torch.float32)
    field = torch.zeros((1, 3, *shape))
    field[0, 0] = 1.5 * torch.sin(2 * torch.pi * x / 6).view(1, 1, -1).expand(*shape)
    return field


def test_integrated_step_has_no_folds_where_the_raw_step_folds(model_dir, edit_card):
    from RLRegistrationLib.training.environment import voxel_jacobian_determinant

    card = json.loads((model_dir / "card.json").read_text())
    edit_card(model_dir, inference={**card.get("inference", {}), "diffeomorphic_steps": True})
    policy = SPACPolicy(model_dir, device="cpu")
    raw = folding_phantom()
    assert float(voxel_jacobian_determinant(raw).min()) < 0  # the raw step folds
    step = policy.learned_step(raw)
    assert float(voxel_jacobian_determinant(step).min()) > 0  # exp(raw) does not
    assert float(step.abs().max()) > 0.3  # and still moves
    # off, the step is the network's output as is
    assert SPACPolicy(model_dir, device="cpu", diffeomorphic_steps=False).learned_step(raw) is raw


def test_cards_with_and_without_diffeomorphic_steps_load(model_dir, edit_card, policy_state):
    from RLRegistrationLib.fields.spatial import integrate_velocity

    state = policy_state()
    raw_policy = SPACPolicy(model_dir, device="cpu", input_spacing_mm=2.0)  # no option in the card
    assert raw_policy.diffeomorphic_steps is False
    raw_policy.reset(state.fixed, state.moving)
    raw = raw_policy.propose(state).step_field
    card = json.loads((model_dir / "card.json").read_text())
    edit_card(
        model_dir,
        inference={**card.get("inference", {}), "diffeomorphic_steps": True, "integration_steps": 5},
    )
    policy = SPACPolicy(model_dir, device="cpu", input_spacing_mm=2.0)
    assert policy.diffeomorphic_steps is True and policy.integration_steps == 5
    policy.reset(state.fixed, state.moving)
    step = policy.propose(state).step_field
    torch.testing.assert_close(step, integrate_velocity(raw, 5), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(step, raw)
    # the registered policies follow the card, and the option overrides it
    discover_models(model_dir.parent)
    assert make_policy("spac-unit", device="cpu").diffeomorphic_steps is True
    assert make_policy("spac-unit", device="cpu", diffeomorphic_steps=False).diffeomorphic_steps is False
    assert (
        make_policy("spac-unit+tto", device="cpu", diffeomorphic_steps=False).first.diffeomorphic_steps
        is False
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"diffeomorphic_steps": "yes"}, "inference.diffeomorphic_steps must be true or false, got 'yes'"),
        ({"diffeomorphic_steps": 1}, "inference.diffeomorphic_steps must be true or false, got 1"),
        (
            {"diffeomorphic_steps": True, "integration_steps": 0},
            "inference.integration_steps must be an integer",
        ),
        ({"integration_steps": "7"}, "inference.integration_steps must be an integer"),
    ],
)
def test_bad_diffeomorphic_option_names_the_card(model_dir, edit_card, change, message):
    edit_card(model_dir, inference={"steps": 5, **change})
    with pytest.raises(PolicyError, match=rf"card\.json.*{message}"):
        read_card(model_dir)
    with pytest.raises(PolicyError, match=r"card\.json.*inference\."):
        load_model(model_dir)
    with pytest.warns(UserWarning, match="skipping model"):
        assert discover_models(model_dir.parent) == {}


def test_an_explicit_registration_wins_over_the_lazy_discovery_of_the_models_folder(monkeypatch):
    """A benchmark registers a shipped chain-only model with its steps alone (``alone=True``) before anything
    has looked a policy up: the models folder's discovery, which runs first, must not undo that."""
    from RLRegistrationLib.policies import registry

    monkeypatch.setattr(registry, "_REGISTRY", {"tto": registry._REGISTRY["tto"]})
    monkeypatch.setattr(registry, "_DISCOVERED", [])
    folder = Path(__file__).resolve().parents[1] / "models" / "spac-brain-synth"
    registry.register_model(folder, alone=True)
    assert {"spac-brain-synth", "spac-brain-synth+tto"} <= set(available_policies())


# ------------------------------------------------------------------------- network grid per learned step


def test_step_spacings_move_the_network_grid_per_step_of_the_policy_alone(model_dir, edit_card, policy_state):
    """The card's ``inference.step_spacings_mm`` sets the network grid of each step of the policy alone
    (past the list: its last entry); the chain's learned steps stay on the card's working grid."""
    inference = read_card(model_dir).get("inference", {})
    edit_card(model_dir, inference={**inference, "steps": 3, "step_spacings_mm": [4, 2]})
    register_model(model_dir)
    policy = make_policy("spac-unit", device="cpu")
    state = policy_state((64, 64, 64))
    policy.reset(state.fixed, state.moving, spacing_mm=1.0)
    seen = []
    for index in range(3):
        state.step_index = index
        proposal = policy.propose(state)
        assert proposal.step_field.shape == (1, 3, 64, 64, 64)
        seen.append((policy.shape, proposal.diagnostics["network_spacing_mm"]))
    assert seen == [((16, 16, 16), 4.0), ((32, 32, 32), 2.0), ((32, 32, 32), 2.0)]
    assert schedule_steps("spac-unit", "fine") is None  # alone it has no fine schedule: its own steps
    chain = make_policy("spac-unit+tto", device="cpu")
    assert chain.first.step_spacings_mm is None
    chain.first.reset(state.fixed, state.moving, spacing_mm=1.0)
    assert chain.first.network_spacing_mm == 2.0 and chain.first.shape == (32, 32, 32)


@pytest.mark.parametrize("value", ["3", [], [0.1], [True], [3, "2"]])
def test_bad_step_spacings_name_the_card(model_dir, edit_card, value):
    edit_card(model_dir, inference={"steps": 5, "step_spacings_mm": value})
    with pytest.raises(PolicyError, match=r"card\.json.*inference\.step_spacings_mm must be a list"):
        read_card(model_dir)


def test_bfloat16_steps_match_float32_steps(model_dir, policy_state):
    """bfloat16 convolutions (``precision``; "auto" picks them on CPUs with bfloat16 units) give the float32 step
    to a small fraction of a voxel; the similarity features stay float32 under the autocast."""
    state = policy_state((32, 32, 32))
    steps = {}
    for precision in ("float32", "bfloat16"):
        policy = SPACPolicy(model_dir, device="cpu", precision=precision)
        assert policy.bfloat16 == (precision == "bfloat16")
        policy.reset(state.fixed, state.moving)
        proposal = policy.propose(state)
        assert proposal.step_field.dtype == torch.float32 and proposal.weight_map.dtype == torch.float32
        steps[precision] = proposal.step_field
    difference = (steps["float32"] - steps["bfloat16"]).abs()
    assert float(steps["float32"].abs().max()) > 0.05  # a step worth comparing
    assert float(difference.max()) < 0.05 * float(steps["float32"].abs().max())
    with pytest.raises(DeviceError, match="unknown precision 'half'"):
        SPACPolicy(model_dir, device="cpu", precision="half")


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"), [(1, 0, True), (0, 1, True), (0, 0, False)])
def test_auto_precision_takes_bfloat16_where_the_cpu_has_bfloat16_units(
    monkeypatch, amx, avx512_bf16, expected
):
    """ "auto": bfloat16 on Intel AMX and on AVX512-BF16 (AMD Zen 4), float32 elsewhere and off the CPU."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: bool(amx), raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bool(avx512_bf16), raising=False)
    assert network_bfloat16(torch.device("cpu")) is expected
    assert network_bfloat16(torch.device("cpu"), "float32") is False
    assert network_bfloat16(torch.device("cuda"), "auto") is False


def test_a_chain_says_what_it_is_good_for_apart_from_the_policy_alone(model_dir, edit_card):
    """The panel lists the policy alone with the card's description and the chain with
    ``inference.chain.description`` (else the card's, extended); a description that is not text is refused."""
    card = read_card(model_dir)
    chain = {"learned_steps": 1, "then_steps": 2, "description": "Most accurate for unit tests"}
    inference = card.get("inference", {})
    edit_card(model_dir, description="Fastest for unit tests", inference={**inference, "chain": chain})
    register_model(model_dir)
    policies = available_policies()
    assert policies["spac-unit"] == "Fastest for unit tests"
    assert policies["spac-unit+tto"] == "Most accurate for unit tests"
    edit_card(model_dir, inference={**inference, "chain": {**chain, "description": 3}})
    with pytest.raises(PolicyError, match=r"card\.json.*inference\.chain description must be a string"):
        register_model(model_dir)


def test_the_registry_knows_each_familys_class_and_sampling_without_importing_it():
    """``FAMILY_POLICIES`` names each family's policy class by path (imported when a policy is made, so
    that checking a name imports no torch) and says whether it samples: what the class itself says."""
    from RLRegistrationLib.policies.morphseek_policy import MorphSeekPolicy
    from RLRegistrationLib.policies.registry import FAMILY_POLICIES
    from RLRegistrationLib.policies.spac_policy import SPACPolicy

    assert FAMILY_POLICIES["spac"].policy_class() is SPACPolicy
    assert FAMILY_POLICIES["morphseek"].policy_class() is MorphSeekPolicy
    for family in FAMILY_POLICIES.values():
        assert family.supports_sampling == family.policy_class().supports_sampling
