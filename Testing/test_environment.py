"""Tests of RLRegistrationLib.environment: K-means pseudo-labels, composition, reward, folding penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from RLRegistrationLib.fields.spatial import compose_displacements, warp
from RLRegistrationLib.synthesis.contrast import synthesize_image
from RLRegistrationLib.synthesis.pairs import random_smooth_deformation
from RLRegistrationLib.training.data import phantom_label_map
from RLRegistrationLib.training.environment import (
    RegistrationEnv,
    folded_fraction,
    kmeans_pseudo_labels,
    mean_dice,
)


def _deformed_pair(seed: int, shape=(32, 32, 32), max_disp=4.0):
    """Fixed image, moving image = the phantom's labels warped by ``w`` then synthesized, and ``w``."""
    labels = phantom_label_map(shape, seed)
    fixed = torch.from_numpy(synthesize_image(labels, "t1", rng=0))[None, None]
    w = torch.from_numpy(random_smooth_deformation(shape, seed, max_disp, 8.0))[None]
    label_tensor = torch.from_numpy(labels.astype(np.float32))[None, None]
    moving_labels = warp(label_tensor, w, mode="nearest")[0, 0].numpy().astype(np.uint16)
    moving = torch.from_numpy(synthesize_image(moving_labels, "t1", rng=1))[None, None]
    return fixed, moving, w, label_tensor.long(), torch.from_numpy(moving_labels.astype(np.int64))[None, None]


def test_kmeans_recovers_three_levels_sorted_by_mean():
    labels = torch.zeros(1, 1, 12, 12, 12, dtype=torch.long)
    labels[..., 2:10, 2:10, 2:5] = 3
    labels[..., 2:10, 2:10, 5:8] = 1
    labels[..., 2:10, 2:10, 8:10] = 2
    levels = torch.tensor([0.0, 0.2, 0.5, 0.9])
    image = levels[labels] + 0.01 * torch.randn(labels.shape)
    image[labels == 0] = 0
    assert torch.equal(kmeans_pseudo_labels(image, 3), labels)


def test_mean_dice_skips_absent_classes():
    a = torch.tensor([0, 1, 1, 2]).view(1, 1, 1, 1, 4)
    b = torch.tensor([0, 1, 2, 2]).view(1, 1, 1, 1, 4)
    assert float(mean_dice(a, b, [1, 2, 5])) == pytest.approx((2 / 3 + 2 / 3) / 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_reward_positive_when_deformation_partly_undone_negative_when_worse(seed):
    fixed, moving, w, _, _ = _deformed_pair(seed)
    env = RegistrationEnv(episode_length=3, reward="kmeans")
    env.reset(fixed, moving)
    _, reward, _, info = env.step(-0.5 * w)  # moving(x) = fixed(x + w(x)): -w/2 undoes half of it
    assert float(reward) > 0 and float(info["dice_gain"]) > 0
    env.reset(fixed, moving)
    _, reward, _, _ = env.step(0.5 * w)  # more deformation
    assert float(reward) < 0


def test_true_label_reward(seed=2):
    fixed, moving, w, fixed_labels, moving_labels = _deformed_pair(seed)
    env = RegistrationEnv(episode_length=2, reward="labels", fold_weight=0.0)
    env.reset(fixed, moving, fixed_labels, moving_labels)
    _, reward, _, _ = env.step(-0.5 * w)
    assert float(reward) > 0
    with pytest.raises(ValueError, match="labels"):
        env.reset(fixed, moving)


def test_steps_compose_and_warp_from_the_original_moving_image():
    fixed, moving, w, _, _ = _deformed_pair(3, shape=(16, 16, 16), max_disp=2.0)
    env = RegistrationEnv(episode_length=2, fold_weight=0.0)
    env.reset(fixed, moving)
    a1, a2 = -0.3 * w, -0.2 * w.flip(2)
    env.step(a1)
    state, _, done, _ = env.step(a2)
    expected = compose_displacements(a2, compose_displacements(a1, torch.zeros_like(a1)))
    torch.testing.assert_close(state.field, expected)
    torch.testing.assert_close(state.warped, warp(moving, expected))
    assert done and state.t == 2
    assert state.observation().shape == (1, 2, 16, 16, 16)


def test_folding_penalty():
    fixed, moving, _, _, _ = _deformed_pair(4, shape=(16, 16, 16))
    folding = torch.zeros(1, 3, 16, 16, 16)
    folding[0, 0, :, :, 8:] = -6.0  # the right half jumps left: det J < 0 at the seam
    fraction = float(folded_fraction(folding))
    assert fraction > 0
    rewards = []
    for weight in (0.0, 1.0):
        env = RegistrationEnv(episode_length=1, fold_weight=weight)
        env.reset(fixed, moving)
        rewards.append(float(env.step(folding)[1]))
    assert rewards[0] - rewards[1] == pytest.approx(100.0 * fraction, rel=1e-4)
