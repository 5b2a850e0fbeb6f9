"""Tests of RLRegistrationLib.training: synthetic pairs, replay buffer, SAC losses, the training loop
(resume, CLI, model folder) and a 2-process DistributedDataParallel run (gloo). Small phantoms only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_training import SHAPE, data_section, label_bank

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.frontends.cli import main
from RLRegistrationLib.policies.cards import sha256_of
from RLRegistrationLib.policies.network_policy import load_model
from RLRegistrationLib.policies.networks import SPACAgent, SPACArchitecture
from RLRegistrationLib.training.config import TrainConfig
from RLRegistrationLib.training.data import DataConfig, random_pair, validation_pairs
from RLRegistrationLib.training.initial_weights import read_initial_weights
from RLRegistrationLib.training.label_bank import LabelBank
from RLRegistrationLib.training.losses import RegistrationLoss
from RLRegistrationLib.training.run_log import inference_block
from RLRegistrationLib.training.sac import ReplayBuffer, SACConfig, sac_losses
from RLRegistrationLib.training.spac_trainer import TrainingStep, make_optimizer

SMALL = SPACArchitecture(
    channels=(4, 8, 8, 8), decoder_channels=(8, 8, 8, 4), plan_dim=8, weight_head_channels=4, critic_hidden=16
)


def small_config(**schedule) -> dict:
    """A training config for 16^3 grids (2 mm) on phantom label maps of 40^3 voxels at 1 mm."""
    return {
        "id": "spac-test",
        "seed": 0,
        "device": "cpu",
        "data": data_section(),
        "model": SMALL.to_dict(),
        "env": {"episode_length": 2},
        "loss": {"ncc_window": 5},
        "sac": {"batch_size": 2, "replay_capacity": 8},
        "schedule": {
            "warmup_steps": 2,
            "sac_steps": 2,
            "batch_size": 1,
            "checkpoint_every": 1,
            "validate_every": 2,
            **schedule,
        },
    }


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(small_config()))
    return path


def _log_steps(path: Path) -> list[int]:
    with open(path, newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


# ------------------------------------------------------------------------------------------------ data


def test_random_pairs_from_label_maps():
    cfg = DataConfig(shape=SHAPE, margin=2)
    pair = random_pair(label_bank(), cfg, np.random.default_rng(0))
    for key in ("fixed", "moving"):
        assert pair[key].shape == (1, *SHAPE) and pair[key].dtype == torch.float32
        assert 0.0 <= float(pair[key].min()) and float(pair[key].max()) <= 1.0
    assert pair["fixed_labels"].dtype == torch.int64
    assert not torch.equal(pair["fixed_labels"], pair["moving_labels"])
    assert int(pair["fixed_labels"].max()) < 500  # skull-stripped


def test_rendered_pairs_are_made_finer_and_averaged_to_the_training_grid():
    cfg = DataConfig(shape=(8, 8, 8), margin=1, render_factor=2, blur_sigma_vox=(0.0, 0.5))
    fine = cfg.rendering()
    assert (fine.shape, fine.margin, fine.spacing_mm) == (SHAPE, 2, cfg.spacing_mm / 2)
    assert (fine.deform_max_vox, fine.blur_sigma_vox) == (2 * cfg.deform_max_vox, (0.0, 1.0))
    bank = label_bank()  # 20^3 phantoms: the fine grid's 16^3 plus its margin
    made = random_pair(bank, fine, np.random.default_rng(4))
    pair = random_pair(bank, cfg, np.random.default_rng(4))
    assert pair["fixed"].shape == (1, 8, 8, 8) and pair["fixed_labels"].shape == (1, 8, 8, 8)
    block = made["fixed"][0, 2:4, 4:6, 0:2].mean()  # the block of training voxel (1, 2, 0)
    assert torch.isclose(pair["fixed"][0, 1, 2, 0], block)
    assert int(pair["moving_labels"][0, 3, 1, 2]) == int(made["moving_labels"][0, 7, 3, 5])  # block centre
    # partial-volume values: more distinct grey levels than labels, as when a 1 mm scan is resampled
    assert len(torch.unique(pair["fixed"])) > len(torch.unique(pair["fixed_labels"]))
    validation = validation_pairs(bank, cfg, 1)[0]
    assert validation["fixed"].shape == (1, 1, 8, 8, 8)
    with pytest.raises(InputError, match="render_factor"):
        DataConfig.from_dict({"render_factor": 0})


def test_missing_shared_data_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match=r"training_seg_01\.nii\.gz.*\.\./shared/data"):
        LabelBank.from_shared(tmp_path / "nowhere", [1], 2.0, SHAPE)


# ------------------------------------------------------------------------------------------- replay/SAC


def test_replay_buffer_is_a_ring_and_samples_float32():
    buffer = ReplayBuffer(capacity=3, obs_shape=(2, 4, 4, 4), plan_dim=5)
    with pytest.raises(ValueError):
        buffer.sample(1)
    for i in range(5):
        obs = torch.full((1, 2, 4, 4, 4), float(i) / 10)
        buffer.push(obs, torch.full((1, 5), float(i)), torch.tensor([float(i)]), obs + 0.05, i == 4)
    assert len(buffer) == 3
    assert sorted(buffer.reward.tolist()) == [2.0, 3.0, 4.0]  # the oldest two were overwritten
    batch = buffer.sample(6, torch.Generator().manual_seed(0))
    assert batch["obs"].shape == (6, 2, 4, 4, 4) and batch["obs"].dtype == torch.float32
    assert batch["plan"].shape == (6, 5) and batch["reward"].shape == batch["done"].shape == (6,)
    for reward, plan, done in zip(batch["reward"], batch["plan"], batch["done"]):
        assert float(plan[0]) == float(reward) and float(done) == float(reward == 4.0)


def _replay_batch(n=2, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.rand((n, 2, *SHAPE), generator=g),
        "next_obs": torch.rand((n, 2, *SHAPE), generator=g),
        "plan": torch.randn((n, SMALL.plan_dim), generator=g),
        "reward": torch.randn(n, generator=g),
        "done": torch.zeros(n),
    }


def test_sac_losses_route_gradients():
    agent = SPACAgent(SMALL)
    parts = sac_losses(agent, _replay_batch(), SACConfig())
    parts["critic_loss"].backward(retain_graph=True)
    assert all(p.grad is None for p in agent.network.parameters())  # the embedding is detached
    assert all(p.grad is not None for p in agent.critic.parameters())
    agent.zero_grad(set_to_none=True)
    parts["actor_loss"].backward(retain_graph=True)
    assert all(p.grad is None for p in agent.critic.parameters())  # Q is used with frozen weights
    assert float(agent.network.planner.fc.weight.grad.abs().sum()) > 0
    assert agent.log_alpha.grad is None
    agent.zero_grad(set_to_none=True)
    parts["alpha_loss"].backward()
    assert agent.log_alpha.grad is not None and all(p.grad is None for p in agent.network.parameters())


def test_the_critic_warm_up_keeps_the_sac_planner_loss_off():
    agent = SPACAgent(SMALL)
    batch = _replay_batch(seed=3)
    torch.manual_seed(0)  # the same sampled plans in both calls
    on = sac_losses(agent, batch, SACConfig(), planner_on=True)
    torch.manual_seed(0)
    off = sac_losses(agent, batch, SACConfig(), planner_on=False)
    assert float(on["actor_loss"]) != 0.0 and float(off["actor_loss"]) == 0.0
    assert torch.allclose(on["critic_loss"], off["critic_loss"])  # the critics learn either way
    (off["critic_loss"] + off["actor_loss"]).backward()
    planner_grad = agent.network.planner.fc.weight.grad
    assert planner_grad is None or float(planner_grad.abs().sum()) == 0.0
    assert all(p.grad is not None for p in agent.critic.parameters())


def test_sac_updates_change_actor_critic_and_alpha():
    torch.manual_seed(0)
    agent = SPACAgent(SMALL)
    step = TrainingStep(agent, RegistrationLoss(ncc_window=5), SACConfig())
    optimizer = make_optimizer(
        agent,
        {"lr_planner": 1e-3, "lr_actor": 1e-3, "lr_critic": 1e-3, "lr_alpha": 1e-2, "betas": [0.9, 0.999]},
    )
    parts = {
        "planner": agent.network.planner,
        "backbone": agent.network.backbone,
        "actor": agent.network.actor,
        "weight head": agent.network.weight_head,
        "critic": agent.critic,
        "target critic": agent.target_critic,
    }
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in parts.items()}
    alpha_before = float(agent.log_alpha.detach())
    fixed, moving = torch.rand(1, 1, *SHAPE), torch.rand(1, 1, *SHAPE)
    for i in range(3):
        loss, logs, plan, field = step(
            fixed, moving, moving, torch.zeros(1, 3, *SHAPE), _replay_batch(seed=i)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        agent.soft_update(0.1)
    assert plan.shape == (1, SMALL.plan_dim) and field.shape == (1, 3, *SHAPE)
    assert {"critic_loss", "actor_loss", "alpha_loss", "q", "entropy", "similarity"} <= set(logs)
    for name, module in parts.items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters()))
        assert changed, f"{name} parameters did not change"
    assert float(agent.log_alpha.detach()) != alpha_before


# ------------------------------------------------------------------------------------ training loop / CLI


def test_cli_train_writes_model_and_resume_continues(tmp_path, shared_dir, config_file):
    out, run = tmp_path / "models" / "spac-test", tmp_path / "runs" / "spac-test"
    args = ["train", "--config", str(config_file), "--shared-dir", str(shared_dir)]
    args += ["--out", str(out), "--run-dir", str(run), "--quiet", "--device", "cpu"]
    assert main([*args, "--steps", "3"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["id"] == "spac-test" and card["family"] == "spac"
    assert card["sha256"] == sha256_of(out / card["weights"])
    assert card["training"]["steps"] == 3 and card["working_grid"] == {
        "shape": list(SHAPE),
        "spacing_mm": 2.0,
    }
    assert "val_dice" in card["validation"]
    assert _log_steps(run / "log.csv") == [1, 2, 3]
    network, _ = load_model(out)
    assert network.architecture.plan_dim == SMALL.plan_dim

    assert main([*args, "--steps", "3"]) == 2  # the model exists: --overwrite or --resume needed
    assert main([*args, "--steps", "5", "--resume"]) == 0
    assert _log_steps(run / "log.csv") == [1, 2, 3, 4, 5]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 5
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["steps"] == 5 and card["training"]["warmup_steps"] == 2


def test_cli_train_without_data_names_the_folder(tmp_path, config_file, capsys):
    code = main(["train", "--config", str(config_file), "--shared-dir", str(tmp_path / "missing")])
    assert code == 2
    assert "training_seg_01.nii.gz" in capsys.readouterr().err


def test_ddp_two_processes_gloo(torchrun_train, config_file):
    """``torchrun --nproc_per_node 2 -m RLRegistrationLib train ...``: the plain command, on 2 CPU
    processes (gloo); both ranks must end with identical weights."""
    result, out = torchrun_train(config_file, "--steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((out / "card.json").read_text())
    distributed = card["training"]["distributed"]
    assert distributed["world_size"] == 2
    assert len(distributed["rank_checksums"]) == 2
    assert distributed["rank_checksums"][0] == distributed["rank_checksums"][1]
    assert card["training"]["steps"] == 2


@pytest.mark.parametrize("section", ["env", "loss", "optim", "schedule", "model", "data", "sac", "inference"])
def test_config_rejects_unknown_keys(section):
    with pytest.raises((InputError, ValueError), match="unknown keys"):
        TrainConfig.from_dict({section: {"bogus": 1}})


def test_shipped_configs_parse():
    root = Path(__file__).resolve().parents[1] / "configs"
    names = ["spac_cpu_small.json", "spac_gpu.json", "spac_2mm_finetune_cpu.json"]
    names += [f"spac_{kind}_{data}_cpu.json" for kind in ("sac", "reg") for data in ("finetune", "command")]
    names += ["spac_reg_rendered_cpu.json"]
    for name in names:
        cfg = TrainConfig.load(root / name)
        assert all(n % cfg.model.divisor == 0 for n in cfg.data.shape)


def test_the_sac_fine_tune_and_its_control_differ_only_in_the_sac_stage():
    root = Path(__file__).resolve().parents[1] / "configs"
    sac = TrainConfig.load(root / "spac_sac_finetune_cpu.json").to_dict()
    control = TrainConfig.load(root / "spac_reg_finetune_cpu.json").to_dict()
    differ = {k for k in sac if sac[k] != control[k]}
    assert differ == {"id", "description", "sac", "schedule"}
    assert {k for k in sac["sac"] if sac["sac"][k] != control["sac"][k]} == {"critic_warmup_steps"}
    steps = {k: (sac["schedule"][k], control["schedule"][k]) for k in ("warmup_steps", "sac_steps")}
    assert steps == {"warmup_steps": (0, 600), "sac_steps": (600, 0)}  # the same number of updates
    variants = {  # the same runs on other pairs: made at 1.5 mm; captured from the command (3 mm, 64x80x64)
        ("reg", "rendered"): {"render_factor"},
        ("reg", "command"): {"source", "shape"},
        ("sac", "command"): {"source", "shape"},
    }
    for (kind, data), keys in variants.items():
        first = TrainConfig.load(root / f"spac_{kind}_finetune_cpu.json").to_dict()
        other = TrainConfig.load(root / f"spac_{kind}_{data}_cpu.json").to_dict()
        assert {k for k in first if first[k] != other[k]} == {"id", "data"}
        assert {k for k in first["data"] if first["data"][k] != other["data"][k]} == keys


def test_the_sac_runs_on_deformed_captured_pairs_differ_from_their_control_only_in_the_sac_stage():
    # the same change as from spac_reg_command to spac_sac_command, on the augmented pairs of reg_deform
    root = Path(__file__).resolve().parents[1] / "configs"
    runs = {
        name: TrainConfig.load(root / f"spac_{name}_command_cpu.json").to_dict()
        for name in ("sac", "reg", "sac_deform", "reg_deform", "sac_critic450_deform")
    }

    def change(run: str, control: str) -> dict:
        a, b = runs[run], runs[control]
        return {
            (section, key): (a[section][key], b[section].get(key))
            for section in ("sac", "schedule", "data", "loss", "optim", "env", "model")
            for key in a[section]
            if a[section][key] != b[section].get(key)
        }

    assert change("sac_deform", "reg_deform") == change("sac", "reg")
    assert set(change("sac_deform", "reg_deform")) == {
        ("sac", "critic_warmup_steps"),
        ("schedule", "warmup_steps"),
        ("schedule", "sac_steps"),
    }
    assert runs["sac_deform"]["data"]["captured_deform_vox"] > 0 and runs["sac_deform"]["data"]["flips"]
    assert runs["sac_deform"]["init"] == runs["sac"]["init"]
    # the critic ablation: the same run with the critic learning alone for 450 of the 600 updates
    assert change("sac_critic450_deform", "sac_deform") == {("sac", "critic_warmup_steps"): (450, 150)}


def test_a_configs_inference_entries_go_onto_the_card():
    inference = {"diffeomorphic_steps": True, "step_spacings_mm": [3, 2], "offered_sampling": False}
    cfg = TrainConfig.from_dict({"inference": inference})
    assert inference_block(cfg) == {"steps": 2, "max_step": cfg.model.max_step, **inference}
    assert inference_block(TrainConfig())["steps"] == TrainConfig().env["episode_length"]


# ------------------------------------------------------------------------------------ mixed precision


@pytest.mark.parametrize("family", ["spac", "morphseek"])
def test_bf16_mixed_precision_trains_both_families_with_finite_losses(tmp_path, family):
    """``optim.precision: bf16`` (the GPU configs'): the forward passes run under bfloat16 autocast (here
    on the CPU, which has it too), what leaves them is float32, and warm-up and RL steps give finite
    losses, a model and its card; an unknown precision is refused by name."""
    from test_grpo import morphseek_config

    from RLRegistrationLib.training.family_trainer import as_float32
    from RLRegistrationLib.training.train import train

    values = small_config() if family == "spac" else morphseek_config()
    values["optim"] = {**values.get("optim", {}), "precision": "bf16"}
    cfg = TrainConfig.from_dict(values)
    assert cfg.optim["precision"] == "bf16"
    out = train(
        cfg, out_dir=tmp_path / "m", run_dir=tmp_path / "r", progress=False,
        banks=(label_bank(), label_bank((4, 5))),
    )  # fmt: skip
    with open(tmp_path / "r" / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    nonempty = [{k: v for k, v in row.items() if v} for row in rows]  # what a failure should show
    assert len(rows) == 4 and all(row["loss"] and np.isfinite(float(row["loss"])) for row in rows), nonempty
    card = json.loads((out / "card.json").read_text())
    assert card["family"] == family and card["sha256"] == sha256_of(out / card["weights"])
    # PyTorch's CPU bfloat16 conv3d weight gradient holds inf at random on these tiny grids: such an
    # update is skipped and counted, and the weights stay finite (``family_trainer.optimizer_step``)
    assert card["training"]["skipped_updates"] in range(5)  # an int count of the 4 updates
    weights = torch.load(out / card["weights"], weights_only=True)
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    mixed = as_float32((torch.ones(2, dtype=torch.bfloat16), {"a": torch.ones(1, dtype=torch.float16)}, 3))
    assert mixed[0].dtype == torch.float32 and mixed[1]["a"].dtype == torch.float32 and mixed[2] == 3
    values["optim"]["precision"] = "fp8"
    with pytest.raises(InputError, match="optim.precision"):
        TrainConfig.from_dict(values)


def test_the_registration_loss_is_float32_under_bf16_autocast():
    """The loss of a step reads the same under bfloat16 autocast as without it: the NCC's local sums in
    bfloat16 gave values of -2000 for a quantity in [-1, 0] (a 2 mm CPU training run; -70000 on these
    images)."""
    torch.manual_seed(0)
    base = torch.rand(1, 1, 24, 24, 24)  # bright tissue: local sums much larger than local variances
    fixed, moving = 0.8 + 0.2 * base, 0.8 + 0.2 * (base + 0.1 * torch.rand(1, 1, 24, 24, 24))
    field = torch.zeros(1, 3, 24, 24, 24)
    step = (0.5 * torch.randn(1, 3, 24, 24, 24)).bfloat16().float()  # what a bfloat16 network gives
    weight = torch.full((1, 1, 24, 24, 24), 0.25)  # exact in bfloat16
    loss = RegistrationLoss(ncc_window=7)
    exact, parts = loss(fixed, moving, field, step, weight)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):  # a fresh loss: no cached fixed sums
        mixed, mixed_parts = RegistrationLoss(ncc_window=7)(
            fixed, moving, field, step.bfloat16(), weight.bfloat16()
        )
    assert mixed.dtype == torch.float32 and -1.0 <= float(mixed_parts["similarity"]) <= 0.0
    assert float(mixed) == pytest.approx(float(exact), rel=1e-4)
    assert float(mixed_parts["similarity"]) == pytest.approx(float(parts["similarity"]), abs=1e-4)


def test_a_spac_warm_start_is_validated_first_and_named_on_the_card(tmp_path):
    """``init.weights`` for SPAC (a fine-tune, e.g. configs/spac_2mm_finetune_cpu.json): the run starts from
    those weights, validates them at step 0 (logged as stage "init", so keep_best keeps the warm start
    when training never beats it), and the card names the file and its sha256. Weights of another
    architecture are refused by name."""
    from RLRegistrationLib.training.train import train

    banks = (label_bank(), label_bank((4, 5)))
    values = small_config(sac_steps=0)
    values["data"] = {**values["data"], "val_pairs": 4}  # 2 validation subjects: 2 distinct pairs
    first = train(TrainConfig.from_dict(values), out_dir=tmp_path / "a", run_dir=tmp_path / "ra",
                  progress=False, banks=banks)  # fmt: skip
    weights = first / "weights.pt"
    values = {**values, "schedule": {**values["schedule"], "warmup_steps": 1, "validate_every": 1}}
    values["init"] = {"weights": str(weights)}
    out = train(TrainConfig.from_dict(values), out_dir=tmp_path / "b", run_dir=tmp_path / "rb",
                progress=False, banks=banks)  # fmt: skip
    with open(tmp_path / "rb" / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["step"], row["stage"]) for row in rows] == [("0", "init"), ("1", "warmup")]
    start_dice = float(rows[0]["val_dice"])
    first_card = json.loads((first / "card.json").read_text())
    assert start_dice == pytest.approx(first_card["validation"]["val_dice"], abs=1e-4)  # the same network
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["init"] == {
        "weights": str(weights), "sha256": sha256_of(weights), "tensors_copied": len(torch.load(weights))
    }  # fmt: skip
    assert card["validation"]["pairs"] == first_card["validation"]["pairs"] == 2  # not the 4 asked for
    # keep_best: the warm start (step 0) unless step 1 beats it
    expected_step = 1 if float(rows[1]["val_dice"]) > start_dice else 0
    assert card["training"]["selected_step"] == expected_step
    other = {**values, "model": {**values["model"], "channels": [4, 8, 8, 16]}}
    with pytest.raises(InputError, match=r"init.weights '.*weights.pt': cannot load into this architecture"):
        train(TrainConfig.from_dict(other), out_dir=tmp_path / "c", run_dir=tmp_path / "rc", progress=False,
              banks=banks)  # fmt: skip


def test_read_initial_weights_refuses_bad_files(tmp_path):
    """The warm start of either family: one InputError naming the file for a missing, unreadable or
    non-weights file; a state dict comes back as saved."""
    missing = tmp_path / "missing.pt"
    with pytest.raises(InputError, match=r"init.weights '.*missing.pt': file not found \(train it first\)"):
        read_initial_weights(missing, "train it first")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"init.weights '.*garbage.pt': cannot read the weights"):
        read_initial_weights(garbage, "")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(InputError, match=r"init.weights '.*tensor.pt': not a weights file"):
        read_initial_weights(tensor, "")
    good = tmp_path / "good.pt"
    torch.save({"a": torch.arange(3.0)}, good)
    assert torch.equal(read_initial_weights(good, "")["a"], torch.arange(3.0))
