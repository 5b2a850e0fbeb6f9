"""How a learned policy should hand over to test-time optimization (the ``<id>+tto`` policies): how many
learned steps, which TTO pyramid schedule, which regularization weight for the learned lambda map.

    python benchmarks/chain_settings.py [--model models/spac-brain-synth] [--pairs 1:2,3:4,5:6,7:8]

Every combination of ``--learned-steps`` x ``--pyramids`` x ``--regularization`` runs, each followed by
``--then-steps`` TTO steps, on pairs of **training** subjects (1-10, synthesized T1-like like the
validation pairs), so that the validation pairs (11-14) of ``policies.py`` and ``morphseek.py`` stay
untouched by this choice. ``train`` as a regularization value means the model's own training diffusion
weight (``card.training.config.loss.diffusion_weight``): the weight its lambda map was learned with.

With ``--quality fine`` it chooses the card's ``inference.chain.fine`` instead: how the chain runs the fine
schedule (``rlreg register --policy <id>+tto --quality fine``): every combination of ``--learned-steps`` x
``--skip-levels`` (the first fine TTO levels, 4, 4, 2 mm, that the learned steps replace) x
``--regularization`` x ``--iterations`` (TTO iterations per kept level), each run as that command would
(``RunSpec``, its own process, 1 mm pairs, the wall time of the whole registration, pre-alignment
included), beside ``tto --quality fine`` itself. Only settings within ``--max-time-ratio`` of TTO's time
compete (the bar: more accurate at no more of its time).

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
    card_variants,
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
    parser.add_argument("--model", default=str(REPO / "models" / "spac-brain-synth"))
    parser.add_argument("--learned-steps", default="2,3,4,5", help="comma-separated")
    parser.add_argument(
        "--pyramids", default="1;2,1", help="TTO pyramid schedules, ';'-separated (2,1 = one coarse step)"
    )
    parser.add_argument("--regularization", default="2,train", help="TTO weights; 'train' = the card's")
    parser.add_argument("--contrast", choices=("t1", "t2"), default="t1", help="of the moving images")
    parser.add_argument("--similarity", choices=("ncc", "mind"), default="ncc", help="of the TTO steps")
    parser.add_argument("--quality", choices=("standard", "fine"), default="standard")
    parser.add_argument("--tag", default="", help="--quality fine: suffix of the result files")
    parser.add_argument("--rows-from", default="", help="--quality fine: summarize the rows of this JSON")
    parser.add_argument(
        "--max-time-ratio",
        type=float,
        default=0.95,
        help="--quality fine: only settings at most this times tto's mean time compete (issue 25's bar: "
        "no more of its time; 0.95 leaves room for the run-to-run spread of the wall time)",
    )
    parser.add_argument("--skip-levels", default="1,2,3", help="--quality fine: comma-separated")
    parser.add_argument(
        "--iterations",
        default="5",
        help="--quality fine: TTO iterations per kept level, ';'-separated settings (5/5/4: 4 at the last)",
    )
    add_session_arguments(parser)
    parser.set_defaults(pairs="1:2,3:4,5:6,7:8", then_steps=4)
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir):
        return 2
    if args.quality == "fine":
        return choose_fine(args, argv)
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

    summary, best = summarize(rows)
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


def summarize(rows: list[dict], max_time_ratio: float | None = None) -> tuple[list[dict], dict]:
    """(mean Dice, % det J <= 0 and seconds per setting, the best chained setting: highest mean Dice; of
    those within 0.002 of it, the fastest). ``max_time_ratio``: only settings whose mean time is at most
    this times TTO's (the rows' "tto" setting) compete, when any does."""
    summary = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == name]
        summary.append(
            {k: float(np.mean([r[k] for r in group])) for k in ("dice", "folding_percent", "seconds")}
        )
        summary[-1]["setting"] = name
    chained = [s for s in summary if s["setting"] != "tto"]
    if max_time_ratio is not None:
        budget = max_time_ratio * next(s["seconds"] for s in summary if s["setting"] == "tto")
        chained = [s for s in chained if s["seconds"] <= budget] or chained
    best_dice = max(s["dice"] for s in chained)
    best = min((s for s in chained if s["dice"] >= best_dice - 0.002), key=lambda s: s["seconds"])
    return summary, best


def choose_fine(args, argv) -> int:
    """``--quality fine``: the card's ``inference.chain.fine`` from runs of the whole command."""
    from accuracy import prepare_pairs, run_one

    model = Path(args.model).resolve()
    card = load_model_card(model, args.threads)
    train_weight = float(card["training"]["config"]["loss"]["diffusion_weight"])
    weights = [train_weight if w == "train" else float(w) for w in args.regularization.split(",")]
    iterations = [[int(v) for v in text.split("/")] for text in args.iterations.split(";")]
    settings = [
        {
            "learned_steps": n,
            "skip_levels": k,
            "tto": {"regularization": w, **({"iterations": i} if i != [5] else {})},
        }
        for n, k, w, i in itertools.product(
            _ints(args.learned_steps), _ints(args.skip_levels), weights, iterations
        )
    ]
    options = {"threads": args.threads, "profile": False, "similarity": args.similarity}
    rows = json.loads(Path(args.rows_from).read_text())["rows"] if args.rows_from else []
    pairs = (
        []
        if rows
        else prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), args.contrast)
    )
    with card_variants(model, card) as write_card:
        for pair in pairs:
            runs = [("tto", "tto", None)] + [(json.dumps(s), f"{card['id']}+tto", s) for s in settings]
            for name, policy, setting in runs:
                if setting is not None:
                    chain = {**card["inference"].get("chain", {}), "fine": setting}
                    write_card({**card, "inference": {**card["inference"], "chain": chain}})
                method = "rlreg-fine" if policy == "tto" else "rlreg-chain-fine"
                report = run_one(method, pair, argparse.Namespace(chain=policy, **options))
                if "error" in report:
                    raise SystemExit(f"chain_settings: {name} on {pair['pair']}: {report['error']}")
                rows.append({"setting": name, **{k: report[k] for k in ("pair", "dice", "seconds")}})
                rows[-1]["folding_percent"] = report["folding_percent"]
                print(json.dumps(rows[-1]), flush=True)
    summary, best = summarize(rows, args.max_time_ratio)
    tto = next(s for s in summary if s["setting"] == "tto")
    chosen = json.loads(best["setting"])
    lines = [
        f"model {model.name}; pairs {args.pairs} (training subjects, 1 mm, moving {args.contrast.upper()}-like); "
        f"each row `rlreg register --policy {card['id']}+tto --quality fine` with that inference.chain.fine, "
        f"wall s of the whole registration (pre-alignment included), {args.threads} threads",
        "",
        "| setting | mean Dice | Dice − tto fine | % det J ≤ 0 | wall s | time / tto fine |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['setting']} | {s['dice']:.4f} | {s['dice'] - tto['dice']:+.4f} | {s['folding_percent']:.4f} | "
        f"{s['seconds']:.1f} | {s['seconds'] / tto['seconds']:.2f} |"
        for s in summary
    ]
    lines += [
        "",
        f"chosen (inference.chain.fine of the card; the highest mean Dice among settings at most "
        f"{args.max_time_ratio:g}× tto's time): {json.dumps(chosen)}",
    ]
    table = "\n".join(lines)
    print(table)
    payload = {"rows": rows, "summary": summary, "chosen": chosen, "args": vars(args)}
    stem = f"chain_settings_{card['id']}_fine" + (f"_{args.tag}" if args.tag else "")
    write_results(args.out, stem, payload, table, argv or sys.argv[1:], "chain_settings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
