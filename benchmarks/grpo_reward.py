"""Why GRPO does not pay (issue 25): does the reward it learns from rank MorphSeek's sampled trajectories as
the true Dice does, and is there anything in a group to learn from?

    python benchmarks/grpo_reward.py [--pairs 24] [--group-size 6] [--temperatures 0.5,1.0]
                                     [--models recipes/morphseek-brain-synth-warmup,recipes/morphseek-brain-synth]

On synthetic validation pairs (the validation subjects' label maps through the models' own training
pipeline, ``training.data.random_pair``, on the models' grid), each model rolls out one group as GRPO does
(``group_size`` trajectories of ``horizon`` steps, z = mu + tau sigma eps) and, on the same fields, both
rewards are scored: the K-means pseudo-label reward (what the unlabelled training pairs are rewarded with)
and the true-label reward (Dice of the label maps; 100 x Dice gain - folding penalty, summed over the
steps). Per model and temperature it reports, over the pairs:

* the within-group Spearman correlation of the two returns (GRPO uses only the within-group ranking: its
  advantages are the returns standardized inside the group), and how often both pick the same best
  trajectory (chance: 1 / group size);
* the mean true return (what the three steps gain) and the within-group spread of the true return (what a better choice of z could gain) against the mean
  difference between the sampled trajectories and the deterministic one (z = mu): the share of sampled
  trajectories that beat it;
* the deterministic policy's final Dice (the warm-up model against the GRPO one, on the same pairs).

Needs ``../shared/data`` and the recipe models; exits 2 when either is absent. Inference only (minutes on
a CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_SHARED, REPO, shared_data_missing, write_results  # noqa: E402


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (NaN when either is constant)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def rollout(network, pair: dict, group: int, horizon: int, temperature: float, env_options: dict, seed: int):
    """One group of trajectories of ``network`` on ``pair`` (tensors (1, 1, D, H, W)), scored by both
    rewards on the same fields: (true returns (J,), pseudo-label returns (J,), final true Dice (J,))."""
    import torch

    from RLRegistrationLib.training.grpo import group_environment

    envs = [group_environment(pair, labelled, horizon, env_options) for labelled in (True, False)]
    states = []
    for env, segmentations in envs:
        images = (pair["fixed"], pair["moving"], *segmentations)
        states.append(env.reset(*(x.repeat(group, 1, 1, 1, 1) for x in images)))
    generator = torch.Generator().manual_seed(seed)
    returns = [torch.zeros(group), torch.zeros(group)]
    info = {}
    with torch.no_grad():
        for _ in range(horizon):
            out = network(states[0].fixed, states[0].warped, temperature=temperature, generator=generator)
            for k, (env, _) in enumerate(envs):
                states[k], reward, _, step_info = env.step(out.step)
                returns[k] += reward.float()
                if k == 0:
                    info = step_info
    return returns[0].numpy(), returns[1].numpy(), info["dice"].float().numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    recipes = REPO / "recipes"
    default_models = f"{recipes / 'morphseek-brain-synth-warmup'},{recipes / 'morphseek-brain-synth'}"
    parser.add_argument("--models", default=default_models, help="model folders, comma-separated")
    parser.add_argument("--pairs", type=int, default=24, help="synthetic validation pairs")
    parser.add_argument("--group-size", type=int, default=6)
    parser.add_argument("--horizon", type=int, default=3)
    parser.add_argument("--temperatures", default="0.5,1.0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-dir", default=str(DEFAULT_SHARED))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--tag", default="grpo_reward")
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir, "grpo_reward"):
        return 2
    models = [Path(m) for m in args.models.split(",") if m]
    missing = [str(m) for m in models if not (m / "card.json").is_file()]
    if missing:
        print(f"grpo_reward: no model card in {', '.join(missing)}", file=sys.stderr)
        return 2

    import torch

    from RLRegistrationLib.policies.network_policy import load_model
    from RLRegistrationLib.training.config import TrainConfig
    from RLRegistrationLib.training.data import DataConfig, random_pair
    from RLRegistrationLib.training.label_bank import LabelBank

    torch.set_num_threads(args.threads)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    rows, table, banks = [], [], {}
    for model in models:
        network, card = load_model(model)
        config = TrainConfig.from_dict(card["training"]["config"])
        data = DataConfig.from_dict({**config.data.__dict__, "shared_dir": args.shared_dir})
        reference = data.train_subjects[0] if data.prealign else None  # as the training's banks
        key = (tuple(data.val_subjects), data.spacing_mm, tuple(data.shape), data.margin, reference)
        if key not in banks:  # the models share their validation subjects and grid
            banks[key] = LabelBank.from_shared(args.shared_dir, *key)
        bank = banks[key]
        rng = np.random.default_rng(args.seed)  # the same pairs for every model
        pairs = []
        for _ in range(args.pairs):
            pair = random_pair(bank, data, rng)
            pairs.append({k: v[None] for k, v in pair.items() if k != "subjects"})
        for temperature in temperatures:
            stats = {
                "rho": [],
                "same_best": [],
                "true_return": [],
                "true_spread": [],
                "beats_mean": [],
                "gain_vs_mean": [],
            }
            deterministic_dice = []
            for i, pair in enumerate(pairs):
                true, pseudo, _ = rollout(
                    network, pair, args.group_size, args.horizon, temperature, config.env, args.seed + i
                )
                base, _, dice0 = rollout(network, pair, 1, args.horizon, 0.0, config.env, args.seed + i)
                deterministic_dice.append(float(dice0[0]))
                stats["rho"].append(spearman(true, pseudo))
                stats["same_best"].append(float(np.argmax(true) == np.argmax(pseudo)))
                stats["true_return"].append(float(true.mean()))
                stats["true_spread"].append(float(true.std()))
                stats["beats_mean"].append(float(np.mean(true > base[0])))
                stats["gain_vs_mean"].append(float(np.mean(true - base[0])))
            row = {
                "model": card["id"],
                "temperature": temperature,
                "pairs": len(pairs),
                "group_size": args.group_size,
                "spearman_true_vs_pseudo": float(np.nanmean(stats["rho"])),
                "same_best_fraction": float(np.mean(stats["same_best"])),
                "chance_same_best": 1.0 / args.group_size,
                "true_return_mean": float(np.mean(stats["true_return"])),
                "true_return_spread": float(np.mean(stats["true_spread"])),
                "sampled_beat_deterministic": float(np.mean(stats["beats_mean"])),
                "sampled_minus_deterministic": float(np.mean(stats["gain_vs_mean"])),
                "deterministic_final_dice": float(np.mean(deterministic_dice)),
            }
            rows.append(row)
            table.append(
                f"| {row['model']} | {temperature:g} | {row['spearman_true_vs_pseudo']:+.3f} | "
                f"{row['same_best_fraction']:.2f} (chance {row['chance_same_best']:.2f}) | "
                f"{row['true_return_mean']:.2f} | {row['true_return_spread']:.2f} | "
                f"{row['sampled_beat_deterministic']:.2f} | "
                f"{row['sampled_minus_deterministic']:+.2f} | {row['deterministic_final_dice']:.4f} |"
            )
            print(table[-1], flush=True)
    header = [
        f"{args.pairs} synthetic validation pairs (subjects {data.val_subjects}, the models' {list(data.shape)} grid "
        f"at {data.spacing_mm} mm), groups of {args.group_size} trajectories x {args.horizon} steps; returns in "
        "Dice points (100 x Dice gain - folding penalty, summed over the steps)",
        "",
        "| model | tau | Spearman(true, pseudo) in a group | same best trajectory | true return (mean) | "
        "spread of the true return (std in a group) | share of sampled beating z = mu | "
        "sampled - deterministic return | deterministic final Dice |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    text = "\n".join(header + table)
    print(text)
    write_results(args.out, args.tag, {"rows": rows}, text, argv or sys.argv[1:], script="grpo_reward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
