"""How much does SPAC's plan move its steps? Issue 25, item 4: SAC trains the planner (the action it sees is
the plan, a 64-number code the actor decodes together with the encoder's skip features); if the steps hardly
depend on the plan, no SAC stage can change the registration much.

    python benchmarks/plan_influence.py [--models models/spac-brain-synth,...] [--pairs ...] [--tag T]

For each SPAC model and validation pair, three sessions of the card's learned steps (the alone policy,
pre-alignment included, as ``rlreg register --policy <id>`` runs them):

* ``mean plan``: the shipped behaviour (plan = the planner's mean);
* ``zero plan``: the planner cut out (plan = 0 at every step; the actor sees only the skip features);
* ``sampled plan``: one plan drawn at temperature 1 per step (seed 0).

Per variant: Dice of the 1 mm labels and % det J <= 0; for the zero and sampled plans, how far their final
field lies from the mean plan's (RMS over the working grid, mm) against the size of the mean plan's
deformable field (RMS, mm).

Needs ``../shared/data`` and the model folders; exits 2 with a message when either is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    add_session_arguments,
    folding_percent,
    load_model_card,
    model_folders_missing,
    read_pair,
    run_session,
    write_results,
)

VARIANTS = ("mean plan", "zero plan", "sampled plan")


def zero_plan(policy) -> None:
    """Replace the policy network's planner by one whose plan mean is 0 (its sigma kept)."""
    import torch

    planner = policy.network.planner

    class ZeroPlanner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = planner

        def forward(self, bottleneck):
            mean, log_std = self.inner(bottleneck)
            return torch.zeros_like(mean), log_std

    policy.network.planner = ZeroPlanner()


def make_variant(model: str, variant: str):
    from RLRegistrationLib.policies.registry import make_policy

    if variant == "sampled plan":
        return make_policy(model, device="cpu", temperature=1.0, seed=0)
    policy = make_policy(model, device="cpu")
    if variant == "zero plan":
        zero_plan(policy)
    return policy


def rms_mm(field, spacing_mm: float) -> float:
    """RMS length (mm) of a working-grid field (1, 3, D, H, W) in voxels."""
    return float(field.pow(2).sum(dim=1).mean().sqrt()) * spacing_mm


def summary_table(rows: list[dict]) -> str:
    lines = [
        "| model | variant | Dice | max % det J ≤ 0 | RMS distance to the mean plan's field, mm | "
        "RMS of the mean plan's field, mm |",
        "|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        for variant in VARIANTS:
            group = [r for r in rows if r["model"] == model and r["variant"] == variant]
            distance = np.mean([r["distance_mm"] for r in group])
            lines.append(
                f"| {model} | {variant} | {np.mean([r['dice'] for r in group]):.4f} | "
                f"{max(r['folding_percent'] for r in group):.4f} | {distance:.3f} | "
                f"{np.mean([r['field_rms_mm'] for r in group]):.3f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default=str(REPO / "models" / "spac-brain-synth"), help="SPAC model folders"
    )
    parser.add_argument("--tag", default="", help="suffix of the result files")
    add_session_arguments(parser)
    args = parser.parse_args(argv)
    folders = [Path(f) for f in args.models.split(",") if f]
    if model_folders_missing("plan_influence", args.shared_dir, folders):
        return 2
    from accuracy import prepare_pairs

    from RLRegistrationLib.policies.registry import policy_default_steps

    ids = [load_model_card(folder, args.threads)["id"] for folder in folders]
    rows = []
    for pair in prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), "t1"):
        images = read_pair(pair)
        for model in ids:
            fields = {}
            for variant in VARIANTS:
                dice, _, session = run_session(
                    make_variant(model, variant), images, policy_default_steps(model)
                )
                spacing = float(session.grid.spacing[0])
                fields[variant] = session.field_at(len(session.reports) - 1)
                row = {
                    "model": model,
                    "pair": pair["pair"],
                    "variant": variant,
                    "dice": dice[-1],
                    "folding_percent": folding_percent(session),
                    "distance_mm": rms_mm(fields[variant] - fields["mean plan"], spacing),
                    "field_rms_mm": rms_mm(fields["mean plan"], spacing),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    table = (
        f"pairs {args.pairs} (1 mm, T1-like), each model's card steps after the pre-alignment; fields compared "
        "on the working grid\n\n" + summary_table(rows)
    )
    print(table)
    stem = "plan_influence" + (f"_{args.tag}" if args.tag else "")
    write_results(
        args.out, stem, {"rows": rows, "args": vars(args)}, table, argv or sys.argv[1:], "plan_influence"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
