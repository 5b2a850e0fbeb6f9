"""Tests of training stage (c), ``training.weight_map``: the fold-risk target of the lambda head, the
uniform-lambda override it runs the chain with, and ``tune_weight_map`` end to end on phantoms."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_training import SHAPE, data_section, label_bank, write_small_spac_model

from RLRegistrationLib.errors import InputError, OutputError
from RLRegistrationLib.frontends.cli import main as cli_main
from RLRegistrationLib.policies.base import PolicyState, PolicyStep
from RLRegistrationLib.policies.cards import sha256_of
from RLRegistrationLib.policies.chained import WeightMapOverride
from RLRegistrationLib.policies.network_policy import load_model
from RLRegistrationLib.policies.spac_policy import SPACPolicy
from RLRegistrationLib.training.weight_map import (
    WeightMapConfig,
    fold_risk,
    no_signal_region,
    tune_weight_map,
    weight_map_target,
)


def _config(**changes) -> WeightMapConfig:
    # det J < 1 (any compression) counts, so the phantom chain runs give targets with stiff parts
    values = {"det_threshold": 1.0, "pairs": 6, "epochs": 3, "learning_rate": 0.01, "data": data_section()}
    return WeightMapConfig.from_dict({**values, **changes})


def test_fold_risk_is_one_at_a_fold_and_fades_with_distance():
    det = torch.ones((1, 1, 15, 15, 15))
    assert fold_risk(det, 0.0, 1.0, 4.0).abs().max() == 0  # nothing folded: no risk
    det[0, 0, 7, 7, 7] = -0.5
    risk = fold_risk(det, 0.0, 1.0, 4.0)[0, 0]
    line = risk[7, 7, 7:].tolist()
    assert line[0] == pytest.approx(1.0)  # gain 4 at the centre, clipped to 1
    assert all(a >= b for a, b in zip(line, line[1:]))
    assert line[1] == pytest.approx(1.0, abs=0.01)  # 4 exp(-1/2) = 2.4 -> clipped
    assert line[2] == pytest.approx(4 * torch.exp(torch.tensor(-2.0)).item(), abs=0.05)
    assert line[6] < 0.01
    target = weight_map_target(det, WeightMapConfig(base_weight=0.1, det_threshold=0.0))
    assert target.min() == pytest.approx(0.1) and target.max() == pytest.approx(1.0)
    assert target[0, 0, 7, 7, 7] == pytest.approx(1.0)


def test_no_signal_region_is_the_background_beyond_the_margin():
    labels = torch.zeros((1, 1, 15, 15, 15), dtype=torch.long)
    labels[0, 0, 6:9, 6:9, 6:9] = 3
    inside = no_signal_region(labels, 0.0)[0, 0]
    assert torch.equal(inside, labels[0, 0] == 0)
    region = no_signal_region(labels, 2.0)[0, 0]
    assert not region[7, 7, 4] and not region[7, 7, 10]  # 2 voxels from the head: within the margin
    assert region[7, 7, 3] and region[7, 7, 11] and region[0, 0, 0]
    assert not region[6:9, 6:9, 6:9].any()


def test_weight_map_target_is_stiff_in_the_background_and_at_folds():
    det = torch.ones((1, 1, 15, 15, 15))
    det[0, 0, 7, 7, 7] = -0.5
    no_signal = torch.zeros((1, 1, 15, 15, 15), dtype=torch.bool)
    no_signal[..., :3] = True
    cfg = WeightMapConfig(base_weight=0.1, det_threshold=0.0, background_weight=0.4)
    target = weight_map_target(det, cfg, no_signal)[0, 0]
    assert torch.allclose(target[..., :3], torch.tensor(0.4))  # background: its weight
    assert target[7, 7, 7] == pytest.approx(1.0)  # a fold: stiff
    assert target[0, 0, 5] == pytest.approx(0.1)  # elsewhere: the base
    plain = weight_map_target(det, WeightMapConfig(base_weight=0.1, det_threshold=0.0), no_signal)
    assert plain[0, 0, 0, 0, 0] == pytest.approx(0.1)  # no background_weight: the base everywhere


class _Fixed:
    name = description = modality = "fixed"

    def reset(self, fixed, moving, spacing_mm=None):
        pass

    def propose(self, state):
        weight = torch.linspace(0.1, 0.5, 8).view(1, 1, 2, 2, 2)
        return PolicyStep(step_field=torch.zeros((1, 3, 2, 2, 2)), weight_map=weight)


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"scale": 2.0}, torch.linspace(0.2, 1.0, 8)),
        ({"uniform": True}, torch.full((8,), 0.3)),
        ({"value": 0.05}, torch.full((8,), 0.05)),
        ({"uniform": True, "scale": 0.5}, torch.full((8,), 0.15)),
        ({"value": torch.full((1, 1, 2, 2, 2), 0.7)}, torch.full((8,), 0.7)),
    ],
)
def test_weight_map_override(options, expected):
    step = WeightMapOverride(_Fixed(), **options).propose(None)
    assert torch.allclose(step.weight_map.flatten(), expected, atol=1e-6)


@pytest.mark.parametrize("full_resolution", [None, True])
def test_tune_weight_map_fits_only_the_head_and_writes_a_checked_model(tmp_path, full_resolution):
    write_small_spac_model(tmp_path / "m")
    source_sha = sha256_of(tmp_path / "m" / "weights.pt")
    before, _ = load_model(tmp_path / "m")
    cfg = _config(head_full_resolution=full_resolution)
    out = tune_weight_map(tmp_path / "m", tmp_path / "tuned", cfg, bank=label_bank(), progress=False)

    after, card = load_model(out)  # checksum and architecture checked
    assert sha256_of(tmp_path / "m" / "weights.pt") == source_sha  # the source model is untouched
    # the head reads the decoder's last features (4 channels) or those at 1/2 resolution (8)
    assert after.weight_head.net[0][0].in_channels == (4 if full_resolution else 8)
    assert card["architecture"].get("weight_head_full_resolution", False) == bool(full_resolution)
    old, new = before.state_dict(), after.state_dict()
    changed = {k for k in old if old[k].shape != new[k].shape or not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("weight_head.") for k in changed)  # steps and plans unchanged
    block = card["training"]["weight_map"]
    assert block["from_sha256"] == source_sha and block["config"]["pairs"] == 6
    assert block["held_out_bce_after"] < block["held_out_bce_before"]  # the head learned the targets
    assert 0 < block["target_stiff_percent"] < 100
    policy = SPACPolicy(out, device="cpu", input_spacing_mm=2.0)
    fixed = torch.rand((1, 1, *SHAPE))
    policy.reset(fixed, fixed)

    step = policy.propose(PolicyState(fixed, fixed, fixed, torch.zeros((1, 3, *SHAPE)), 0))
    assert 0 < float(step.weight_map.min()) and float(step.weight_map.max()) <= 1


def test_tune_weight_map_refuses_to_replace_a_model_unless_asked(tmp_path):
    write_small_spac_model(tmp_path / "m")
    with pytest.raises(OutputError, match=r"card\.json exists.*--overwrite"):
        tune_weight_map(tmp_path / "m", tmp_path / "m", _config(), bank=label_bank(), progress=False)
    source_sha = sha256_of(tmp_path / "m" / "weights.pt")
    tune_weight_map(
        tmp_path / "m",
        tmp_path / "m",
        _config(pairs=2, epochs=1),
        overwrite=True,
        bank=label_bank(),
        progress=False,
    )
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["weight_map"]["from_sha256"] == source_sha
    assert card["sha256"] == sha256_of(tmp_path / "m" / "weights.pt") != source_sha


@pytest.mark.parametrize(
    "values, message",
    [
        ({"base": 1}, r"unknown keys \['base'\]"),
        ({"base_weight": 0.0}, "base_weight must be in"),
        ({"background_weight": 1.5}, "background_weight must be in"),
        ({"pairs": 1}, "pairs >= 2"),
        ({"data": {"spacing": 2}}, "unknown keys"),
    ],
)
def test_bad_config(values, message):
    with pytest.raises(InputError, match=message):
        WeightMapConfig.from_dict(values)


def test_cli_names_a_missing_config(tmp_path, capsys):
    write_small_spac_model(tmp_path / "m")
    code = cli_main(
        [
            "tune-weight-map",
            "--model",
            str(tmp_path / "m"),
            "--config",
            str(tmp_path / "no.json"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code != 0
    assert "no.json': file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
