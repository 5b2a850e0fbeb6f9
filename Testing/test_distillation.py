"""Distillation of the optimizer (issue 25 item 2): captured training pairs that keep the field the
command's ``tto`` finds for them, exact left-right flips of such pairs, the target term of the registration
loss, the config checks and a training run that uses them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_array, image_on_grid, make_grid
from test_training import small_config
from tiny_training import SHAPE

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.fields.spatial import warp
from RLRegistrationLib.training.command_pairs import CapturedBank, capture_pair, flip_pair, left_right_axis
from RLRegistrationLib.training.config import TrainConfig
from RLRegistrationLib.training.losses import RegistrationLoss

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def bump_field(shape, amplitude: float, width: float) -> torch.Tensor:
    """A smooth non-affine field (1, 3, D, H, W) in voxels: a centred Gaussian bump displacing along i and j."""
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    k, j, i = torch.meshgrid(*axes, indexing="ij")
    bump = amplitude * torch.exp(-(i**2 + j**2 + k**2) / (2 * width**2))
    return torch.stack([bump, -0.5 * bump, torch.zeros_like(bump)])[None]


def test_the_target_field_is_the_optimizers_and_aligns_the_captured_images():
    grid = make_grid((32, 32, 32), (2.0, 2.0, 2.0), (-30.0, 4.0, 12.0))
    array = blob_array(grid.shape, seed=3, blobs=16)
    moving_array = warp(torch.from_numpy(array)[None, None], bump_field(grid.shape, 4.0, 8.0))[0, 0].numpy()
    threshold = float(np.percentile(array, 80))
    labels = [(a > threshold).astype(np.uint16) for a in (array, moving_array)]
    images = [image_on_grid(a, grid) for a in (array, moving_array, *labels)]
    captured = capture_pair(*images, target=True)
    target = captured["target_field"]
    assert target.dtype == torch.float16 and target.shape == (1, 3, *captured["fixed"].shape[2:])
    fixed, moving = captured["fixed"], captured["moving"]
    before = float((fixed - moving).pow(2).mean())
    after = float((fixed - warp(moving, target.float())).pow(2).mean())
    assert float(target.abs().max()) > 0.5 and after < 0.8 * before, (before, after)
    assert captured["left_right_axis"] == -1  # identity direction: i runs along LPS x
    assert "target_field" not in capture_pair(*images)


def test_left_right_axis_follows_the_direction():
    assert left_right_axis(np.eye(3)) == -1
    assert left_right_axis(np.array([[0, 0, -1], [1, 0, 0], [0, 1, 0]])) == -3  # k along x (sagittal)
    assert left_right_axis(np.array([[0, 0.9, 0.1], [1, 0, 0], [0, 0.1, 0.9]])) == -2


@pytest.mark.parametrize("axis", [-1, -2, -3])
def test_a_flipped_pair_is_the_same_registration_mirrored(axis):
    torch.manual_seed(0)
    moving = torch.rand(1, 1, 12, 14, 10)
    target = bump_field((12, 14, 10), 1.5, 3.0) + 0.3 * torch.randn(1, 3, 1, 1, 1)
    pair = {"fixed": moving.clone(), "moving": moving, "target_field": target}
    pair["fixed_labels"] = pair["moving_labels"] = (moving > 0.5).long()
    flipped = flip_pair(pair, axis)
    mirrored = warp(flipped["moving"], flipped["target_field"])
    assert torch.allclose(mirrored, warp(moving, target).flip(axis), atol=1e-5)
    assert torch.equal(flipped["fixed_labels"], pair["fixed_labels"].flip(axis))
    assert torch.equal(flip_pair(flipped, axis)["target_field"], target)  # an involution


def test_the_target_term_is_the_mean_squared_distance_and_pulls_toward_the_target():
    fixed = moving = torch.rand(1, 1, 8, 8, 8)
    previous, weight = torch.zeros(1, 3, 8, 8, 8), torch.full((1, 1, 8, 8, 8), 0.5)
    step = torch.zeros(1, 3, 8, 8, 8)
    step[:, 0] = 0.5
    target = torch.zeros(1, 3, 8, 8, 8)
    plain, _ = RegistrationLoss()(fixed, moving, previous, step, weight)
    loss, parts = RegistrationLoss(target_weight=2.0)(fixed, moving, previous, step, weight, target=target)
    assert float(parts["target_loss"]) == pytest.approx(0.25)
    assert float(loss - plain) == pytest.approx(0.5, abs=1e-6)
    _, without = RegistrationLoss(target_weight=2.0)(fixed, moving, previous, step, weight)
    assert "target_loss" not in without  # no target given: no term
    free = step.clone().requires_grad_(True)
    target[:, 1] = 1.0
    distill = RegistrationLoss(diffusion_weight=0.0, prior_weight=0.0, target_weight=10.0)
    first, parts = distill(fixed, moving, previous, free, weight, target=target)
    first.backward()
    with torch.no_grad():
        free -= 0.05 * free.grad / free.grad.abs().max()
    _, after = distill(fixed, moving, previous, free.detach(), weight, target=target)
    assert float(after["target_loss"]) < float(parts["target_loss"]) - 0.01


def test_the_config_asks_for_targets_where_they_exist():
    values = small_config()
    values["loss"] = {"target_weight": 1.0}
    with pytest.raises(InputError, match="data.targets"):
        TrainConfig.from_dict(values)
    values["data"] = {**values["data"], "targets": "tto-standard"}
    with pytest.raises(InputError, match="source 'command'"):
        TrainConfig.from_dict(values)
    values["data"]["targets"] = "greedy"
    with pytest.raises(InputError, match="targets must be"):
        TrainConfig.from_dict(values)


def test_the_distillation_configs_differ_from_their_control_only_where_intended():
    def load(name: str) -> dict:
        values = json.loads((CONFIGS / f"spac_{name}_command_cpu.json").read_text())
        for key in ("comment", "id", "description"):
            values.pop(key)
        return values

    run, control, without_labels = load("distill"), load("reg_flips"), load("distill_nolabels")
    more_brains = load("distill10")
    assert (
        more_brains["data"].pop("train_subjects") == list(range(1, 11))
        and more_brains["data"].pop("val_pairs") == 0
    )
    assert more_brains["data"] == {
        k: v for k, v in run["data"].items() if k not in ("train_subjects", "val_pairs")
    }
    assert {k: v for k, v in more_brains.items() if k != "data"} == {
        k: v for k, v in run.items() if k != "data"
    }
    assert run["loss"]["label_weight"] > 0 and without_labels["loss"].pop("label_weight") == 0.0
    run["loss"].pop("label_weight")
    assert run == without_labels  # the label-free run: the label term off, nothing else
    assert run["loss"].pop("target_weight") > 0 and control["loss"].pop("target_weight", 0.0) == 0.0
    control["loss"].pop("label_weight")
    assert run == control
    assert run["data"]["targets"] == "tto-standard" and run["data"]["flips"] is True
    # the deforming runs: their run or control with captured_deform_vox, nothing else (the control reads the
    # captured pairs without their targets, the same images)
    deformed, deformed_control = load("distill_deform"), load("reg_deform")
    assert (
        deformed["data"].pop("captured_deform_vox") > 0
        and deformed_control["data"].pop("captured_deform_vox") > 0
    )
    deformed["loss"].pop("label_weight"), deformed["loss"].pop("target_weight")
    assert deformed == run
    assert deformed_control["data"].pop("targets") == "" and control["data"].pop("targets") == "tto-standard"
    deformed_control["loss"].pop("label_weight"), deformed_control["loss"].pop("target_weight")
    assert deformed_control == control
    for name in ("distill", "distill_nolabels", "distill10", "reg_flips"):
        TrainConfig.load(CONFIGS / f"spac_{name}_command_cpu.json")


def captured_pairs(count: int, targets: bool) -> list[dict]:
    """``count`` captured-like pairs on a 16^3 working grid at 2 mm (random smooth images and labels), with
    a smooth target field when ``targets``."""
    pairs = []
    for seed in range(count):
        array = torch.from_numpy(blob_array(SHAPE, seed=seed))[None, None] / 2
        pair = {"fixed": array, "moving": array.roll(1, dims=-1), "spacing_mm": 2.0, "left_right_axis": -1}
        pair["fixed_labels"] = (pair["fixed"] > 0.4).short() * 2  # FreeSurfer's left white matter
        pair["moving_labels"] = (pair["moving"] > 0.4).short() * 2
        if targets:
            pair["target_field"] = bump_field(SHAPE, 1.0, 4.0).half()
        pairs.append(pair)
    return pairs


def test_a_spac_run_on_captured_pairs_with_targets_logs_the_target_term(tmp_path):
    from RLRegistrationLib.training.train import train

    values = small_config()
    values["data"] = {**values["data"], "source": "command", "targets": "tto-standard", "flips": True}
    values["loss"] = {**values["loss"], "target_weight": 1.0}
    banks = (
        CapturedBank(captured_pairs(3, True), 2.0, 16, SHAPE, flips=True),
        CapturedBank(captured_pairs(1, False), 2.0, 16, SHAPE),
    )
    batch = next(banks[0].stream(2, seed=0))
    assert batch["target_field"].shape == (2, 3, *SHAPE) and "target_field" not in next(banks[1].stream(1, 0))
    out = train(TrainConfig.from_dict(values), tmp_path / "m", tmp_path / "r", progress=False, banks=banks)
    with open(tmp_path / "r" / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(np.isfinite(float(row["target_loss"])) for row in rows)
    assert json.loads((out / "card.json").read_text())["id"] == "spac-test"
