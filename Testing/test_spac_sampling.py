"""SPAC with K sampled trajectories: seeded plans, temperature 0 = the deterministic policy, the session
following the trajectories' mean when the network grid changes between steps (``step_spacings_mm``),
stepping back, and the shipped model's uncertainty map through the command (a subprocess).

The unit tests run a tiny random network on 16^3-32^3 grids; the command test runs ``spac-brain-synth`` on
the embedded sample pair.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny_training import write_small_spac_model

from RLRegistrationLib.errors import PolicyError
from RLRegistrationLib.fields.spatial import compose_displacements, resize_displacement, warp
from RLRegistrationLib.policies.base import PolicyState
from RLRegistrationLib.policies.registry import (
    discover_models,
    make_policy,
    policy_supports_sampling,
    register_model,
)
from RLRegistrationLib.policies.spac_policy import SPACPolicy
from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

pytestmark = pytest.mark.usefixtures("restore_policy_registry")
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "RLRegistration" / "RLRegistrationLib" / "sample_data"


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "models" / "spac-unit"
    write_small_spac_model(folder)
    return folder


def _run_steps(policy: SPACPolicy, state: PolicyState, steps: int = 2) -> list:
    """Propose ``steps`` steps, composing them like the session; returns the proposals."""
    policy.reset(state.fixed, state.moving, spacing_mm=2.0)
    field, proposals = state.field, []
    for index in range(steps):
        proposal = policy.propose(
            PolicyState(state.fixed, state.moving, warp(state.moving, field), field, index)
        )
        field = compose_displacements(proposal.step_field, field)
        proposals.append(proposal)
    return proposals


def _policy(model_dir: Path, **options) -> SPACPolicy:
    return SPACPolicy(model_dir, device="cpu", input_spacing_mm=2.0, precision="float32", **options)


def test_sampled_trajectories_are_seeded_and_spread(model_dir, policy_state):
    state = policy_state((16, 32, 16))
    runs = [_run_steps(_policy(model_dir, samples=3, seed=seed), state) for seed in (5, 5, 6)]
    for a, b in zip(runs[0], runs[1]):
        torch.testing.assert_close(a.step_field, b.step_field, rtol=0, atol=0)
        torch.testing.assert_close(a.uncertainty_map, b.uncertainty_map, rtol=0, atol=0)
    assert not torch.allclose(runs[0][-1].step_field, runs[2][-1].step_field, atol=1e-5)
    for proposal in runs[0]:
        u = proposal.uncertainty_map
        assert u.shape == (1, 1, 16, 32, 16) and float(u.min()) >= 0 and float(u.max()) > 1e-4
        assert proposal.diagnostics["samples"] == 3 and proposal.diagnostics["temperature"] == 1.0
    # the spread adds up over steps: each trajectory keeps its own draws
    assert float(runs[0][1].uncertainty_map.mean()) > float(runs[0][0].uncertainty_map.mean())


def test_temperature_zero_trajectories_are_the_deterministic_policy(model_dir, policy_state):
    state = policy_state()
    # steps of at most 0.3 voxels, so that the step toward the mean (a fixed-point solve) converges
    frozen = _run_steps(_policy(model_dir, samples=3, temperature=0.0, max_step=0.3), state)
    single = _run_steps(_policy(model_dir, max_step=0.3), state)
    assert single[0].uncertainty_map is None and single[0].diagnostics["temperature"] == 0.0
    for a, b in zip(frozen, single):
        assert float(a.uncertainty_map.abs().max()) < 1e-6
        assert a.diagnostics["fixed_point_residual_vox"] < 1e-3
        torch.testing.assert_close(a.step_field, b.step_field, atol=1e-3, rtol=0)
    with pytest.raises(Exception, match="samples must be >= 1"):
        _policy(model_dir, samples=0)
    with pytest.raises(Exception, match="temperature must be >= 0"):
        _policy(model_dir, temperature=-1.0)


def test_session_follows_the_mean_across_network_grids(model_dir, blob_array, make_grid, image_on_grid):
    """Steps at 2, 2, then 1 mm on a 2 mm session grid: the third step's network grid is twice as fine, so
    the trajectories are resized to it, not restarted; the session's field is their mean at every step."""
    grid = make_grid((16, 16, 16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    fixed = image_on_grid(blob_array(grid.shape, seed=1), grid)
    moving = image_on_grid(np.roll(blob_array(grid.shape, seed=1), 1, axis=2), grid)
    policy = SPACPolicy(
        model_dir,
        device="cpu",
        samples=3,
        seed=2,
        step_spacings_mm=(2.0, 2.0, 1.0),
        precision="float32",
        max_step=0.3,  # small steps: the step toward the mean (a fixed-point solve) converges
    )
    options = SessionOptions(working_spacing_mm=2.0, initialization="none", device="cpu", harm_check=False)
    session = RegistrationSession(fixed, moving, policy, options)
    reports = list(session.run(3))
    history = policy._trajectories._history
    assert [tuple(history[i].shape[2:]) for i in (1, 2, 3)] == [(16, 16, 16), (16, 16, 16), (32, 32, 32)]
    assert [r.diagnostics["network_spacing_mm"] for r in reports] == [2.0, 2.0, 1.0]
    for report in reports:
        target = resize_displacement(history[report.index].mean(dim=0, keepdim=True), session.grid.shape)
        assert float((session.field_at(report.index) - target).abs().max()) < 0.02
        assert report.diagnostics["trajectories_restarted"] == 0.0
        assert report.uncertainty_mean_mm > 0
    # step back: the next step continues from step 2's trajectories and replaces the undone step's
    undone = history[3].clone()
    session.step_back()
    again = next(session.run(1))
    assert again.index == 3 and again.diagnostics["trajectories_restarted"] == 0.0
    assert sorted(history) == [0, 1, 2, 3] and not torch.equal(history[3], undone)  # new draws


def test_registry_offers_sampling_for_spac(model_dir):
    assert discover_models(model_dir.parent) == {"spac-unit": model_dir}
    assert policy_supports_sampling("spac-unit") and policy_supports_sampling("spac-unit+tto")
    policy = make_policy("spac-unit", samples=2, temperature=0.5, device="cpu")
    assert isinstance(policy, SPACPolicy) and (policy.samples, policy.temperature) == (2, 0.5)
    chained = make_policy("spac-unit+tto", samples=2, device="cpu")
    assert chained.supports_sampling and chained.first.samples == 2


def test_a_card_can_withhold_sampling(model_dir, edit_card):
    """``inference.offered_sampling: false`` (the shipped model's: its map was measured uninformative):
    neither ``<id>`` nor ``<id>+tto`` samples for users; a benchmark can still register it sampling."""
    card = json.loads((model_dir / "card.json").read_text())
    edit_card(model_dir, inference={**card["inference"], "offered_sampling": False})
    assert register_model(model_dir) == "spac-unit"
    assert not policy_supports_sampling("spac-unit") and not policy_supports_sampling("spac-unit+tto")
    with pytest.raises(PolicyError, match="no option 'samples'"):
        make_policy("spac-unit", samples=2, device="cpu")
    with pytest.raises(PolicyError, match="no option 'temperature'.*does not offer sampling"):
        make_policy("spac-unit+tto", temperature=1.0, device="cpu")
    assert make_policy("spac-unit", device="cpu").samples == 1
    register_model(model_dir, sampling=True)
    assert (
        policy_supports_sampling("spac-unit")
        and make_policy("spac-unit", samples=2, device="cpu").samples == 2
    )
    edit_card(model_dir, inference={**card["inference"], "offered_sampling": "no"})
    with pytest.raises(PolicyError, match="inference.offered_sampling must be true or false"):
        register_model(model_dir)


def _register(*options: str, models: Path | None = None) -> subprocess.CompletedProcess:
    """``rlreg register`` on the sample pair in a subprocess; ``models``: its models folder."""
    argv = [sys.executable, "-m", "RLRegistrationLib", "register"]
    argv += [str(SAMPLE / "fixed.nii.gz"), str(SAMPLE / "moving.nii.gz"), *options, "--device", "cpu"]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    if models is not None:
        env["RLREG_MODELS_DIR"] = str(models)
    return subprocess.run(argv, capture_output=True, encoding="utf-8", env=env, timeout=300)


def test_command_refuses_samples_for_the_shipped_model(tmp_path):
    """``spac-brain-synth``'s card withholds sampling: ``--samples`` is refused in one line, exit 2, before
    any work, and nothing is written."""
    done = _register("-o", str(tmp_path / "t.h5"), "--policy", "spac-brain-synth", "--samples", "2")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "does not sample trajectories" in done.stderr
    assert "spac-brain-synth" in done.stderr and not list(tmp_path.iterdir())


def test_command_writes_a_spac_models_uncertainty(model_dir, tmp_path):
    """A SPAC model that offers sampling, through the command (a subprocess with ``RLREG_MODELS_DIR``): the
    uncertainty map on the fixed image's grid, in mm, nonzero."""
    out, uncertainty, report = tmp_path / "t.h5", tmp_path / "u.nii.gz", tmp_path / "r.json"
    options = ["-o", str(out), "--policy", "spac-unit", "--samples", "2", "--uncertainty", str(uncertainty)]
    done = _register(
        *options, "--report", str(report), "--no-harm-check", "--steps", "2", models=model_dir.parent
    )
    assert done.returncode == 0, done.stderr
    image, reference = sitk.ReadImage(str(uncertainty)), sitk.ReadImage(str(SAMPLE / "fixed.nii.gz"))
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    values = sitk.GetArrayViewFromImage(image)
    assert values.min() >= 0 and values.max() > 0
    assert json.loads(report.read_text())["steps"][-1]["uncertainty_mean_mm"] > 0
