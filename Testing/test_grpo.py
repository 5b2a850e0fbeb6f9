"""Tests of RLRegistrationLib.training.grpo and the MorphSeek path of the trainer: group-relative
advantages, the GRPO loss and where its gradient goes, deterministic inference at temperature 0, GRPO
updates, label efficiency, the SPAC warm start, an end-to-end ``train()`` (model folder, card, resume)
and a 2-process DistributedDataParallel run (gloo). 16^3 phantoms only."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_training import SHAPE, data_section, label_bank

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.policies.cards import sha256_of
from RLRegistrationLib.policies.morphseek_network import MorphSeekArchitecture, MorphSeekNetwork
from RLRegistrationLib.policies.networks import SPACArchitecture, SPACNetwork
from RLRegistrationLib.training.config import TrainConfig
from RLRegistrationLib.training.data import DataConfig, random_pair
from RLRegistrationLib.training.grpo import (
    GRPOConfig,
    MorphSeekAgent,
    MorphSeekTrainingStep,
    group_environment,
    group_relative_advantages,
    grpo_policy_loss,
    grpo_rollout,
    labelled_pair,
    load_initial_weights,
    make_morphseek_optimizer,
    morphseek_warmup_loss,
    prior_kl,
)
from RLRegistrationLib.training.losses import RegistrationLoss
from RLRegistrationLib.training.train import train

# the shipped configs' input: (fixed, warped, NCC descent direction)
_INPUT = {"in_channels": 5, "similarity_gradient": True}
SMALL = MorphSeekArchitecture(
    channels=(4, 8, 8, 8), decoder_channels=(8, 8, 8, 4), weight_head_channels=4, **_INPUT
)
SMALL_SPAC = SPACArchitecture(
    channels=(4, 8, 8, 8),
    decoder_channels=(8, 8, 8, 4),
    plan_dim=8,
    weight_head_channels=4,
    critic_hidden=16,
    **_INPUT,
)

ENV = {"clusters": 3, "fold_weight": 1.0}


def _pair(seed: int = 0) -> dict[str, torch.Tensor]:
    """One synthetic pair, tensors (1, 1, D, H, W)."""
    pair = random_pair(label_bank(), DataConfig(shape=SHAPE, margin=2), np.random.default_rng(seed))
    return {k: v[None] for k, v in pair.items()}


def _network(seed: int = 0) -> MorphSeekNetwork:
    """A small MorphSeek network with steps of about a voxel (the untrained flow layer is almost zero, and
    sub-voxel steps leave every Dice, hence every reward, unchanged)."""
    torch.manual_seed(seed)
    network = MorphSeekNetwork(SMALL)
    with torch.no_grad():
        network.decoder.flow.weight.normal_(std=0.5)
    return network


def morphseek_config(**overrides) -> dict:
    """A morphseek training config for 16^3 grids on phantom banks (subjects 1-3 train, 4-5 validate)."""
    cfg = {
        "id": "morphseek-test",
        "seed": 0,
        "device": "cpu",
        "data": data_section(),
        "model": SMALL.to_dict(),
        "env": {"episode_length": 2},
        "loss": {"ncc_window": 5, "label_weight": 0.5},
        "grpo": {"group_size": 3, "horizon": 2, "label_subjects": [1, 2], "labelled_pair_fraction": 1.0},
        "optim": {"lr_encoder": 1e-3, "lr_decoder": 1e-3},
        "schedule": {
            "warmup_steps": 2,
            "grpo_steps": 2,
            "batch_size": 1,
            "checkpoint_every": 1,
            "validate_every": 2,
        },
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def _log_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------- GRPO arithmetic


def test_advantages_are_zero_mean_unit_std_per_group():
    rewards = (
        torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 5 + torch.arange(4.0)[:, None] * 10
    )
    advantages = group_relative_advantages(rewards)
    assert advantages.shape == rewards.shape
    torch.testing.assert_close(advantages.mean(dim=1), torch.zeros(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(advantages.std(dim=1, unbiased=False), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(group_relative_advantages(rewards[2]), advantages[2])  # one group (J,)
    assert torch.equal(group_relative_advantages(torch.full((6,), 3.0)), torch.zeros(6))  # no signal


def test_policy_loss_is_the_normalized_advantage_weighted_log_likelihood():
    log_probs = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.5]], requires_grad=True)  # (T=2, J=3)
    advantages = torch.tensor([1.0, -1.0, 0.0])
    loss = grpo_policy_loss(log_probs, advantages, latent_size=16)
    expected = -(1.0 * (1.0 + 0.0) - 1.0 * (-2.0 + 1.0) + 0.0) / 3 / 4
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    torch.testing.assert_close(log_probs.grad, (-advantages / 3 / 4).expand(2, 3))
    grouped = grpo_policy_loss(log_probs.sum(0), advantages.view(1, 3), latent_size=16)  # (G, J) groups
    assert float(grouped.detach()) == pytest.approx(expected)
    with pytest.raises(ValueError):
        grpo_policy_loss(log_probs, torch.zeros(4), latent_size=16)


def test_warmup_loss_adds_a_small_prior_kl():
    assert float(prior_kl(torch.zeros(2, 3), torch.zeros(2, 3))) == pytest.approx(0.0, abs=1e-7)
    assert float(prior_kl(torch.ones(2, 3), torch.full((2, 3), -1.0))) > 0
    network, pair = _network(), _pair()
    out = network(pair["fixed"], pair["moving"])
    registration = RegistrationLoss(ncc_window=5)
    field = torch.zeros(1, 3, *SHAPE)
    plain, _ = registration(pair["fixed"], pair["moving"], field, out.step, out.weight)
    loss, logs = morphseek_warmup_loss(registration, out, pair["fixed"], pair["moving"], field, None, 0.5)
    expected = float(plain.detach()) + 0.5 * float(logs["kl_prior"])
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert {"loss_reg", "similarity", "kl_prior", "sigma"} <= set(logs)


# ------------------------------------------------------------------------------- policy and rollouts


def test_zero_temperature_is_deterministic_with_zero_log_prob():
    network, pair = _network(), _pair()
    first = network(pair["fixed"], pair["moving"], temperature=0.0)
    again = network(pair["fixed"], pair["moving"], temperature=0.0)
    assert torch.equal(first.log_prob, torch.zeros(1)) and torch.equal(first.z, first.mean)
    assert torch.equal(first.step, again.step)
    sampled = network(
        pair["fixed"], pair["moving"], temperature=1.0, generator=torch.Generator().manual_seed(1)
    )
    assert not torch.equal(sampled.step, first.step) and float(sampled.log_prob.detach().abs()) > 0

    cfg = GRPOConfig(group_size=3, horizon=2, temperature=0.0)
    _, values = grpo_rollout(
        network, copy.deepcopy(network), RegistrationLoss(ncc_window=5), pair, cfg, False, ENV
    )
    assert values["pg_loss"] == 0.0 and values["reward_std"] == pytest.approx(0.0, abs=1e-4)
    assert values["kl_ref"] == pytest.approx(0.0, abs=1e-7)  # the reference is the same policy


def test_grpo_gradient_reaches_both_latent_head_convs_and_the_decoder():
    network, pair = _network(), _pair()
    reference = copy.deepcopy(network).requires_grad_(False)
    registration = RegistrationLoss(ncc_window=5, label_weight=0.5)
    head = network.latent_head

    policy_only = GRPOConfig(group_size=4, horizon=2, kl_ref_weight=0.0, reg_weight=0.0)
    loss, values = grpo_rollout(
        network, reference, registration, pair, policy_only, False, ENV, torch.Generator().manual_seed(0)
    )
    assert values["reward_std"] > 0  # the sampled trajectories differ
    loss.backward()
    for conv in (head.mean, head.log_std):
        assert float(conv.weight.grad.abs().sum()) > 0 and float(conv.bias.grad.abs().sum()) > 0
    assert float(network.backbone.levels[0][0].weight.grad.abs().sum()) > 0
    flow_grad = network.decoder.flow.weight.grad  # log pi(z.detach()) does not reach the decoder
    assert flow_grad is None or float(flow_grad.abs().sum()) == 0.0

    network.zero_grad(set_to_none=True)
    full = GRPOConfig(group_size=4, horizon=2)
    loss, values = grpo_rollout(
        network, reference, registration, pair, full, True, ENV, torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert float(network.decoder.flow.weight.grad.abs().sum()) > 0
    assert float(network.weight_head.net[-1].weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in reference.parameters())
    assert values["label_reward"] == 1.0 and "label_loss" in values
    assert {"loss", "pg_loss", "kl_ref", "reward", "reward_std", "similarity", "kl_prior"} <= set(values)


def test_grpo_updates_change_the_head_and_keep_the_reference():
    torch.manual_seed(0)
    agent = MorphSeekAgent(SMALL)
    with torch.no_grad():
        agent.network.decoder.flow.weight.normal_(std=0.5)
    agent.snapshot_reference(0)
    assert agent.has_reference
    step = MorphSeekTrainingStep(
        agent,
        RegistrationLoss(ncc_window=5),
        GRPOConfig(group_size=3, horizon=2),
        ENV,
        torch.Generator().manual_seed(0),
    )
    optimizer = make_morphseek_optimizer(
        agent.network, {"lr_encoder": 1e-3, "lr_decoder": 1e-3, "betas": [0.9, 0.999]}
    )
    head_before = [p.detach().clone() for p in agent.network.latent_head.parameters()]
    reference_before = [p.detach().clone() for p in agent.reference.parameters()]
    for seed in range(3):
        loss, values = step("grpo", _pair(seed), seed % 2 == 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(head_before, agent.network.latent_head.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(reference_before, agent.reference.parameters()))
    assert values["kl_ref"] > 0  # the policy moved away from the reference
    with pytest.raises(ValueError, match="stage"):
        step("sac")


def test_rewards_use_true_labels_only_for_labelled_pairs():
    assert (
        labelled_pair((1, 2), [1, 2, 5]) and not labelled_pair((1, 3), [1, 2]) and labelled_pair((7, 8), None)
    )
    assert not labelled_pair((1, 2), [])
    pair = _pair()
    env, (fixed_seg, _) = group_environment(pair, True, 2, ENV)
    assert torch.equal(fixed_seg, pair["fixed_labels"]) and env.label_classes is None
    env, (fixed_seg, moving_seg) = group_environment(pair, False, 2, ENV)
    assert env.label_classes == [1, 2, 3] and int(fixed_seg.max()) == 3  # K-means pseudo-labels
    assert env.episode_length == 2 and env.fold_weight == 1.0


# ----------------------------------------------------------------------------------- warm start / config


def _spac_weights(path: Path) -> SPACNetwork:
    torch.manual_seed(3)
    spac = SPACNetwork(SMALL_SPAC)
    with torch.no_grad():
        for p in spac.parameters():
            p.normal_()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(spac.state_dict(), path)
    return spac


def test_spac_warm_start_copies_backbone_decoder_and_weight_head(tmp_path):
    spac = _spac_weights(tmp_path / "spac" / "weights.pt")
    network = MorphSeekNetwork(SMALL)
    head = {k: v.clone() for k, v in network.latent_head.state_dict().items()}
    copied = load_initial_weights(network, tmp_path / "spac" / "weights.pt")
    assert copied and all(not k.startswith("latent_head") for k in copied)
    for name, module in (
        ("backbone", spac.backbone),
        ("decoder", spac.actor),
        ("weight_head", spac.weight_head),
    ):
        own = getattr(network, name).state_dict()
        for key, value in own.items():
            if key.startswith("project"):  # the actor's plan projection has no MorphSeek counterpart
                continue
            assert torch.equal(value, module.state_dict()[key]), f"{name}.{key}"
    for key, value in network.latent_head.state_dict().items():
        assert torch.equal(value, head[key])  # identity initialization kept
    with pytest.raises(InputError, match="not found"):
        load_initial_weights(network, tmp_path / "missing.pt")


def test_morphseek_config_sections():
    cfg = TrainConfig.from_dict(morphseek_config())
    assert cfg.family == "morphseek" and isinstance(cfg.model, MorphSeekArchitecture)
    assert cfg.grpo.group_size == 3 and cfg.grpo.label_subjects == [1, 2]
    assert cfg.schedule["grpo_steps"] == 2 and "sac_steps" not in cfg.schedule
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict() and "sac" not in cfg.to_dict()
    assert "grpo" not in TrainConfig.from_dict({}).to_dict()  # the SPAC config is unchanged
    with pytest.raises(InputError, match="family 'spac' only"):
        TrainConfig.from_dict(morphseek_config(sac={"tau": 0.01}))
    with pytest.raises(InputError, match="family 'morphseek' only"):
        TrainConfig.from_dict({"grpo": {"group_size": 4}})
    with pytest.raises(InputError, match="not training subjects"):
        TrainConfig.from_dict(morphseek_config(grpo={"label_subjects": [9]}))
    with pytest.raises(InputError, match="unknown keys"):
        TrainConfig.from_dict(morphseek_config(grpo={"bogus": 1}))
    with pytest.raises(InputError, match="unknown family"):
        TrainConfig.from_dict({"model": {"family": "vxm"}})


def test_shipped_morphseek_configs_parse():
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("morphseek_cpu_small.json", "morphseek_warmup_cpu_small.json", "morphseek_gpu.json"):
        cfg = TrainConfig.load(root / name)
        assert cfg.family == "morphseek" and all(n % cfg.model.divisor == 0 for n in cfg.data.shape)
        assert (cfg.grpo.group_size, cfg.grpo.horizon) == (6, 3)
        spac = TrainConfig.load(root / ("spac_gpu.json" if "gpu" in name else "spac_cpu_small.json"))
        assert cfg.data == spac.data and cfg.loss == spac.loss
        shared = set(SMALL_SPAC.to_dict()) & set(SMALL.to_dict()) - {"family"}
        assert {k: cfg.model.to_dict()[k] for k in shared} == {k: spac.model.to_dict()[k] for k in shared}


def test_grpo_config_continues_the_warmup_only_model():
    """The GRPO run starts from the shipped warm-up-only model and changes nothing else of its setup, so
    the two shipped models differ by the GRPO stage alone."""
    root = Path(__file__).resolve().parents[1] / "configs"
    full = TrainConfig.load(root / "morphseek_cpu_small.json").to_dict()
    warmup = TrainConfig.load(root / "morphseek_warmup_cpu_small.json").to_dict()
    start = f"recipes/{warmup['id']}/weights.pt"  # retired to recipes/, where the command finds it
    assert full["init"]["weights"] == start and warmup["init"]["weights"] is None
    assert (root.parent / start).is_file()
    assert warmup["schedule"]["grpo_steps"] == 0 and full["schedule"]["warmup_steps"] == 0
    assert full["schedule"]["grpo_steps"] > 0 and warmup["schedule"]["warmup_steps"] > 0
    # the ablation of issue 25 changes the rewards (true labels only) and the temperature, nothing else
    ablation = TrainConfig.load(root / "morphseek_grpo_labels_cpu.json").to_dict()
    assert ablation["grpo"] == {**full["grpo"], "label_subjects": None, "labelled_pair_fraction": None,
                                "temperature": 0.5}  # fmt: skip
    assert {k: v for k, v in ablation.items() if k not in ("id", "description", "comment", "grpo")} == {
        k: v for k, v in full.items() if k not in ("id", "description", "comment", "grpo")
    }
    # the second ablation: groups of 24 for a quarter of the updates (the same number of trajectories)
    group24 = TrainConfig.load(root / "morphseek_grpo_group24_cpu.json").to_dict()
    assert group24["grpo"] == {**ablation["grpo"], "group_size": 24}
    assert group24["schedule"]["grpo_steps"] * 24 == ablation["schedule"]["grpo_steps"] * 6
    # the third: ten times smaller updates held ten times closer to the start, nothing else
    conservative = TrainConfig.load(root / "morphseek_grpo_conservative_cpu.json").to_dict()
    assert conservative["grpo"] == {
        **ablation["grpo"],
        "kl_ref_weight": 10 * ablation["grpo"]["kl_ref_weight"],
    }
    assert conservative["optim"] == {**ablation["optim"], "lr_encoder": 3e-5, "lr_decoder": 3e-5}
    assert ablation["optim"]["lr_encoder"] == ablation["optim"]["lr_decoder"] == 3e-4
    same = ("id", "description", "comment", "grpo", "optim")
    assert {k: v for k, v in conservative.items() if k not in same} == {
        k: v for k, v in ablation.items() if k not in same
    }
    for key in ("id", "description", "comment", "init", "schedule"):
        warmup.pop(key, None), full.pop(key, None)
    assert warmup == full


# -------------------------------------------------------------------------------------- training loop


def test_train_morphseek_writes_model_card_and_resumes(tmp_path):
    weights = tmp_path / "spac" / "weights.pt"
    spac = _spac_weights(weights)
    out, run = tmp_path / "model", tmp_path / "run"
    cfg = TrainConfig.from_dict(morphseek_config(init={"weights": str(weights)}))
    banks = (label_bank((1, 2, 3)), label_bank((4, 5)))
    train(cfg, out_dir=out, run_dir=run, progress=False, banks=banks)

    card = json.loads((out / "card.json").read_text())
    assert card["family"] == "morphseek" and card["architecture"]["family"] == "morphseek"
    assert card["sha256"] == sha256_of(out / card["weights"])
    assert card["grpo"] == {
        "group_size": 3,
        "horizon": 2,
        "temperature": 1.0,
        "label_subjects": 2,
        "labelled_subjects_used": 2,
        "label_reward_updates": 2,
        "pseudo_label_reward_updates": 0,
    }
    assert card["training"]["label_usage"]["subjects"] == [1, 2]
    assert card["training"]["init"]["sha256"] == sha256_of(weights)
    assert "val_dice" in card["validation"]
    network = MorphSeekNetwork(SMALL)
    network.load_state_dict(torch.load(out / "weights.pt", weights_only=True))

    start, *rows = _log_rows(run / "log.csv")
    assert start["step"] == "0" and start["stage"] == "init" and start["val_dice"]  # the warm start's score
    assert [r["stage"] for r in rows] == ["warmup", "warmup", "grpo", "grpo"]
    assert rows[0]["pg_loss"] == "" and rows[0]["kl_prior"] != ""
    assert all(
        r["label_reward"] == "1" and r["pg_loss"] and r["kl_ref"] and r["reward_std"] for r in rows[2:]
    )
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert int(ckpt["agent"]["reference_step"]) == 2  # snapshot at the end of the warm-up
    assert not torch.equal(
        ckpt["agent"]["network.backbone.levels.0.0.weight"], spac.backbone.levels[0][0].weight
    )

    train(cfg, out_dir=out, run_dir=run, steps=5, resume=True, progress=False, banks=banks)
    assert [int(r["step"]) for r in _log_rows(run / "log.csv")] == [0, 1, 2, 3, 4, 5]
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["steps"] == 5 and card["grpo"]["label_reward_updates"] == 3

    missing = TrainConfig.from_dict(morphseek_config(init={"weights": str(tmp_path / "nope.pt")}))
    with pytest.raises(InputError, match="weights"):
        train(missing, out_dir=tmp_path / "m2", run_dir=tmp_path / "r2", progress=False, banks=banks)


def test_train_morphseek_pseudo_label_rewards_without_labels(tmp_path):
    cfg = TrainConfig.from_dict(
        morphseek_config(
            grpo={"label_subjects": [], "labelled_pair_fraction": None}, schedule={"warmup_steps": 0}
        )
    )
    out = train(
        cfg,
        out_dir=tmp_path / "m",
        run_dir=tmp_path / "r",
        progress=False,
        banks=(label_bank(), label_bank((4, 5))),
    )
    grpo = json.loads((out / "card.json").read_text())["grpo"]
    assert grpo["label_subjects"] == 0 and grpo["labelled_subjects_used"] == 0
    assert grpo["label_reward_updates"] == 0 and grpo["pseudo_label_reward_updates"] == 2


def test_ddp_two_processes_gloo_morphseek(tmp_path, torchrun_train):
    """The MorphSeek path under ``torchrun --nproc_per_node 2`` (gloo): one warm-up and one GRPO update;
    both ranks end with identical weights, the label usage is summed over the ranks."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(morphseek_config(schedule={"warmup_steps": 1, "grpo_steps": 1})))
    result, out = torchrun_train(config)
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((out / "card.json").read_text())
    checksums = card["training"]["distributed"]["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert card["family"] == "morphseek" and card["grpo"]["label_reward_updates"] == 2
