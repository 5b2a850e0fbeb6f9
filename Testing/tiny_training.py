"""What the training and model tests share: a 16^3 (2 mm) data section on phantom label maps and its label
banks, and a small SPAC model folder (``write_small_spac_model``).

Subjects 1-3 train and 4-5 validate; the phantoms are 20^3 label maps (``phantom_label_map``), so a test
trains in seconds on the CPU without ``../shared``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from RLRegistrationLib.policies.networks import SPACArchitecture, SPACNetwork
from RLRegistrationLib.training.config import TrainConfig
from RLRegistrationLib.training.data import phantom_label_map
from RLRegistrationLib.training.label_bank import LabelBank
from RLRegistrationLib.training.run_log import save_model

SHAPE = (16, 16, 16)
SMALL_SPAC = SPACArchitecture(
    channels=(4, 8, 8, 8), decoder_channels=(8, 8, 8, 4), plan_dim=8, weight_head_channels=4, critic_hidden=16
)


def write_small_spac_model(folder: Path, model_id: str = "spac-unit", spacing_mm: float = 2.0) -> SPACNetwork:
    """A seeded ``SMALL_SPAC`` network whose steps visibly deform, saved as a model folder (card with a
    16^3 working grid at ``spacing_mm``); returns the network in eval mode."""
    torch.manual_seed(1)
    network = SPACNetwork(SMALL_SPAC)
    with torch.no_grad():  # a visible field
        network.actor.flow.weight.normal_(std=0.05)
    cfg = TrainConfig.from_dict({"id": model_id, "model": SMALL_SPAC.to_dict()})
    cfg.data.shape, cfg.data.spacing_mm = SHAPE, spacing_mm
    save_model(folder, network.state_dict(), cfg, {"command": "test"}, {"val_dice": 0.5})
    return network.eval()


def data_section() -> dict:
    """The ``data`` section of a training config for the tiny grid (no pre-alignment, one validation pair)."""
    return {
        "train_subjects": [1, 2, 3],
        "val_subjects": [4, 5],
        "spacing_mm": 2.0,
        "shape": list(SHAPE),
        "margin": 2,
        "prealign": False,
        "val_pairs": 1,
    }


def label_bank(seeds=(1, 2, 3)) -> LabelBank:
    """Phantom label maps (one per seed) cropped and resampled to ``SHAPE``."""
    return LabelBank.from_arrays([phantom_label_map((20, 20, 20), s) for s in seeds], SHAPE, margin=2)
