"""MorphSeek inference: model folders of family "morphseek", deterministic and sampled latents, K sampled
trajectories with their uncertainty map, the session following the trajectories' mean, and the CLI options
``--samples``, ``--temperature`` and ``--uncertainty``.

Everything runs on a tiny random network (a few thousand parameters) and 16^3-32^3 grids on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RLRegistrationLib.errors import PolicyError
from RLRegistrationLib.fields.spatial import resize_displacement
from RLRegistrationLib.frontends.cli import main
from RLRegistrationLib.policies.base import PolicyState
from RLRegistrationLib.policies.cards import CARD_NAME, read_card, sha256_of
from RLRegistrationLib.policies.chained import ChainedPolicy
from RLRegistrationLib.policies.morphseek_network import MorphSeekArchitecture, MorphSeekNetwork
from RLRegistrationLib.policies.morphseek_policy import MorphSeekPolicy
from RLRegistrationLib.policies.network_policy import load_model
from RLRegistrationLib.policies.registry import discover_models, make_policy, policy_supports_sampling
from RLRegistrationLib.policies.spac_policy import SPACPolicy
from RLRegistrationLib.policies.trajectories import spread_mm
from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

pytestmark = pytest.mark.usefixtures("restore_policy_registry")

SMALL = MorphSeekArchitecture(channels=(4, 8, 8, 8), decoder_channels=(8, 8, 8, 4), weight_head_channels=4)


def write_morphseek_model(
    folder: Path, model_id: str = "morphseek-unit", spacing_mm: float = 2.0, seed: int = 1
) -> MorphSeekNetwork:
    """A random MorphSeek model folder laid out like ``training.run_log.save_model`` writes one."""
    torch.manual_seed(seed)
    network = MorphSeekNetwork(SMALL)
    with torch.no_grad():  # a visible field, and latent noise that changes it
        network.decoder.flow.weight.normal_(std=0.005)
        network.latent_head.log_std.bias.add_(1.0)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "weights.pt"
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    torch.save(state, weights)
    card = {
        "id": model_id,
        "family": "morphseek",
        "description": "MorphSeek unit-test model (random weights)",
        "modality": "T1 MR (test)",
        "architecture": SMALL.to_dict(),
        "parameters": sum(v.numel() for v in state.values()),
        "working_grid": {"shape": [16, 16, 16], "spacing_mm": spacing_mm},
        "inference": {"steps": 3, "max_step": 2.0},
        "training": {"command": "test"},
        "validation": {},
        "weights": "weights.pt",
        "sha256": sha256_of(weights),
    }
    (folder / CARD_NAME).write_text(json.dumps(card, indent=2))
    return network.eval()


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "models" / "morphseek-unit"
    write_morphseek_model(folder)
    return folder


def _policy(model_dir, **options) -> MorphSeekPolicy:
    return MorphSeekPolicy(model_dir, device="cpu", input_spacing_mm=2.0, **options)


def _run_steps(policy, state: PolicyState, steps: int = 2):
    """Propose ``steps`` steps, composing them like the session; returns the proposals."""
    from RLRegistrationLib.fields.spatial import compose_displacements, warp

    policy.reset(state.fixed, state.moving, spacing_mm=2.0)
    field, proposals = state.field, []
    for index in range(steps):
        current = PolicyState(state.fixed, state.moving, warp(state.moving, field), field, index)
        proposal = policy.propose(current)
        field = compose_displacements(proposal.step_field, field)
        proposals.append(proposal)
    return proposals


# ---------------------------------------------------------------------------------------------- loading


def test_morphseek_folder_loads_with_its_network_class(model_dir, policy_state):
    original = write_morphseek_model(model_dir)
    network, card = load_model(model_dir)
    assert isinstance(network, MorphSeekNetwork) and card["family"] == "morphseek"
    state = policy_state()
    with torch.no_grad():
        a = original(state.fixed, state.warped)
        b = network(state.fixed, state.warped)
    torch.testing.assert_close(a.step, b.step, rtol=0, atol=0)
    proposal = _policy(model_dir).propose(state)
    torch.testing.assert_close(proposal.step_field, a.step, rtol=0, atol=0)
    torch.testing.assert_close(proposal.weight_map, a.weight.clamp(1e-6, 1), rtol=0, atol=0)
    assert proposal.uncertainty_map is None
    assert {"latent_sigma", "lambda_mean", "max_step_vox"} <= set(proposal.diagnostics)


def test_unknown_family_names_the_card(model_dir, edit_card):
    edit_card(model_dir, family="voxelmorph")
    with pytest.raises(PolicyError, match=r"card\.json': family 'voxelmorph' is not supported.*'morphseek'"):
        read_card(model_dir)


def test_wrong_family_for_the_policy_class(model_dir):
    with pytest.raises(PolicyError, match="is a 'morphseek' model; SPACPolicy runs 'spac' models"):
        SPACPolicy(model_dir, device="cpu")


def test_architecture_of_another_family_or_shape(model_dir, edit_card):
    card = json.loads((model_dir / CARD_NAME).read_text())
    edit_card(model_dir, architecture={**card["architecture"], "family": "spac"})
    with pytest.raises(PolicyError, match="architecture is of family 'spac' but the card says 'morphseek'"):
        load_model(model_dir)
    edit_card(model_dir, architecture={**card["architecture"], "channels": [4, 8, 8, 16]})
    with pytest.raises(PolicyError, match=r"do not match the architecture.*\(morphseek, channels"):
        load_model(model_dir)


def test_checksum_mismatch(model_dir):
    weights = model_dir / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PolicyError, match="weights corrupted or modified"):
        _policy(model_dir)


def test_bad_sampling_options(model_dir):
    with pytest.raises(PolicyError, match="samples must be >= 1"):
        _policy(model_dir, samples=0)
    with pytest.raises(PolicyError, match="temperature must be >= 0"):
        _policy(model_dir, temperature=-1.0)


# ---------------------------------------------------------------------------------------------- sampling


def test_temperature_zero_is_deterministic(model_dir, policy_state):
    state = policy_state()
    first = _run_steps(_policy(model_dir), state)
    second = _run_steps(_policy(model_dir, seed=99), state)
    for a, b in zip(first, second):
        torch.testing.assert_close(a.step_field, b.step_field, rtol=0, atol=0)


@pytest.mark.parametrize("samples", [1, 3])
def test_sampling_is_seeded(model_dir, samples, policy_state):
    state = policy_state()
    runs = [
        _run_steps(_policy(model_dir, temperature=1.0, samples=samples, seed=seed), state)
        for seed in (5, 5, 6)
    ]
    for a, b in zip(runs[0], runs[1]):
        torch.testing.assert_close(a.step_field, b.step_field, rtol=0, atol=0)
    assert not torch.allclose(runs[0][-1].step_field, runs[2][-1].step_field, atol=1e-4)
    deterministic = _run_steps(_policy(model_dir), state)
    assert not torch.allclose(runs[0][0].step_field, deterministic[0].step_field, atol=1e-4)


def test_uncertainty_map_of_k_samples(model_dir, policy_state):
    state = policy_state((16, 32, 16))
    sampled = _run_steps(_policy(model_dir, samples=4, seed=0), state, steps=2)
    for proposal in sampled:
        u = proposal.uncertainty_map
        assert u.shape == (1, 1, 16, 32, 16) and bool((u >= 0).all()) and float(u.max()) > 1e-3
        assert proposal.diagnostics["temperature"] == 1.0 and proposal.diagnostics["samples"] == 4
    assert float(sampled[1].uncertainty_map.mean()) > 0
    frozen = _run_steps(_policy(model_dir, samples=4, temperature=0.0), state, steps=2)
    for proposal in frozen:
        assert float(proposal.uncertainty_map.abs().max()) < 1e-5
    single = _run_steps(_policy(model_dir), state, steps=2)
    # K identical trajectories follow the single deterministic one
    torch.testing.assert_close(frozen[0].step_field, single[0].step_field, atol=1e-5, rtol=0)


def test_uncertainty_is_in_mm_of_the_working_grid(model_dir, policy_state):
    policy = _policy(model_dir, samples=2)
    state = policy_state((16, 16, 16))
    policy.reset(state.fixed, state.moving, spacing_mm=3.0)  # 16^3 at 3 mm -> network grid 32^3
    fields = torch.zeros((2, 3, *policy.shape))
    fields[0, 0] = 1.0  # one network voxel along i, in opposite directions around the mean
    fields[1, 0] = -1.0
    spread = spread_mm(fields, fields.mean(0, keepdim=True), (16, 16, 16), policy.input_spacing_mm)
    voxel_mm = 3.0 * 15 / (policy.shape[2] - 1)
    torch.testing.assert_close(spread, torch.full((1, 1, 16, 16, 16), voxel_mm))


def test_session_total_is_the_mean_of_the_trajectories(model_dir, blob_array, make_grid, image_on_grid):
    grid = make_grid((20, 18, 16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    fixed = image_on_grid(blob_array(grid.shape, seed=1), grid)
    moving = image_on_grid(np.roll(blob_array(grid.shape, seed=1), 1, axis=2), grid)
    policy = _policy(model_dir, samples=3, seed=2)
    session = RegistrationSession(
        fixed, moving, policy, SessionOptions(working_spacing_mm=2.0, initialization="none", device="cpu")
    )
    reports = list(session.run(3))
    assert policy.shape == tuple(session.grid.shape)  # same grid: the trajectories are comparable 1:1
    for report in reports:
        index = report.index
        mean = policy._trajectories._history[index].mean(dim=0, keepdim=True)
        target = resize_displacement(mean, session.grid.shape)
        assert float((session.field_at(index) - target).abs().max()) < 0.01
        assert report.diagnostics["fixed_point_residual_vox"] < 0.01
        u = session.uncertainty_at(index)
        assert u.shape == (1, 1, *session.grid.shape)
        assert report.uncertainty_mean_mm == pytest.approx(float(u.mean()))
        assert report.uncertainty_max_mm == pytest.approx(float(u.max()))
    assert session.uncertainty_at(0) is None and session.reports[0].uncertainty_mean_mm is None
    result = session.result()
    assert result.uncertainty_map.GetSize() == fixed.GetSize()
    assert result.uncertainty_map.GetSpacing() == fixed.GetSpacing()
    values = sitk.GetArrayViewFromImage(result.uncertainty_map)
    assert values.min() >= 0 and values.max() > 0
    # step back: the trajectories of the undone step are dropped, the next step continues from step 2
    session.step_back()
    assert sorted(policy._trajectories._history) == [0, 1, 2, 3]
    again = next(session.run(1))
    assert again.index == 3 and again.diagnostics["trajectories_restarted"] == 0.0
    assert (
        float((session.field_at(3) - policy._trajectories._history[3].mean(0, keepdim=True)).abs().max())
        < 0.01
    )


def test_discovery_registers_sampling_policies(model_dir):
    found = discover_models(model_dir.parent)
    assert found == {"morphseek-unit": model_dir}
    assert policy_supports_sampling("morphseek-unit") and policy_supports_sampling("morphseek-unit+tto")
    assert not policy_supports_sampling("tto")
    policy = make_policy("morphseek-unit", samples=2, temperature=0.5, device="cpu", iterations=None)
    assert isinstance(policy, MorphSeekPolicy) and policy.samples == 2 and policy.temperature == 0.5
    with pytest.raises(PolicyError, match="no option 'iterations'"):
        make_policy("morphseek-unit", iterations=5)
    chained = make_policy("morphseek-unit+tto", samples=2, iterations=2, device="cpu")
    assert isinstance(chained, ChainedPolicy) and chained.supports_sampling
    assert chained.first.samples == 2 and chained.first_steps == 3


# ---------------------------------------------------------------------------------------------- CLI


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_samples_write_the_uncertainty_on_the_fixed_grid(model_dir, small_pair, tmp_path, capsys):
    discover_models(model_dir.parent)
    fixed, moving = small_pair
    out, uncertainty, report = tmp_path / "t.h5", tmp_path / "u.nii.gz", tmp_path / "r.json"
    common = [
        "--policy",
        "morphseek-unit",
        "--device",
        "cpu",
        "--initialization",
        "none",
        "--no-harm-check",  # an untrained unit model: the steps are kept to test the map's writing
        "--steps",
        "2",
        "--samples",
        "3",
    ]
    argv = ["register", fixed, moving, "-o", out, *common, "--uncertainty", uncertainty, "--report", report]
    code, stdout, stderr = _cli(capsys, *argv)
    assert code == 0, stderr
    assert "uncertainty" in stdout and "mm" in stdout
    image, reference = sitk.ReadImage(str(uncertainty)), sitk.ReadImage(str(fixed))
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    values = sitk.GetArrayViewFromImage(image)
    assert values.min() >= 0 and values.max() > 0
    steps = json.loads(report.read_text())["steps"]
    assert steps[0]["uncertainty_mean_mm"] is None and steps[-1]["uncertainty_mean_mm"] > 0
    assert not list(tmp_path.glob(".*partial*"))
    # refused to overwrite, like the other outputs
    argv = ["register", fixed, moving, "-o", tmp_path / "t2.h5", *common, "--uncertainty", uncertainty]
    code, _, stderr = _cli(capsys, *argv)
    assert code == 2 and "file exists" in stderr and str(uncertainty) in stderr
    assert not (tmp_path / "t2.h5").exists()


def test_cli_info_marks_sampling_policies(model_dir, capsys):
    discover_models(model_dir.parent)
    code, stdout, _ = _cli(capsys, "info")
    assert code == 0
    lines = {line.split()[0]: line for line in stdout.splitlines() if line.startswith("  ")}
    assert "--samples K" in lines["morphseek-unit"] and "--samples K" not in lines["tto"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--policy", "tto", "--samples", "3"), "policy 'tto' does not sample trajectories"),
        (("--policy", "tto", "--temperature", "1"), "policy 'tto' does not sample trajectories"),
        (("--policy", "morphseek-unit", "--uncertainty", "{u}"), "--uncertainty needs --samples K > 1"),
        (("--policy", "morphseek-unit", "--samples", "0"), "--samples: must be an integer from 1 to 16"),
        (("--policy", "morphseek-unit", "--samples", "2", "--temperature", "-1"), "--temperature: must be"),
    ],
)
def test_cli_sampling_errors(model_dir, small_pair, tmp_path, capsys, argv, message):
    discover_models(model_dir.parent)
    fixed, moving = small_pair
    out, u = tmp_path / "t.h5", tmp_path / "u.nii.gz"
    argv = [a.format(u=u) for a in argv]
    code, _, stderr = _cli(capsys, "register", fixed, moving, "-o", out, "--device", "cpu", "--quiet", *argv)
    assert code == 2
    assert stderr.startswith("rlreg: error: ") and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists() and not u.exists()


def test_diffeomorphic_steps_apply_to_every_sampled_trajectory(model_dir, policy_state, edit_card):
    from RLRegistrationLib.fields.spatial import integrate_velocity

    card = json.loads((model_dir / CARD_NAME).read_text())
    edit_card(model_dir, inference={**card.get("inference", {}), "diffeomorphic_steps": True})
    state = policy_state()
    fields = {}
    for diffeomorphic in (False, True):
        policy = MorphSeekPolicy(
            model_dir,
            device="cpu",
            samples=2,
            seed=3,
            input_spacing_mm=2.0,
            diffeomorphic_steps=diffeomorphic,
        )
        assert policy.diffeomorphic_steps is diffeomorphic
        policy.reset(state.fixed, state.moving)
        policy.propose(state)
        fields[diffeomorphic] = policy._trajectories._history[1]  # the K trajectories after the first step
    torch.testing.assert_close(fields[True], integrate_velocity(fields[False]), rtol=1e-5, atol=1e-6)
