"""The trained models: none ships in ``models/`` until it meets issue 25's bar (``models/README.md``); the
retired ones in ``recipes/`` keep complete cards, their checksums hold, and each policy still raises the Dice
of the embedded sample pair within its learned steps (on CPU, as a user would run it with
``RLREG_MODELS_DIR=recipes``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from RLRegistrationLib.fields.metrics import jacobian_of_field, jacobian_stats
from RLRegistrationLib.policies.cards import chain_settings, inference_step_options, read_card
from RLRegistrationLib.policies.network_policy import load_model
from RLRegistrationLib.policies.registry import make_policy, policy_default_steps
from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "recipes"  # retired models: training recipes with their weights
SAMPLE = REPO / "RLRegistration" / "RLRegistrationLib" / "sample_data"
SHIPPED = ["spac-brain-synth", "morphseek-brain-synth", "morphseek-brain-synth-warmup"]  # as trained
SAFE_FOLDING_PERCENT = 0.05  # issue 13: every shipped policy folds less than this


def folding_percent(session) -> float:
    """% det J <= 0 of the session's whole transform on the fixed grid (as the benchmarks measure it)."""
    return jacobian_stats(jacobian_of_field(session.result().displacement))["folding_percent"]


@pytest.fixture(scope="module")
def sample_pair() -> list[sitk.Image]:
    images = [sitk.ReadImage(str(SAMPLE / f"{n}.nii.gz"), sitk.sitkFloat32) for n in ("fixed", "moving")]
    return images + [sitk.ReadImage(str(SAMPLE / f"{n}_labels.nii.gz")) for n in ("fixed", "moving")]


@pytest.mark.parametrize("model_id", SHIPPED)
def test_card_documents_the_training(model_id):
    card = read_card(MODELS / model_id)
    training = card["training"]
    assert card["id"] == model_id
    assert training["command"].startswith("rlreg train --config configs/")
    assert (REPO / training["command"].split("--config ")[1].split()[0]).is_file()
    assert training["steps"] > 0 and training["wall_time_s"] > 0 and training["hardware"]
    assert 0.0 < card["validation"]["val_dice"] <= 1.0
    network, _ = load_model(MODELS / model_id)  # checksum and architecture checked
    assert sum(p.numel() for p in network.parameters()) == card["parameters"]
    assert (MODELS / model_id / card["weights"]).stat().st_size < 8 * 2**20


@pytest.mark.parametrize("model_id", SHIPPED)
def test_retired_policy_improves_dice_on_the_sample_pair(model_id, sample_pair, recipe_models):
    """Within its first 3 steps the policy raises Dice by more than 0.05, and after the card's number of
    steps Dice is still above the affine result."""
    card = read_card(MODELS / model_id)
    steps = int(card["inference"]["steps"])
    options = SessionOptions(device="cpu", seed=0)
    session = RegistrationSession(*sample_pair[:2], make_policy(model_id), options, *sample_pair[2:])
    session.prepare()
    dice = [session.reports[0].dice] + [report.dice for report in session.run(steps)]
    assert max(dice[1:4]) > dice[0] + 0.05, f"{model_id}: Dice per step {[round(d, 3) for d in dice]}"
    assert dice[-1] > dice[0], f"{model_id}: Dice per step {[round(d, 3) for d in dice]}"
    assert inference_step_options(card)[0], f"{model_id}: the shipped card composes raw learned steps"
    assert folding_percent(session) < SAFE_FOLDING_PERCENT


@pytest.mark.parametrize("model_id", SHIPPED)
def test_retired_chain_runs_as_its_card_says(model_id, sample_pair, recipe_models):
    """``<id>+tto`` as a user gets it (no options): the card's chain settings and number of steps; it ends
    well above the affine Dice of the sample pair."""
    card = read_card(MODELS / model_id)
    chain = chain_settings(card)
    assert "chain" in card["inference"] and chain.tto["regularization"] > 0
    name = f"{model_id}+tto"
    assert policy_default_steps(name) == chain.total_steps
    policy = make_policy(name)
    assert policy.first_steps == chain.learned_steps
    assert policy.then.config.regularization == chain.tto["regularization"]
    session = RegistrationSession(
        *sample_pair[:2], policy, SessionOptions(device="cpu", seed=0), *sample_pair[2:]
    )
    session.prepare()
    dice = [session.reports[0].dice] + [report.dice for report in session.run(policy_default_steps(name))]
    assert dice[-1] > dice[0] + 0.1, f"{name}: Dice per step {[round(d, 3) for d in dice]}"
    assert folding_percent(session) < SAFE_FOLDING_PERCENT


def test_only_models_that_meet_the_bar_ship():
    """``models/`` lists what ships: no folder there is one of the retired recipes (each would be offered in
    the panel), and the registry of a user's clone offers ``tto`` and the shipped models alone."""
    from RLRegistrationLib.policies.cards import models_dir

    shipped = {p.parent.name for p in (REPO / "models").glob("*/card.json")}
    assert not shipped & set(SHIPPED)
    assert models_dir() == REPO / "models" and (REPO / "models" / "README.md").is_file()
