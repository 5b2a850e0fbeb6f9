"""How a learned policy should hand over to test-time optimization (the ``<id>+tto`` policies): how many
learned steps, which TTO pyramid schedule, which regularization weight for the learned lambda map.

    python benchmarks/chain_settings.py [--model recipes/spac-brain-synth] [--pairs 1:2,3:4,5:6,7:8]

Every combination of ``--learned-steps`` x ``--pyramids`` x ``--regularization`` runs, each followed by
``--then-steps`` TTO steps, on pairs of **training** subjects (1-10, synthesized T1-like like the
validation pairs), so that the validation pairs (11-14) of ``policies.py`` and ``morphseek.py`` stay
untouched by this choice. ``train`` as a regularization value means the model's own training diffusion
weight (``card.training.config.loss.diffusion_weight``): the weight its lambda map was learned with.

With ``--contrast t2 --similarity mind`` the moving images are T2-like and TTO (alone and in the chain)
uses MIND-SSC: this chooses the card's ``inference.chain.tto_by_similarity.mind`` (the options that replace
``tto``'s when a user picks that similarity).

Prints mean final Dice, % det J <= 0 and wall seconds per setting (and TTO alone for reference), and the
``inference.chain`` block of the best setting (highest mean Dice; among settings within 0.002 of it, the
fastest) to put in the model's card. Needs ``../shared/data``; exits 2 with a message when absent.
"""

from __future__ import annotations

import argparse
import itertools
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
    read_pair,
    run_session,
    shared_data_missing,
    write_results,
)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(REPO / "recipes" / "spac-brain-synth"))
    parser.add_argument("--learned-steps", default="2,3,4,5", help="comma-separated")
    parser.add_argument(
        "--pyramids", default="1;2,1", help="TTO pyramid schedules, ';'-separated (2,1 = one coarse step)"
    )
    parser.add_argument("--regularization", default="2,train", help="TTO weights; 'train' = the card's")
    parser.add_argument("--contrast", choices=("t1", "t2"), default="t1", help="of the moving images")
    parser.add_argument("--similarity", choices=("ncc", "mind"), default="ncc", help="of the TTO steps")
    add_session_arguments(parser)
    parser.set_defaults(pairs="1:2,3:4,5:6,7:8", then_steps=4)
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir):
        return 2
    from accuracy import prepare_pairs

    from RLRegistrationLib.policies.chained import ChainedPolicy
    from RLRegistrationLib.policies.registry import make_policy
    from RLRegistrationLib.policies.tto import make_tto_policy

    model = Path(args.model)
    card = load_model_card(model, args.threads)
    train_weight = float(card["training"]["config"]["loss"]["diffusion_weight"])
    weights = [train_weight if w == "train" else float(w) for w in args.regularization.split(",")]
    pyramids = [tuple(_ints(p)) for p in args.pyramids.split(";")]
    settings = [
        {"learned_steps": n, "tto": {"pyramid": list(p), "regularization": w}}
        for n, p, w in itertools.product(_ints(args.learned_steps), pyramids, weights)
    ]
    similarity = {"similarity": args.similarity}

    rows = []
    for pair in prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), args.contrast):
        images = read_pair(pair)
        dice, seconds, session = run_session(make_policy("tto", **similarity), images, args.tto_steps)
        rows.append({"setting": "tto", "pair": pair["pair"], "dice": dice[-1], "seconds": seconds})
        rows[-1]["folding_percent"] = folding_percent(session)
        print(json.dumps(rows[-1]), flush=True)
        for setting in settings:
            first = make_policy(card["id"], device="cpu")
            tto = make_tto_policy("tto", **setting["tto"], **similarity)
            steps = setting["learned_steps"] + args.then_steps
            dice, seconds, session = run_session(
                ChainedPolicy(first, setting["learned_steps"], tto), images, steps
            )
            row = {"setting": json.dumps(setting), "pair": pair["pair"], "dice": dice[-1], "seconds": seconds}
            rows.append({**row, "folding_percent": folding_percent(session)})
            print(json.dumps(rows[-1]), flush=True)

    summary = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == name]
        summary.append(
            {k: float(np.mean([r[k] for r in group])) for k in ("dice", "folding_percent", "seconds")}
        )
        summary[-1]["setting"] = name
    chained = [s for s in summary if s["setting"] != "tto"]
    best_dice = max(s["dice"] for s in chained)
    best = min((s for s in chained if s["dice"] >= best_dice - 0.002), key=lambda s: s["seconds"])
    chain = {**json.loads(best["setting"]), "then_steps": args.then_steps}
    if args.similarity != "ncc":  # the options that replace the chain's TTO options for this similarity
        chain = {"tto_by_similarity": {args.similarity: chain["tto"]}}
    lines = [
        f"model {model.name}; pairs {args.pairs} (training subjects, moving {args.contrast.upper()}-like, TTO "
        f"with {args.similarity}); {args.then_steps} TTO steps after the learned ones",
        "",
        "| setting | mean final Dice | % det J ≤ 0 | wall s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['setting']} | {s['dice']:.4f} | {s['folding_percent']:.4f} | {s['seconds']:.1f} |"
        for s in summary
    ]
    lines += ["", f"chosen (inference.chain of the card): {json.dumps(chain)}"]
    table = "\n".join(lines)
    print(table)
    payload = {"rows": rows, "summary": summary, "chosen": chain, "args": vars(args)}
    suffix = (
        "" if (args.contrast, args.similarity) == ("t1", "ncc") else f"_{args.contrast}_{args.similarity}"
    )
    write_results(
        args.out,
        f"chain_settings_{card['id']}{suffix}",
        payload,
        table,
        argv or sys.argv[1:],
        "chain_settings",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
