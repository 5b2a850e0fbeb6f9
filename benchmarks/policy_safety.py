"""Is every shipped learned policy safe to pick? Folding of ``<id>`` and ``<id>+tto`` with raw and with
diffeomorphic learned steps, on the SynthSeg validation pairs (1 mm, 160x192x224, fixed and moving
T1-like; the pairs of ``policies.py`` and ``morphseek.py``).

    python benchmarks/policy_safety.py [--models models/spac-brain-synth,...] [--pairs 11:12,...]
                                       [--chain-regularization 8] [--threads 1]

For each model folder (default: every folder of ``models/`` and ``recipes/``) and each pair, runs the policies as a user
gets them (``make_policy(<id>)`` / ``make_policy(<id>+tto)`` with the card's settings and default number
of steps), once with the raw learned steps (``diffeomorphic_steps=False``, what the cards did before the
option) and once with each learned step integrated as a stationary velocity field
(``diffeomorphic_steps=True``). ``--chain-regularization`` adds chain runs with that TTO weight instead of
the card's (diffeomorphic steps). Reports, per method: mean final Dice, max and mean % det J <= 0 of the
session's whole transform on the fixed grid (``common.folding_percent``), min det J, and mean wall seconds
(prepare + steps). The issue's bar: max % det J <= 0 below 0.05 on every pair. Needs ``../shared/data``;
exits 2 with a message when absent.
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
    load_model_card,
    read_pair,
    run_session,
    shared_data_missing,
    write_results,
)

LIMIT_PERCENT = 0.05  # issue 13, item 6: "folds < 0.05 % of voxels"


def whole_transform_jacobian(session) -> dict[str, float]:
    """% det J <= 0 and min det J of the session's total field on the fixed grid."""
    from RLRegistrationLib.fields.metrics import jacobian_of_field, jacobian_stats

    stats = jacobian_stats(jacobian_of_field(session.result().displacement))
    return {"folding_percent": stats["folding_percent"], "jacobian_min": stats["jacobian_min"]}


def safety_table(rows: list[dict]) -> str:
    lines = [
        "| method | learned steps | pairs | mean final Dice | max % det J ≤ 0 | mean % det J ≤ 0 | min det J | "
        f"< {LIMIT_PERCENT} % on every pair | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["method"] for r in rows):
        for steps in dict.fromkeys(r["steps_kind"] for r in rows if r["method"] == name):
            group = [r for r in rows if r["method"] == name and r["steps_kind"] == steps]
            folding = [r["folding_percent"] for r in group]
            lines.append(
                f"| {name} | {steps} | {len(group)} | {np.mean([r['dice_per_step'][-1] for r in group]):.4f} | "
                f"{max(folding):.4f} | {np.mean(folding):.4f} | {min(r['jacobian_min'] for r in group):.3f} | "
                f"{'yes' if max(folding) < LIMIT_PERCENT else '**no**'} | "
                f"{np.mean([r['seconds'] for r in group]):.1f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        help="comma-separated model folders (default: every folder of models/ and recipes/ with a card)",
    )
    parser.add_argument(
        "--chain-regularization",
        default="",
        help="comma-separated TTO weights for extra <id>+tto runs (diffeomorphic learned steps)",
    )
    parser.add_argument("--raw", action="store_true", help="also run the raw steps at --chain-regularization")
    parser.add_argument("--stem", default="policy_safety", help="name of the results files")
    parser.add_argument(
        "--rows-from",
        help="rebuild the table and results files from the JSON rows a run printed (its log), without running",
    )
    add_session_arguments(parser)
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir):
        return 2
    folders = (
        [Path(f) for f in args.models.split(",") if f]
        if args.models
        else sorted(p.parent for folder in ("models", "recipes") for p in (REPO / folder).glob("*/card.json"))
    )
    for folder in folders:
        if not (folder / "card.json").is_file():
            print(f"benchmark: model folder '{folder}' (with card.json) is absent", file=sys.stderr)
            return 2
    from accuracy import prepare_pairs

    from RLRegistrationLib.policies.cards import inference_step_options
    from RLRegistrationLib.policies.registry import make_policy, policy_default_steps

    methods = []  # (method, steps kind, factory, steps)
    cards = {}
    for folder in folders:
        card = load_model_card(folder, args.threads)
        name = str(card["id"])
        cards[name] = {
            "folder": str(folder),
            "diffeomorphic_steps_in_card": inference_step_options(card, folder / "card.json")[0],
        }
        steps = int(card.get("inference", {}).get("steps", 5))
        chain = f"{name}+tto"
        for diffeomorphic in (False, True):
            kind = "diffeomorphic" if diffeomorphic else "raw"
            methods += [
                (
                    name,
                    kind,
                    lambda n=name, d=diffeomorphic: make_policy(n, device="cpu", diffeomorphic_steps=d),
                    steps,
                ),
                (
                    chain,
                    kind,
                    lambda c=chain, d=diffeomorphic: make_policy(c, device="cpu", diffeomorphic_steps=d),
                    policy_default_steps(chain),
                ),
            ]
        for weight in [float(v) for v in args.chain_regularization.split(",") if v]:
            for diffeomorphic in (False, True) if args.raw else (True,):
                kind = "diffeomorphic" if diffeomorphic else "raw"
                methods.append(
                    (
                        f"{chain} regularization {weight:g}",
                        kind,
                        lambda c=chain, d=diffeomorphic, w=weight: make_policy(
                            c, device="cpu", diffeomorphic_steps=d, regularization=w
                        ),
                        policy_default_steps(chain),
                    )
                )

    rows = []
    if args.rows_from:  # a run's printed rows (e.g. one stopped after some pairs): table and files only
        lines = Path(args.rows_from).read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.startswith("{")]
        args.pairs = ",".join(dict.fromkeys(r["pair"] for r in rows))
    for pair in (
        []
        if args.rows_from
        else prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), "t1")
    ):
        images = read_pair(pair)
        for name, kind, factory, steps in methods:
            dice, seconds, session = run_session(factory(), images, steps)
            row = {
                "method": name,
                "steps_kind": kind,
                "pair": pair["pair"],
                "dice_per_step": dice,
                "seconds": seconds,
                **whole_transform_jacobian(session),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = safety_table(rows)
    table += (
        f"\n\npairs {args.pairs}, {args.threads} torch thread(s); % det J ≤ 0 of the whole transform on the "
        "fixed grid; 'raw' = the network's step as is, 'diffeomorphic' = exp(step) (scaling and squaring)"
    )
    print(table)
    payload = {"rows": rows, "models": cards, "args": vars(args), "limit_percent": LIMIT_PERCENT}
    write_results(args.out, args.stem, payload, table, argv or sys.argv[1:], script="policy_safety")
    return 0


if __name__ == "__main__":
    sys.exit(main())
