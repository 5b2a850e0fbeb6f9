"""The trained models: a model ships in ``models/`` only where it meets issue 25's bar (``models/README.md``),
and its card carries the validation run that shows it; the retired ones in ``recipes/`` keep complete cards.
Every card's checksum holds, and each model's learned steps and its chain raise the Dice of the embedded
sample pair (on CPU, as a user would run them; the retired ones with ``RLREG_MODELS_DIR=recipes``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from RLRegistrationLib.fields.metrics import jacobian_of_field, jacobian_stats
from RLRegistrationLib.policies.cards import (
    chain_settings,
    inference_step_options,
    offered_alone,
    offered_sampling,
    read_card,
)
from RLRegistrationLib.policies.network_policy import load_model
from RLRegistrationLib.policies.registry import (
    FAMILY_POLICIES,
    available_policies,
    make_policy,
    policy_default_steps,
    policy_supports_sampling,
)
from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "RLRegistration" / "RLRegistrationLib" / "sample_data"
SHIPPED = ["spac-brain-synth"]  # meets the bar as a chain at fine quality
RETIRED = [
    "morphseek-brain-synth",
    "morphseek-brain-synth-warmup",
    "morphseek-brain-synth-grpo-labels",
    "morphseek-brain-synth-grpo-group24",
    "morphseek-brain-synth-grpo-conservative",
    "spac-brain-synth-2mm",
]  # training recipes
FOLDERS = {**{m: REPO / "models" / m for m in SHIPPED}, **{m: REPO / "recipes" / m for m in RETIRED}}
#: the models whose card sets how their chain runs (not the two measured alone only)
CHAINED = [m for m in SHIPPED + RETIRED if "chain" in read_card(FOLDERS[m])["inference"]]
SAFE_FOLDING_PERCENT = 0.05  # issue 13: every shipped policy folds less than this


def folding_percent(session) -> float:
    """% det J <= 0 of the session's whole transform on the fixed grid (as the benchmarks measure it)."""
    return jacobian_stats(jacobian_of_field(session.result().displacement))["folding_percent"]


@pytest.fixture(scope="module")
def sample_pair() -> list[sitk.Image]:
    images = [sitk.ReadImage(str(SAMPLE / f"{n}.nii.gz"), sitk.sitkFloat32) for n in ("fixed", "moving")]
    return images + [sitk.ReadImage(str(SAMPLE / f"{n}_labels.nii.gz")) for n in ("fixed", "moving")]


@pytest.mark.parametrize("model_id", SHIPPED + RETIRED)
def test_card_documents_the_training(model_id):
    card = read_card(FOLDERS[model_id])
    training = card["training"]
    assert card["id"] == model_id
    assert training["command"].startswith("rlreg train --config configs/")
    assert (REPO / training["command"].split("--config ")[1].split()[0]).is_file()
    assert training["steps"] > 0 and training["wall_time_s"] > 0 and training["hardware"]
    assert 0.0 < card["validation"]["val_dice"] <= 1.0
    network, _ = load_model(FOLDERS[model_id])  # checksum and architecture checked
    assert sum(p.numel() for p in network.parameters()) == card["parameters"]
    assert (FOLDERS[model_id] / card["weights"]).stat().st_size < 8 * 2**20


@pytest.mark.parametrize("model_id", SHIPPED + RETIRED)
def test_learned_steps_improve_dice_on_the_sample_pair(model_id, sample_pair, learned_models):
    """Within its first 3 steps the learned policy raises Dice by more than 0.05, and after the card's number
    of steps Dice is still above the affine result (also for a model offered only as a chain)."""
    card = read_card(FOLDERS[model_id])
    steps = int(card["inference"]["steps"])
    options = SessionOptions(device="cpu", seed=0)
    policy = FAMILY_POLICIES[card["family"]].policy_class()(FOLDERS[model_id], device="cpu")
    session = RegistrationSession(*sample_pair[:2], policy, options, *sample_pair[2:])
    session.prepare()
    dice = [session.reports[0].dice] + [report.dice for report in session.run(steps)]
    assert max(dice[1:4]) > dice[0] + 0.05, f"{model_id}: Dice per step {[round(d, 3) for d in dice]}"
    assert dice[-1] > dice[0], f"{model_id}: Dice per step {[round(d, 3) for d in dice]}"
    assert inference_step_options(card)[0], f"{model_id}: the shipped card composes raw learned steps"
    assert folding_percent(session) < SAFE_FOLDING_PERCENT


