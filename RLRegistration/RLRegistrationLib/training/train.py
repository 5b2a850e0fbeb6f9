"""Training of learned policies: ``rlreg train --config configs/spac_cpu_small.json`` (or ``train(...)``).

Two families (``model.family`` in the config, ``training.config.TrainConfig``), sharing everything but the
optimizer update (``training.family_trainer.FamilyTrainer``): ``"spac"`` (default,
``training.spac_trainer``: stages ``warmup`` then ``sac``) and ``"morphseek"``
(``training.morphseek_trainer``: stages ``warmup`` then ``grpo``, see ``training.grpo``; optional warm
start from a SPAC or MorphSeek ``weights.pt`` with ``init.weights``).

Stage (c), ``rlreg tune-weight-map`` (``training.weight_map``), then refits the lambda head alone on where the
test-time optimization that follows the learned steps folds.

One forward and one backward per step, so the same code runs under ``torchrun`` with DistributedDataParallel
(gloo on CPU, nccl on CUDA; ranks read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, ``training.distributed``):
gradients are averaged, every rank draws its own pairs. Rank 0 validates (T1-like pairs of held-out
subjects, Dice of the true labels, ``training.validation``), logs (progress bar, CSV, TensorBoard when
installed), writes checkpoints (``--resume``) and the final model folder (``weights.pt`` + ``card.json``,
``training.run_log``).
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
from pathlib import Path

import torch

from ..devices import describe_device
from ..errors import InputError, OutputError
from ..policies.cards import CARD_NAME
from .config import TrainConfig
from .data import load_banks, validation_pairs
from .distributed import average_logs, gather_checksums, setup_distributed
from .family_trainer import FamilyTrainer
from .label_bank import LabelBank
from .morphseek_trainer import MorphSeekTrainer
from .run_log import RunLog, data_description, hardware_description, save_checkpoint, save_model
from .spac_trainer import SPACTrainer
from .validation import track_best, validate

TRAINERS: dict[str, type[FamilyTrainer]] = {"spac": SPACTrainer, "morphseek": MorphSeekTrainer}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def stage_steps(cfg: TrainConfig, steps: int | None) -> tuple[int, int]:
    """(warm-up steps, total steps); ``steps`` rescales both stages to that total."""
    warmup = int(cfg.schedule["warmup_steps"])
    second = int(cfg.schedule[f"{TRAINERS[cfg.family].second_stage}_steps"])
    if steps is None:
        return warmup, warmup + second
    if warmup + second == 0:
        return 0, int(steps)
    return round(steps * warmup / (warmup + second)), int(steps)


def train(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    steps: int | None = None,
    resume: bool = False,
    device: str | None = None,
    shared_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    banks: tuple[LabelBank, LabelBank] | None = None,
) -> Path:
    """Run (or resume) a training; returns the model folder ``out_dir`` (default ``models/<id>``).

    ``run_dir`` (default ``runs/<id>``) holds ``checkpoint.pt``, ``log.csv`` and TensorBoard files.
    ``banks`` (train, validation) replaces the label maps read from ``shared_dir`` (tests).
    """
    start_time = time.perf_counter()
    out_dir = Path(out_dir or Path("models") / cfg.id)
    run_dir = Path(run_dir or Path("runs") / cfg.id)
    if shared_dir is not None:
        cfg.data.shared_dir = str(shared_dir)
    dist_info, dev = setup_distributed(device or cfg.device)
    if (out_dir / CARD_NAME).exists() and not (overwrite or resume):
        raise OutputError(f"{out_dir / CARD_NAME} exists (use --overwrite to replace the model)")
    checkpoint_path = run_dir / "checkpoint.pt"
    if resume and not checkpoint_path.is_file():
        raise InputError(f"--resume: no checkpoint at {checkpoint_path}")
    warmup_steps, total_steps = stage_steps(cfg, steps)
    sched = cfg.schedule

    seed_everything(cfg.seed)  # identical initial weights on every rank
    trainer = TRAINERS[cfg.family](cfg, dev)
    trainer.warmup_steps = warmup_steps
    step, best, elapsed_before = 0, None, 0.0
    if resume:
        ckpt = torch.load(checkpoint_path, map_location=dev, weights_only=False)
        trainer.load_checkpoint(ckpt)
        step, best, elapsed_before = ckpt["step"], ckpt.get("best"), ckpt.get("wall_time_s", 0.0)
    else:
        trainer.initialize()
    seed_everything(cfg.seed + 1000 * dist_info.rank + step)  # per-rank exploration and data

    train_bank, val_bank = banks or load_banks(cfg.data, dist_info.is_main, cfg.model.divisor)
    val_set = validation_pairs(val_bank, cfg.data, cfg.data.val_pairs, cfg.seed) if val_bank else []
    trainer.start(dist_info, train_bank, step)

    log = None
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log = RunLog(run_dir / "log.csv", append=resume)
    from tqdm import tqdm

    if dist_info.is_main and progress:
        print(
            f"training {cfg.id} ({cfg.family}): {trainer.describe()}; {describe_device(dev)} x "
            f"{dist_info.world_size}; grid {list(cfg.data.shape)} at {cfg.data.spacing_mm} mm; steps "
            f"{step + 1}..{total_steps} (warm-up to {warmup_steps}); run folder {run_dir}"
        )
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not (progress and dist_info.is_main),
        unit="step",
        dynamic_ncols=True,
        file=sys.stdout,
    )
    last_val = {}
    if dist_info.is_main and val_set and trainer.init_info and step == 0:
        # the warm start's own score: keep_best keeps it when the training never beats it
        last_val = validate(trainer.network, val_set, int(cfg.env["episode_length"]), dev)
        best = track_best(best, last_val, 0, trainer.network)
        log.write(0, "init", last_val)
    run_start = time.perf_counter()
    while step < total_steps:
        step += 1
        stage = "warmup" if step <= warmup_steps else trainer.second_stage
        values = average_logs(trainer.update(step, stage), dist_info, dev)
        if dist_info.is_main:
            if val_set and (step % int(sched["validate_every"]) == 0 or step == total_steps):
                last_val = validate(trainer.network, val_set, int(cfg.env["episode_length"]), dev)
                best = track_best(best, last_val, step, trainer.network)
                values.update(last_val)
            values["seconds"] = time.perf_counter() - run_start
            log.write(step, stage, values)
            bar.set_postfix(trainer.postfix(stage, values, last_val), refresh=False)
        bar.update(1)
        if step % int(sched["checkpoint_every"]) == 0 or step == total_steps:
            elapsed = elapsed_before + time.perf_counter() - run_start
            if dist_info.is_main:
                save_checkpoint(
                    checkpoint_path, trainer.agent, trainer.optimizer, step, best, cfg, elapsed,
                    trainer.checkpoint_extra(),
                )  # fmt: skip
    bar.close()

    checksums = gather_checksums(trainer.agent, dist_info, dev)
    family_training = trainer.card_training()
    if dist_info.is_main:
        wall_time = elapsed_before + time.perf_counter() - start_time
        network_state = trainer.network.state_dict()
        selected = {"step": step, "metrics": last_val}
        if sched.get("keep_best", True) and best is not None:
            network_state, selected = best["network"], {"step": best["step"], "metrics": best["metrics"]}
        training = {
            "command": command or "train(...)",
            "config": cfg.to_dict(),
            "data": data_description(cfg.data, banks is not None),
            "steps": step,
            "warmup_steps": warmup_steps,
            "wall_time_s": round(wall_time, 1),
            "hardware": hardware_description(dev, dist_info),
            "seed": cfg.seed,
            "distributed": {"world_size": dist_info.world_size, "rank_checksums": checksums},
            "selected_step": selected["step"],
            "log": "training_log.csv",
            **family_training,
        }
        save_model(out_dir, network_state, cfg, training, {**selected["metrics"], "pairs": len(val_set)})
        if log is not None and log.path.is_file():
            (out_dir / "training_log.csv").write_bytes(log.path.read_bytes())
    if dist_info.enabled:
        # the DDP wrapper (its reducer holds gloo work) must go before the process group; destroyed later,
        # at interpreter exit, it aborted rank 0 now and then ("terminate called without an active exception")
        del trainer
        gc.collect()
        torch.distributed.barrier()
        if dist_info.owns_group:
            torch.distributed.destroy_process_group()
    return out_dir


__all__ = ["train"]
