"""The Greedy method of the benchmarks (``benchmarks/peer_methods.py``): its RAS affine and LPS warp, composed as one SimpleITK
transform, reproduce Greedy's own reslicing. Skipped when picsl-greedy (the ``bench`` extra) is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RLRegistrationLib.io.sample_pair import SAMPLE_DIR

pytest.importorskip("picsl_greedy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import peer_methods  # noqa: E402


def test_greedy_transform_matches_greedys_reslicing(monkeypatch):
    monkeypatch.setattr(peer_methods, "GREEDY_AFFINE", "-a -dof 12 -m NCC 2x2x2 -ia-image-centers -n 20x10")
    monkeypatch.setattr(peer_methods, "GREEDY_DEFORMABLE", "-m NCC 2x2x2 -n 20x10")
    fixed = sitk.ReadImage(str(SAMPLE_DIR / "fixed.nii.gz"), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(SAMPLE_DIR / "moving.nii.gz"), sitk.sitkFloat32)
    greedy = peer_methods.greedy_register(fixed, moving, threads=1)
    transform, _ = peer_methods.greedy_transform(greedy)
    greedy.execute("-threads 1 -V 0 -rf fixed -rm moving resliced -r warp affine", resliced=None)
    ours = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    theirs = sitk.GetArrayFromImage(greedy["resliced"])
    # (the composition in the other order, u after A, differs by ~20 %)
    assert np.abs(ours - theirs).mean() < 1e-2 * np.abs(theirs).mean()
    identity = sitk.GetArrayFromImage(sitk.Resample(moving, fixed))
    assert np.abs(identity - theirs).mean() > 0.05 * np.abs(theirs).mean()  # the check can fail


def test_greedy_with_nmi_registers_a_t2_moving_image_where_its_ncc_fails(monkeypatch):
    """``greedy-nmi`` (the cross-contrast anchor): Greedy's NCC is signed, so on a T2-like moving image
    its affine turns the wrong way; the NMI variant of the same schedule aligns the labels."""
    from RLRegistrationLib.fields.metrics import evaluate_transform
    from RLRegistrationLib.synthesis.contrast import synthesize_volume

    monkeypatch.setattr(peer_methods, "GREEDY_AFFINE", "-a -dof 12 -m NCC 2x2x2 -ia-image-centers -n 20x10")
    monkeypatch.setattr(peer_methods, "GREEDY_DEFORMABLE", "-m NCC 2x2x2 -n 20x10")
    fixed = sitk.ReadImage(str(SAMPLE_DIR / "fixed.nii.gz"), sitk.sitkFloat32)
    fixed_labels = sitk.ReadImage(str(SAMPLE_DIR / "fixed_labels.nii.gz"))
    moving_labels = sitk.ReadImage(str(SAMPLE_DIR / "moving_labels.nii.gz"))
    moving = synthesize_volume(moving_labels, contrast="t2", rng=7)
    dice = {}
    for multimodal in (False, True):
        greedy = peer_methods.greedy_register(fixed, moving, threads=1, multimodal=multimodal)
        transform, _ = peer_methods.greedy_transform(greedy)
        dice[multimodal] = evaluate_transform(fixed_labels, moving_labels, transform, with_hd95=False)["dice"]
    assert dice[True] > 0.5 and dice[True] > dice[False] + 0.3, dice  # 0.57 against 0.12 when measured
