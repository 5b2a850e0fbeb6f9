"""Diagnostics of a SPAC training run, in the training environment (64^3 working grid of the config).

    python benchmarks/spac_diagnostics.py --config configs/spac_cpu_small.json [--checkpoint runs/<id>/checkpoint.pt]

1. Sanity of the validation metric: on the config's validation pairs, test-time optimization steps taken in
   ``RegistrationEnv`` must raise the true-label Dice (if they do, a policy that lowers it is under-trained,
   not mis-measured).
2. With ``--checkpoint``: the policy's deterministic steps on a few training-distribution pairs (true-label
   Dice per step, step size, mean lambda), to tell a domain gap from a policy that does not converge.
3. With ``--model models/spac-brain-synth``: the shipped model's steps on the validation pairs with its
   inputs as trained and with both inputs box-blurred (3^3), e.g. ``--model ... --steps 6``.

Needs ``../shared/data`` (the config's ``shared_dir``); exits 2 with a message when absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RLRegistration"))

from RLRegistrationLib.fields.metrics import evaluation_labels  # noqa: E402
from RLRegistrationLib.policies.base import PolicyState  # noqa: E402
from RLRegistrationLib.policies.networks import SPACAgent  # noqa: E402
from RLRegistrationLib.policies.registry import make_policy  # noqa: E402
from RLRegistrationLib.training.config import TrainConfig  # noqa: E402
from RLRegistrationLib.training.data import load_banks, random_pair, validation_pairs  # noqa: E402
from RLRegistrationLib.training.environment import RegistrationEnv  # noqa: E402


def tto_in_environment(cfg: TrainConfig, pairs: int, steps: int) -> None:
    _, val_bank = load_banks(cfg.data)
    env = RegistrationEnv(steps, reward="labels", fold_weight=1.0, label_classes=evaluation_labels())
    for pair in validation_pairs(val_bank, cfg.data, pairs):
        state = env.reset(pair["fixed"], pair["moving"], pair["fixed_labels"], pair["moving_labels"])
        policy = make_policy("tto", pyramid=(1,))
        policy.reset(state.fixed, state.moving)
        dice = [float(env.initial_dice)]
        for t in range(steps):
            proposal = policy.propose(PolicyState(state.fixed, state.moving, state.warped, state.field, t))
            state, _, _, info = env.step(proposal.step_field)
            dice.append(float(info["dice"]))
        print(f"TTO in the environment, {pair['name']}: Dice per step {[round(d, 3) for d in dice]}")


def checkpoint_on_training_pairs(cfg: TrainConfig, checkpoint: Path, pairs: int, steps: int) -> None:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    agent = SPACAgent(cfg.model)
    agent.load_state_dict(saved["agent"])
    network = agent.network.eval()
    train_bank, _ = load_banks(cfg.data, with_validation=False)
    rng = np.random.default_rng(5)
    env = RegistrationEnv(steps, reward="labels", fold_weight=1.0)
    for _ in range(pairs):
        pair = random_pair(train_bank, cfg.data, rng)
        state = env.reset(*(pair[k][None] for k in ("fixed", "moving", "fixed_labels", "moving_labels")))
        dice = [float(env.initial_dice)]
        for _ in range(steps):
            with torch.no_grad():
                out = network(state.fixed, state.warped, deterministic=True)
            state, _, _, info = env.step(out.step)
            dice.append(float(info["dice"]))
        print(
            f"checkpoint step {saved['step']}, training-distribution pair: Dice per step "
            f"{[round(d, 3) for d in dice]}, last max |step| {float(out.step.abs().max()):.2f} vox, "
            f"mean lambda {float(out.weight.mean()):.3f}"
        )


def blurred_inputs_in_environment(cfg: TrainConfig, model: Path, pairs: int, steps: int) -> None:
    """A shipped model's deterministic steps on the validation pairs, with its inputs as trained and with
    a 3^3 box blur on both inputs (what the policy's resampling to the network grid once did)."""
    import torch.nn.functional as F

    from RLRegistrationLib.policies.network_policy import load_model

    network, _ = load_model(model)
    _, val_bank = load_banks(cfg.data)
    env = RegistrationEnv(steps, reward="labels", fold_weight=1.0, label_classes=evaluation_labels())

    def blur(x):
        return F.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)

    for blurred in (False, True):
        for pair in validation_pairs(val_bank, cfg.data, pairs):
            state = env.reset(pair["fixed"], pair["moving"], pair["fixed_labels"], pair["moving_labels"])
            dice = [float(env.initial_dice)]
            for _ in range(steps):
                inputs = (blur(state.fixed), blur(state.warped)) if blurred else (state.fixed, state.warped)
                with torch.no_grad():
                    out = network(*inputs, deterministic=True)
                state, _, _, info = env.step(out.step)
                dice.append(float(info["dice"]))
            kind = "blurred inputs" if blurred else "inputs as trained"
            print(f"{model.name}, {kind}, {pair['name']}: Dice per step {[round(d, 3) for d in dice]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "spac_cpu_small.json"))
    parser.add_argument("--checkpoint", help="runs/<id>/checkpoint.pt of a training run")
    parser.add_argument(
        "--model", help="a SPAC model folder: compare its steps with and without blurred inputs"
    )
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    cfg = TrainConfig.load(args.config)
    if not (Path(cfg.data.shared_dir) / "synthseg").is_dir():
        print(
            f"diagnostics: '{cfg.data.shared_dir}/synthseg' is absent: this needs the SynthSeg label maps "
            "(../shared/data beside the repository)",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(2)
    if args.model:
        blurred_inputs_in_environment(cfg, Path(args.model), args.pairs, args.steps)
        return 0
    tto_in_environment(cfg, args.pairs, args.steps)
    if args.checkpoint:
        checkpoint_on_training_pairs(cfg, Path(args.checkpoint), args.pairs + 1, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
