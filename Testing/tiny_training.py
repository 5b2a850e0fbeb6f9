"""What the training tests share: a 16^3 (2 mm) data section on phantom label maps and its label banks.

Subjects 1-3 train and 4-5 validate; the phantoms are 20^3 label maps (``phantom_label_map``), so a test
trains in seconds on the CPU without ``../shared``.
"""

from __future__ import annotations

from RLRegistrationLib.training.data import LabelBank, phantom_label_map

SHAPE = (16, 16, 16)


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
