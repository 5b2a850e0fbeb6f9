"""The models shipped in ``models/``: their cards are complete, the checksums hold, and each policy raises
the Dice of the embedded sample pair within its learned steps (on CPU, as a user would run it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from RLRegistrationLib.learned_policies import load_model, read_card
from RLRegistrationLib.policies import make_policy
from RLRegistrationLib.session import RegistrationSession, SessionOptions

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
SAMPLE = REPO / "RLRegistration" / "RLRegistrationLib" / "sample_data"
SHIPPED = ["spac-brain-synth", "morphseek-brain-synth", "morphseek-brain-synth-warmup"]


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
def test_shipped_policy_improves_dice_on_the_sample_pair(model_id, sample_pair):
    card = read_card(MODELS / model_id)
    steps = int(card["inference"]["steps"])
    options = SessionOptions(device="cpu", seed=0)
    session = RegistrationSession(*sample_pair[:2], make_policy(model_id), options, *sample_pair[2:])
    session.prepare()
    reports = list(session.run(steps))
    before, after = session.reports[0].dice, reports[-1].dice
    assert after > before + 0.02, f"{model_id}: Dice {before:.3f} -> {after:.3f} after {steps} steps"
