"""Learned policies vs test-time optimization on the SynthSeg validation pairs (1 mm, 160x192x224).

    python benchmarks/policies.py --model models/spac-brain-synth [--pairs 11:12,12:13,13:14,14:11]

Runs, side by side in one process and on the same pairs (fixed T1-like; moving T1-like, and T2-like for
the cross-contrast rows):

* ``tto``                 : test-time optimization alone (the CLI default, 6 steps)
* ``spac``                : the learned policy's steps alone (per-step Dice: does it rise step by step?)
* ``spac+tto``            : the ``<id>+tto`` policy as a user gets it: the card's ``inference.chain``
                            (learned steps, then TTO steps regularized by the learned lambda map; chosen by
                            ``chain_settings.py`` on training subjects) and its default number of steps
* ``spac+tto uniform λ``  : the same with lambda replaced by a uniform map of the same mean
* ``λ ×s`` / ``uniform λ ×s`` for each ``--lambda-scales`` s: both maps multiplied by s (a Dice-vs-folding
  curve for each, to compare them at equal folding, not only at the same mean)
* cross-contrast (moving T2-like): ``tto ncc``, ``tto mind``, ``spac``, ``spac+tto ncc`` (the default
  similarity), ``spac+tto mind``
* ``ANTs SyN`` on the T1 pairs, when antspyx is installed (in its own process, like ``accuracy.py``;
  final Dice only)

and reports mean Dice per step, final Dice, % det J <= 0, wall seconds (prepare + steps, without the
Dice bookkeeping), the lambda map's spread and its mean per anatomical label, and the per-step latency of
the network at several grid sizes. Needs ``../shared/data``; exits 2 with a message when absent.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    add_session_arguments,
    folding_inside_and_out,
    load_model_card,
    method_table,
    read_pair,
    run_session,
    shared_data_missing,
    write_results,
)

LABEL_NAMES = {
    2: "cerebral WM",
    3: "cortex",
    4: "lateral ventricle",
    7: "cerebellum WM",
    8: "cerebellum cortex",
    10: "thalamus",
    11: "caudate",
    12: "putamen",
    16: "brainstem",
    17: "hippocampus",
    0: "background",
}


def lambda_by_label(session, fixed_labels) -> dict[str, float]:
    """Mean of the last lambda map per anatomical label of the fixed image (on the working grid)."""
    import SimpleITK as sitk

    from RLRegistrationLib.io.imaging import resample_to_grid

    lam = session.weight_map_at()
    if lam is None:
        return {}
    lam = lam[0, 0].numpy()
    labels = sitk.GetArrayFromImage(
        resample_to_grid(fixed_labels, session.grid, interpolator=sitk.sitkNearestNeighbor)
    )
    out = {}
    for value, name in LABEL_NAMES.items():
        mask = labels == value
        if mask.any():
            out[name] = float(lam[mask].mean())
    return out


def network_latency(model_dir: Path, shapes) -> dict[str, float]:
    """Milliseconds of one learned step (network forward) on random inputs at each grid shape, CPU."""
    import torch

    from RLRegistrationLib.policies.network_policy import load_model

    network, _ = load_model(model_dir, torch.device("cpu"))
    out = {}
    with torch.no_grad():
        for shape in shapes:
            fixed = torch.rand((1, 1, *shape))
            network(fixed, fixed)
            start = time.perf_counter()
            for _ in range(2):
                network(fixed, fixed)
            out["x".join(map(str, shape))] = 1000 * (time.perf_counter() - start) / 2
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(REPO / "models" / "spac-brain-synth"))
    parser.add_argument("--spac-steps", type=int, help="learned steps alone (default: the card's)")
    parser.add_argument(
        "--lambda-scales", default="0.125,0.25,0.5,2,4", help="extra scales of learned and uniform lambda"
    )
    parser.add_argument("--no-cross-contrast", action="store_true")
    parser.add_argument("--no-syn", action="store_true", help="leave out ANTs SyN")
    add_session_arguments(parser)
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir):
        return 2
    from accuracy import available, prepare_pairs, run_one

    from RLRegistrationLib.policies.cards import chain_settings
    from RLRegistrationLib.policies.chained import WeightMapOverride
    from RLRegistrationLib.policies.registry import make_policy

    model = Path(args.model)
    card = load_model_card(model, args.threads)
    learned_steps = args.spac_steps or int(card.get("inference", {}).get("steps", 5))
    chain_steps = chain_settings(card, model).total_steps

    def spac():
        return make_policy(card["id"], device="cpu")

    def chained(scale=1.0, uniform=False, similarity=None):
        policy = make_policy(f"{card['id']}+tto", device="cpu", similarity=similarity)
        if uniform or scale != 1.0:
            policy.first = WeightMapOverride(policy.first, scale, uniform)
        return policy

    same = [
        ("tto", lambda: make_policy("tto"), args.tto_steps),
        ("spac", spac, learned_steps),
        ("spac+tto", chained, chain_steps),
        ("spac+tto uniform λ", lambda: chained(uniform=True), chain_steps),
    ]
    for scale in [float(v) for v in args.lambda_scales.split(",") if v]:
        same += [
            (f"spac+tto λ ×{scale:g}", lambda s=scale: chained(s), chain_steps),
            (f"spac+tto uniform λ ×{scale:g}", lambda s=scale: chained(s, True), chain_steps),
        ]
    cross = [
        ("T2: tto ncc", lambda: make_policy("tto"), args.tto_steps),
        ("T2: tto mind", lambda: make_policy("tto", similarity="mind"), args.tto_steps),
        ("T2: spac", spac, learned_steps),
        ("T2: spac+tto ncc", chained, chain_steps),
        ("T2: spac+tto mind", lambda: chained(similarity="mind"), chain_steps),
    ]
    experiments = [("t1", same)] + ([] if args.no_cross_contrast else [("t2", cross)])
    rows, lambdas = [], []
    for contrast, methods in experiments:
        for pair in prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), contrast):
            images = read_pair(pair)
            if contrast == "t1" and not args.no_syn and available("syn"):
                syn = run_one("syn", pair, argparse.Namespace(threads=args.threads, profile=False))
                rows.append({**syn, "method": "ANTs SyN", "dice_per_step": [syn.get("dice", float("nan"))]})
                print(json.dumps(rows[-1]), flush=True)
            for name, factory, steps in methods:
                dice, seconds, session = run_session(factory(), images, steps)
                row = {
                    "method": name,
                    "pair": pair["pair"],
                    "dice_per_step": dice,
                    "seconds": seconds,
                    **folding_inside_and_out(session, images[2]),
                }
                if name == "spac":
                    lambdas.append({"pair": pair["pair"], **lambda_summary(session, images[2])})
                rows.append(row)
                print(json.dumps(row), flush=True)
    latency = network_latency(model, [(64, 64, 64), (128, 128, 128), (224, 192, 160)])
    table = summarize(rows, lambdas, latency, chain_settings(card, model))
    table += f"\npeak RSS of the benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    print(table)
    payload = {"rows": rows, "lambda": lambdas, "latency_ms": latency, "args": vars(args)}
    write_results(args.out, "policies", payload, table, argv or sys.argv[1:])
    return 0


def lambda_summary(session, fixed_labels) -> dict:
    """Spread of the session's last lambda map (working grid) and its mean per anatomical label."""
    lam = session.weight_map_at()[0, 0].numpy()
    return {
        "min": float(lam.min()),
        "max": float(lam.max()),
        "mean": float(lam.mean()),
        "std": float(lam.std()),
        "p5": float(np.percentile(lam, 5)),
        "p95": float(np.percentile(lam, 95)),
        "by_label": lambda_by_label(session, fixed_labels),
    }


