"""Does the network learn faster when it sees the local-NCC descent direction? A controlled single-step test.

    python benchmarks/state_features.py --features images      # input (fixed, warped)
    python benchmarks/state_features.py --features gradient    # + ncc_descent_direction (3 channels)

Trains a fresh SPAC network of the CPU config (``configs/spac_cpu_small.json``: 64^3 at 3 mm, its loss,
augmentation and learning rate) on synthetic pairs of training subjects for ``--updates`` single-step updates
(the first step of an episode only, deterministic plan), and every 50 updates reports the mean true-label
Dice gain of one deterministic step on 4 fixed held-out synthetic pairs. One thread, seeded. Needs
``../shared/data``; exits 2 with a message when absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RLRegistration"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", choices=("images", "gradient"), default="gradient")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--config", default=str(REPO / "configs" / "spac_cpu_small.json"))
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if not (Path(args.shared_dir) / "synthseg").is_dir():
        print(
            f"benchmark: '{args.shared_dir}/synthseg' is absent (needs the SynthSeg label maps)",
            file=sys.stderr,
        )
        return 2
    import torch

    from RLRegistrationLib.policies.networks import SPACArchitecture, SPACNetwork
    from RLRegistrationLib.training.config import TrainConfig
    from RLRegistrationLib.training.data import load_banks, random_pair
    from RLRegistrationLib.training.environment import RegistrationEnv, paired_one_hot
    from RLRegistrationLib.training.losses import RegistrationLoss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = TrainConfig.load(args.config)
    cfg.data.shared_dir = args.shared_dir
    gradient = args.features == "gradient"
    arch = SPACArchitecture.from_dict(
        {**cfg.model.to_dict(), "in_channels": 5 if gradient else 2, "similarity_gradient": gradient}
    )
    network = SPACNetwork(arch)
    loss = RegistrationLoss(**cfg.loss)
    optimizer = torch.optim.Adam(network.parameters(), lr=cfg.optim["lr_actor"])
    bank, _ = load_banks(cfg.data, with_validation=False)
    held_out_rng, train_rng = np.random.default_rng(1), np.random.default_rng(7)
    held_out = [{k: v[None] for k, v in random_pair(bank, cfg.data, held_out_rng).items()} for _ in range(4)]
    env = RegistrationEnv(1, reward="labels")

    def dice_gain() -> float:
        gains = []
        with torch.no_grad():
            for pair in held_out:
                env.reset(pair["fixed"], pair["moving"], pair["fixed_labels"], pair["moving_labels"])
                before = float(env.dice)
                env.step(network(pair["fixed"], pair["moving"], deterministic=True).step)
                gains.append(float(env.dice) - before)
        return float(np.mean(gains))

    curve, start = [], time.perf_counter()
    for update in range(args.updates + 1):
        if update % 50 == 0:
            curve.append(
                {"updates": update, "dice_gain": dice_gain(), "seconds": time.perf_counter() - start}
            )
            print(json.dumps(curve[-1]), flush=True)
        if update == args.updates:
            break
        pair = {k: v[None] for k, v in random_pair(bank, cfg.data, train_rng).items()}
        out = network(pair["fixed"], pair["moving"], deterministic=True)
        zero = torch.zeros_like(out.step)
        labels = paired_one_hot(pair["fixed_labels"], pair["moving_labels"])
        value, _ = loss(pair["fixed"], pair["moving"], zero, out.step, out.weight, labels)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"state_features_{args.features}.json").write_text(
        json.dumps({"args": vars(args), "curve": curve})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
