"""Training pairs captured from the command's own preparation (``training.command_pairs``): the session's
working-grid tensors with the label maps carried through the pre-alignment, brought to the network grid as
the policy does, fitted to the training shape, cached once."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import blob_array, image_on_grid, make_grid

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.fields.metrics import mean_dice
from RLRegistrationLib.fields.spatial import warp
from RLRegistrationLib.policies.network_policy import network_shape
from RLRegistrationLib.synthesis.contrast import smooth_random_field
from RLRegistrationLib.synthesis.pairs import random_smooth_deformation
from RLRegistrationLib.training.command_pairs import (
    CapturedBank,
    capture_pair,
    deform_pair,
    fit_shape,
    load_captured,
    on_network_grid,
)
from RLRegistrationLib.training.data import DataConfig, pair_loader, validation_pairs


def test_fit_shape_pads_and_crops_centred():
    tensor = torch.arange(4 * 6 * 3, dtype=torch.float32).reshape(1, 1, 4, 6, 3)
    out = fit_shape(tensor, (6, 4, 3))
    assert out.shape == (1, 1, 6, 4, 3)
    assert torch.equal(out[0, 0, 1:5], tensor[0, 0, :, 1:5])  # padded 1 + 1 on D, cropped 1 + 1 on H
    assert float(out[0, 0, 0].abs().sum()) == 0.0 and float(out[0, 0, 5].abs().sum()) == 0.0


def test_a_captured_pair_goes_to_the_network_grid_as_the_policy_resizes():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 4, (1, 1, 30, 36, 24)))
    pair = {"fixed": torch.rand(1, 1, 30, 36, 24), "moving": torch.rand(1, 1, 30, 36, 24)}
    pair.update(fixed_labels=labels, moving_labels=labels.clone(), spacing_mm=2.0)
    out = on_network_grid(pair, 3.0, 16, (16, 32, 32))
    assert network_shape((30, 36, 24), 2.0 / 3.0, 16) == (16, 32, 16)  # then fitted to (16, 32, 32)
    assert all(out[k].shape == (1, 1, 16, 32, 32) for k in ("fixed", "moving", "fixed_labels"))
    assert out["fixed_labels"].dtype == torch.int64 and set(out["fixed_labels"].unique().tolist()) <= {
        0,
        1,
        2,
        3,
    }
    bank = CapturedBank([pair, pair], 3.0, 16, (16, 32, 32))
    batch = next(pair_loader(bank, DataConfig(), batch_size=2, seed=0))
    assert batch["moving"].shape == (2, 1, 16, 32, 32) and batch["moving_labels"].dtype == torch.int64
    assert len(validation_pairs(bank, DataConfig(), 5)) == 2


def test_capture_carries_the_moving_labels_through_the_prealignment():
    grid = make_grid((28, 26, 24), (2.0, 2.0, 2.0), (-20.0, 10.0, 5.0))
    array = blob_array(grid.shape, seed=5)
    shifted = np.roll(array, 2, axis=1)  # 4 mm along j
    fixed, moving = image_on_grid(array, grid), image_on_grid(shifted, grid)
    threshold = float(np.percentile(array, 85))
    fixed_labels = image_on_grid((array > threshold).astype(np.uint16), grid)
    moving_labels = image_on_grid((shifted > threshold).astype(np.uint16), grid)
    captured = capture_pair(fixed, moving, sitk.Cast(fixed_labels, sitk.sitkUInt16), moving_labels)
    assert captured["spacing_mm"] == 2.0 and captured["fixed"].shape == captured["moving_labels"].shape
    assert 0.0 <= float(captured["moving"].min()) and float(captured["moving"].max()) <= 1.0
    before = mean_dice(sitk.GetArrayFromImage(fixed_labels), sitk.GetArrayFromImage(moving_labels), [1])
    after = mean_dice(captured["fixed_labels"].numpy(), captured["moving_labels"].numpy(), [1])
    assert after > 0.95 and after > before + 0.1, (before, after)


def test_captured_pairs_are_made_once_and_cached(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return [{"fixed": torch.ones(1, 1, 2, 2, 2)}]

    path = tmp_path / "cache" / "t1_1-2.pt"
    first, second = load_captured(path, make), load_captured(path, make)
    assert len(calls) == 1 and torch.equal(first[0]["fixed"], second[0]["fixed"])
    assert not path.with_suffix(".partial").exists()
    with pytest.raises(InputError, match="source"):
        DataConfig.from_dict({"source": "scanner"})
    with pytest.raises(InputError, match="render_factor"):
        DataConfig.from_dict({"source": "command", "render_factor": 2})


def blob_pair(shape=(24, 32, 32)) -> dict:
    """A captured-style pair on the network grid: two identical ellipsoid label maps, images 0.8 × label."""
    d, h, w = shape
    k, j, i = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    inside = ((k - d / 2) / (d / 3)) ** 2 + ((j - h / 2) / (h / 3)) ** 2 + ((i - w / 2) / (w / 3)) ** 2 < 1
    labels = inside.long()[None, None]
    return {
        "fixed": 0.8 * labels.float(),
        "moving": 0.8 * labels.float(),
        "fixed_labels": labels,
        "moving_labels": labels.clone(),
    }


def test_deform_pair_moves_each_image_with_its_labels():
    pair = blob_pair()
    out = deform_pair(pair, np.random.default_rng(5), 3.0, 8.0)  # draws 2.4 and 2.5 voxels at most
    for image, labels in (("fixed", "fixed_labels"), ("moving", "moving_labels")):
        assert out[labels].dtype == torch.int64 and set(out[labels].unique().tolist()) == {0, 1}
        changed = float((out[labels] != pair[labels]).float().mean())
        assert changed > 0.002, changed  # the shape moved ...
        volume = float(out[labels].sum()) / float(pair[labels].sum())
        assert 0.8 < volume < 1.25, volume  # ... smoothly, not scrambled
        # the image moved with its labels: where the warped image is clearly inside or outside, so are they
        # (nearest and trilinear sampling may disagree next to the edge)
        sure = (out[image] - 0.4).abs() > 0.2
        disagree = ((out[image] > 0.4) != (out[labels] == 1))[sure].float().mean()
        assert float(disagree) < 0.002, float(disagree)
    # fixed and moving get their own deformations, so an identical pair no longer is one
    assert float((out["fixed_labels"] != out["moving_labels"]).float().mean()) > 0.002


def test_a_deforming_bank_draws_new_shapes_of_the_same_pair():
    pair = {k: v for k, v in blob_pair((16, 32, 32)).items()}
    pair.update(spacing_mm=3.0)
    plain = CapturedBank([pair], 3.0, 16, (16, 32, 32))
    deforming = CapturedBank([pair], 3.0, 16, (16, 32, 32), deform=(4.0, 6.0))
    still = [batch["fixed_labels"] for batch in islice(plain.stream(1, seed=0), 8)]
    drawn = [
        torch.cat([b["fixed_labels"], b["moving_labels"]]) for b in islice(deforming.stream(1, seed=0), 8)
    ]
    assert all(torch.equal(still[0], s) for s in still[1:])
    # new shapes on most draws (a draw's largest displacement is uniform in [0, 4] voxels: a small one
    # leaves this blob's labels as they were)
    assert len({d.numpy().tobytes() for d in drawn}) >= 6


def test_deforming_a_pair_with_a_target_keeps_the_target_exact():
    """Only the fixed image moves and the target follows: the moving image warped by the new target
    matches the deformed fixed image as closely as it matched the fixed one before."""
    rng = np.random.default_rng(2)
    shape = (24, 32, 32)
    moving = torch.from_numpy(smooth_random_field(shape, rng, 10.0, channels=1))[None]  # smooth: little
    # interpolation error
    phi = torch.from_numpy(random_smooth_deformation(shape, rng, 2.0, 8.0))[None]
    fixed = warp(moving, phi)  # the target is exact: moving o (id + phi) = fixed
    labels = (moving > moving.mean()).long()
    pair = {"fixed": fixed, "moving": moving, "fixed_labels": labels, "moving_labels": labels.clone()}
    out = deform_pair({**pair, "target_field": phi}, np.random.default_rng(5), 3.0, 8.0)
    assert torch.equal(out["moving"], moving) and torch.equal(out["moving_labels"], labels)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))  # away from the border
    moved = float((out["fixed"] - fixed)[inner].abs().mean())
    stale = float((warp(moving, phi) - out["fixed"])[inner].abs().mean())
    kept = float((warp(moving, out["target_field"]) - out["fixed"])[inner].abs().mean())
    assert moved > 0.02 and stale > 0.02, (moved, stale)  # the fixed image moved, the old target is stale
    assert kept < 0.1 * stale, (kept, stale)  # the composed target is the answer again


def test_captured_deformation_needs_captured_pairs():
    for values in ({"source": "command"}, {"source": "command", "targets": "tto-standard"}):
        assert DataConfig.from_dict({**values, "captured_deform_vox": 2.0}).captured_deform_vox == 2.0
    with pytest.raises(InputError, match="captured_deform_vox"):
        DataConfig.from_dict({"captured_deform_vox": 2.0})