def final_dice_and_folding(rows, name) -> tuple[float, float] | None:
    """Mean final Dice and mean % det J <= 0 of the method ``name`` over its pairs (None: not run)."""
    group = [r for r in rows if r["method"] == name]
    if not group:
        return None
    return np.mean([r["dice_per_step"][-1] for r in group]), np.mean([r["folding_percent"] for r in group])


def lambda_comparison(rows) -> list[str]:
    """The spatially-varying-regularization claim, per lambda scale: learned vs uniform map of the same
    mean (Dice and folding), and vs the uniform maps' Dice-vs-folding curve (all scales, linear in %
    folded) at the learned map's folding."""
    names = sorted(
        {r["method"].removeprefix("spac+tto λ ×") for r in rows if r["method"].startswith("spac+tto λ ×")},
        key=float,
    )
    pairs = [("1", "spac+tto", "spac+tto uniform λ")] + [
        (s, f"spac+tto λ ×{s}", f"spac+tto uniform λ ×{s}") for s in names
    ]
    measured = [(s, final_dice_and_folding(rows, a), final_dice_and_folding(rows, b)) for s, a, b in pairs]
    measured = [m for m in measured if m[1] and m[2]]
    if not measured:
        return []
    curve = sorted((u[1], u[0]) for _, _, u in measured)  # (folding, Dice) of the uniform maps
    lines = [
        "\nlearned vs uniform λ (final Dice / % det J ≤ 0); 'curve' = the uniform maps' Dice interpolated at "
        "the learned map's folding:",
        "",
        "| λ scale | learned | uniform, same mean | learned wins at equal or lower folding | curve at that folding |",
        "|---|---|---|---|---|",
    ]
    for scale, (dice, fold), (u_dice, u_fold) in sorted(measured, key=lambda m: float(m[0])):
        inside = curve[0][0] <= fold <= curve[-1][0]
        at_curve = np.interp(fold, *zip(*curve)) if inside else float("nan")
        wins = "yes" if dice >= u_dice and fold <= u_fold else "no"
        lines.append(
            f"| ×{scale} | {dice:.4f} / {fold:.4f} | {u_dice:.4f} / {u_fold:.4f} | {wins} | "
            + (f"{at_curve:.4f} ({dice - at_curve:+.4f}) |" if inside else "outside the curve |")
        )
    return lines


