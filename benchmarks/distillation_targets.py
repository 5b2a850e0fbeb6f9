"""How close models come to the optimizer's fields they are distilled toward (issue 25 item 2).

For captured training pairs with target fields (a config with ``data.targets``, ``training.command_pairs``),
on the network grid the pairs are trained on: the Dice of the true labels (the 30 evaluation labels) before,
under the target field itself and after each model's deterministic episode, and the mean squared distance
(network-grid voxels^2) between the model's total field and the target after every step.

    python benchmarks/distillation_targets.py --config configs/spac_distill_command_cpu.json \
        --models models/spac-brain-synth,DIR --every 8

Reads the captured pairs of the config (made on first use, about 13 s per pair); needs ``../shared/data``
when they are not cached yet; exits 2 when it is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, shared_data_missing, write_results  # noqa: E402


def episode(env, network, pair: dict, steps: int, deterministic_step) -> dict:
    """Dice before / under the target / after ``steps`` deterministic steps of ``network``, and the mean
    squared distance to the target after each step (index 0: the identity)."""
    import torch

    target = pair["target_field"]
    state = env.reset(*(pair[k] for k in ("fixed", "moving", "fixed_labels", "moving_labels")))
    out = {"before": float(env.dice), "target": float(env.segmentation_dice(target))}
    distances = [float((state.field - target).pow(2).sum(1).mean())]
    with torch.no_grad():
        for _ in range(steps):
            state, _, _, info = env.step(deterministic_step(network, state.fixed, state.warped))
            distances.append(float((state.field - target).pow(2).sum(1).mean()))
    return {**out, "after": float(info["dice"]), "distances": distances}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="training config with data.targets")
    parser.add_argument("--models", required=True, help="model folders, comma separated")
    parser.add_argument("--every", type=int, default=8, help="every n-th captured training pair")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from RLRegistrationLib.fields.metrics import evaluation_labels
    from RLRegistrationLib.policies.network_policy import load_model
    from RLRegistrationLib.training.config import TrainConfig
    from RLRegistrationLib.training.data import captured_cache_path, subject_bank
    from RLRegistrationLib.training.environment import RegistrationEnv
    from RLRegistrationLib.training.validation import deterministic_step

    cfg = TrainConfig.load(args.config)
    d = cfg.data
    if not d.targets:
        print(f"config '{args.config}': no data.targets, nothing to compare with", file=sys.stderr)
        return 2
    cache = captured_cache_path(d, d.train_subjects, "random", training=True)
    if not cache.is_file() and shared_data_missing(args.shared_dir, "distillation_targets"):
        return 2
    torch.set_num_threads(args.threads)
    d.shared_dir = args.shared_dir
    bank = subject_bank(d, d.train_subjects, "random", cfg.model.divisor, training=True)
    pairs = [bank.network_pair(i) for i in range(0, len(bank), args.every)]
    steps = int(cfg.env["episode_length"])
    env = RegistrationEnv(steps, reward="labels", fold_weight=1.0, label_classes=evaluation_labels())
    rows = []
    for folder in args.models.split(","):
        network, _ = load_model(Path(folder))
        runs = [episode(env, network, pair, steps, deterministic_step) for pair in pairs]
        row = {
            "model": folder,
            **{k: float(np.mean([r[k] for r in runs])) for k in ("before", "target", "after")},
            "distances": [float(v) for v in np.mean([r["distances"] for r in runs], axis=0)],
        }
        rows.append(row)
        print(row, flush=True)
    lines = [
        f"{len(pairs)} captured training pairs of {args.config} (every {args.every}th), {steps} deterministic "
        f"steps on the {list(d.shape)} network grid at {d.spacing_mm} mm; Dice of the true labels",
        "",
        "| model | Dice before | Dice under the target | Dice after | mean squared distance to the target, "
        "steps 0..n (voxels²) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['before']:.4f} | {r['target']:.4f} | {r['after']:.4f} | "
        f"{' → '.join(f'{v:.3f}' for v in r['distances'])} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    stem = "distillation_targets" + (f"_{args.tag}" if args.tag else "")
    write_results(
        args.out,
        stem,
        {"rows": rows, "args": vars(args)},
        table,
        argv or sys.argv[1:],
        "distillation_targets",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
