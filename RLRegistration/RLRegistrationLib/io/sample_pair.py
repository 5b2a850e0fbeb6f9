"""The embedded sample pair: two synthetic T1-like brains of two SynthSeg subjects at 2 mm with their label
maps (``sample_data/``, made by ``scripts/make_sample_pair.py``), for the demo, the browser app and tests."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
#: role -> file of the pair
SAMPLE_FILES = {
    "fixed": SAMPLE_DIR / "fixed.nii.gz",
    "moving": SAMPLE_DIR / "moving.nii.gz",
    "fixed_labels": SAMPLE_DIR / "fixed_labels.nii.gz",
    "moving_labels": SAMPLE_DIR / "moving_labels.nii.gz",
}