def summarize(rows, lambdas, latency, chain=None) -> str:
    lines = [method_table(rows), *lambda_comparison(rows)]
    inside = [r for r in rows if "folding_in_brain_percent" in r]
    if inside:
        lines.append("\n% det J ≤ 0 inside the fixed brain mask / outside it (mean over pairs):")
        for name in dict.fromkeys(r["method"] for r in inside):
            group = [r for r in inside if r["method"] == name]
            brain = np.mean([r["folding_in_brain_percent"] for r in group])
            outside = np.mean([r["folding_outside_brain_percent"] for r in group])
            lines.append(f"* {name}: {brain:.4f} / {outside:.4f}")
    if chain is not None:
        lines.append(
            f"\nspac+tto = the card's inference.chain: {chain.learned_steps} learned steps, then "
            f"{chain.then_steps} TTO steps with {chain.tto}"
        )
    if lambdas:
        keys = ("min", "p5", "mean", "p95", "max", "std")
        lines += [
            "",
            "λ map of the learned policy (working grid, mean over pairs): "
            + ", ".join(f"{k} {np.mean([lam[k] for lam in lambdas]):.3f}" for k in keys),
        ]
        labels = sorted({k for lam in lambdas for k in lam["by_label"]})
        by_label = {
            k: np.mean([lam["by_label"][k] for lam in lambdas if k in lam["by_label"]]) for k in labels
        }
        lines.append(
            "mean λ by fixed label: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(by_label.items(), key=lambda kv: kv[1]))
        )
    if latency:
        import torch

        lines.append(
            f"\nnetwork step latency on this CPU ({torch.get_num_threads()} threads): "
            + ", ".join(f"{k}: {v:.0f} ms" for k, v in latency.items())
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
