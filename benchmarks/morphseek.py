"""MorphSeek (warm-up only vs GRPO fine-tuned) next to SPAC and test-time optimization, on the SynthSeg
validation pairs (1 mm, 160x192x224, fixed and moving T1-like).

    python benchmarks/morphseek.py [--pairs 11:12,12:13,13:14,14:11] [--samples 4]

Side by side in one process, on the same pairs:

* ``tto``                         : test-time optimization alone (the CLI default, 6 steps)
* ``spac`` / ``spac+tto``         : the SPAC model's learned steps, alone and as its ``<id>+tto`` policy
                                    (the card's chain settings and default number of steps)
* ``morphseek-warmup`` (``+tto``) : MorphSeek after its unsupervised warm-up only
* ``morphseek`` (``+tto``)        : MorphSeek after GRPO fine-tuning
* ``morphseek K=<samples>``       : multi-trajectory sampling (temperature 1): mean field + uncertainty map

Reports mean Dice per step, final Dice, % det J <= 0 and wall seconds (as ``policies.py``); for the sampled
run, the correlation between the uncertainty map and the voxelwise label disagreement after registration
(fixed labels vs moving labels warped by the mean field, on the fixed grid, inside the union of both
label maps' foregrounds), and the per-step latency of MorphSeek with 1 and with K samples on this CPU.
Needs ``../shared/data`` and the models; exits 2 with a message when either is absent.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    add_session_arguments,
    disagreement_and_uncertainty,
    folding_percent,
    load_model_card,
    method_table,
    read_pair,
    run_session,
    shared_data_missing,
    write_results,
)


def disagreement_correlation(session, fixed_labels, moving_labels) -> dict[str, float]:
    """Pearson correlation (point-biserial) between the session's uncertainty map and the voxelwise label
    disagreement after registration, on the fixed grid inside the union foreground; and the mean
    uncertainty (mm) where the labels disagree and where they agree."""
    disagree, values, _ = disagreement_and_uncertainty(session.result(), fixed_labels, moving_labels)
    return {
        "correlation": float(np.corrcoef(values, disagree.astype(np.float64))[0, 1]),
        "uncertainty_where_disagree_mm": float(values[disagree].mean()),
        "uncertainty_where_agree_mm": float(values[~disagree].mean()),
        "disagreement_fraction": float(disagree.mean()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    models = REPO / "recipes"
    parser.add_argument("--model", default=str(models / "morphseek-brain-synth"))
    parser.add_argument("--warmup-model", default=str(models / "morphseek-brain-synth-warmup"))
    parser.add_argument("--spac-model", default=str(REPO / "models" / "spac-brain-synth"))
    parser.add_argument("--learned-steps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=4, help="K for the multi-trajectory run")
    add_session_arguments(parser)
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir):
        return 2
    for folder in (args.model, args.warmup_model, args.spac_model):
        if not (Path(folder) / "card.json").is_file():
            print(f"benchmark: model folder '{folder}' (with card.json) is absent", file=sys.stderr)
            return 2
    from accuracy import prepare_pairs

    from RLRegistrationLib.policies.registry import make_policy, policy_default_steps

    n = args.learned_steps
    models = {"spac": args.spac_model, "morphseek-warmup": args.warmup_model, "morphseek": args.model}
    ids = {kind: load_model_card(folder, args.threads)["id"] for kind, folder in models.items()}

    def learned(kind: str, **options):
        return make_policy(ids[kind], device="cpu", **options)

    methods = [("tto", lambda: make_policy("tto"), args.tto_steps)]
    for kind in ("spac", "morphseek-warmup", "morphseek"):
        chain = f"{ids[kind]}+tto"
        methods += [
            (kind, lambda k=kind: learned(k), n),
            (f"{kind}+tto", lambda c=chain: make_policy(c, device="cpu"), policy_default_steps(chain)),
        ]
    sampled_name = f"morphseek K={args.samples}"
    methods.append((sampled_name, lambda: learned("morphseek", samples=args.samples, seed=0), n))

    rows, uncertainty_rows = [], []
    for pair in prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), "t1"):
        images = read_pair(pair)
        for name, factory, steps in methods:
            dice, seconds, session = run_session(factory(), images, steps)
            learned_steps = [r.step_seconds for r in session.reports[1 : n + 1]]
            row = {
                "method": name,
                "pair": pair["pair"],
                "dice_per_step": dice,
                "seconds": seconds,
                "folding_percent": folding_percent(session),
                "ms_per_learned_step": 1000 * float(np.mean(learned_steps)),
            }
            if name == sampled_name:
                correlation = disagreement_correlation(session, images[2], images[3])
                row.update(correlation)
                uncertainty_rows.append({"pair": pair["pair"], **correlation})
            rows.append(row)
            print(json.dumps(row), flush=True)

    latency = {
        name: float(np.mean([r["ms_per_learned_step"] for r in rows if r["method"] == name]))
        for name in ("morphseek", sampled_name, "spac", "morphseek-warmup")
    }
    keys = ("correlation", "uncertainty_where_disagree_mm", "uncertainty_where_agree_mm")
    table = method_table(rows)
    table += (
        f"\n\nuncertainty of {sampled_name} vs label disagreement after registration (mean over pairs): "
        + ", ".join(f"{k} {np.mean([u[k] for u in uncertainty_rows]):.3f}" for k in keys)
        + f"\n\nper learned step in the session (working grid, this CPU, {args.threads} threads): "
        + ", ".join(f"{k}: {v:.0f} ms" for k, v in latency.items())
        + f"\npeak RSS of the benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    )
    print(table)
    write_results(args.out, "morphseek", {"rows": rows, "args": vars(args)}, table, argv or sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