@pytest.mark.parametrize("model_id", CHAINED)
def test_chain_runs_as_its_card_says(model_id, sample_pair, learned_models):
    """``<id>+tto`` as a user gets it (no options): the card's chain settings and number of steps; it ends
    well above the affine Dice of the sample pair."""
    card = read_card(FOLDERS[model_id])
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
    """``models/`` lists what ships: each shipped card carries the validation run that shows its bar met
    (the numbers equal the benchmark's result file), a model is offered alone only when its learned steps
    alone meet that bar too, and no retired recipe is there (each would be offered in the panel)."""
    from RLRegistrationLib.policies.cards import models_dir

    shipped = {p.parent.name for p in (REPO / "models").glob("*/card.json")}
    assert shipped == set(SHIPPED) and not shipped & set(RETIRED)
    # the library's own models folder (a link in the source tree, a copy in a wheel) is this one
    assert models_dir().resolve() == (REPO / "models").resolve() and (REPO / "models" / "README.md").is_file()
    for model_id in SHIPPED:
        card = read_card(REPO / "models" / model_id)
        bar = card["validation"]["fine_chain"]
        _check_against_results(bar, {"rlreg-fine": bar["tto_fine"], "rlreg-chain-fine": bar["chain"]})
        chain, tto = bar["chain"], bar["tto_fine"]
        assert chain["mean_dice"] >= tto["mean_dice"] + 0.005 and chain["mean_seconds"] <= tto["mean_seconds"]
        assert chain["max_folding_percent"] < SAFE_FOLDING_PERCENT
        assert f"{model_id}+tto" in available_policies()
        if not offered_alone(card):
            assert model_id not in available_policies()
            continue
        # offered alone: Dice >= ANTs SyN's in the same run, in <= 10 s for the whole command
        alone = card["validation"]["alone"]
        measured = {"rlreg-learned-alone-command": alone["rlreg_register"], "syn": alone["syn"]}
        _check_against_results(alone, measured)
        command, syn = alone["rlreg_register"], alone["syn"]
        assert command["mean_dice"] >= syn["mean_dice"] and command["mean_seconds"] <= 10.0
        assert command["max_folding_percent"] < SAFE_FOLDING_PERCENT
        assert model_id in available_policies()


def test_sampling_is_offered_only_where_the_map_beats_the_edges():
    """``--samples K`` is offered for a shipped model only when its uncertainty map (the spread of K
    trajectories) predicts the registration's errors better than the fixed image's edges do: every card
    names the run that measured its map (``inference.offered_sampling_measured``), and the rows of that
    run decide."""
    for model_id in SHIPPED:
        card = read_card(REPO / "models" / model_id)
        measured = card["inference"].get("offered_sampling_measured")
        assert measured, f"{model_id}: its card names no measurement of its uncertainty map"
        rows = json.loads((REPO / measured["results"]).with_suffix(".json").read_text())["rows"]
        own = [r for r in rows if r["model"] == model_id]
        assert len(own) >= 4
        spread = sum(r["auroc_spread"] for r in own) / len(own)
        edges = sum(r["auroc_edges"] for r in own) / len(own)
        assert (spread > edges) == offered_sampling(card)
        assert policy_supports_sampling(model_id) == offered_sampling(card)


def _check_against_results(block: dict, measured_by_method: dict) -> None:
    """A card's validation numbers equal the means of the rows of its result file, method by method."""
    rows = json.loads((REPO / block["results"]).read_text())["rows"]
    for method, measured in measured_by_method.items():
        group = [r for r in rows if r["method"] == method]
        assert len(group) == block["pairs"] == 4
        assert measured["mean_dice"] == pytest.approx(sum(r["dice"] for r in group) / 4, abs=5e-5)
        assert measured["mean_seconds"] == pytest.approx(sum(r["seconds"] for r in group) / 4, abs=0.05)
        assert measured["max_folding_percent"] == pytest.approx(
            max(r["folding_percent"] for r in group), abs=5e-5
        )


def test_the_wheel_carries_the_shipped_models(tmp_path):
    """``pip install .`` (not only an editable install) gets the shipped models: the wheel holds them where
    ``models_dir()`` looks first (``RLRegistrationLib/models``, a link to ``models/`` in the source tree)."""
    import subprocess
    import sys
    import zipfile

    command = [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*command, "-w", str(tmp_path)], check=True, cwd=tmp_path, timeout=600)
    names = set(zipfile.ZipFile(next(tmp_path.glob("rlregistration-*.whl"))).namelist())
    for model_id in SHIPPED:
        for name in ("card.json", "weights.pt"):
            assert f"RLRegistrationLib/models/{model_id}/{name}" in names
    assert not any(f"/{model_id}/" in name for model_id in RETIRED for name in names)
