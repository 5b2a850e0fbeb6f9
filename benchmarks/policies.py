"""Learned policies vs test-time optimization on the SynthSeg validation pairs (1 mm, 160x192x224).

    python benchmarks/policies.py --model models/spac-brain-synth [--pairs 11:12,12:13,13:14,14:11]

Runs, side by side in one process and on the same pairs (fixed T1-like; moving T1-like, and T2-like for
the cross-contrast rows):

* ``tto``                 : test-time optimization alone (the CLI default, 6 steps)
* ``spac``                : the learned policy's steps alone (per-step Dice: does it rise step by step?)
* ``spac+tto``            : learned steps, then fine TTO steps regularized by the learned lambda map
* ``spac+tto uniform λ``  : the same with lambda replaced by a uniform map of the same mean
* cross-contrast (moving T2-like): ``tto ncc``, ``tto mind``, ``spac``, ``spac+tto mind``
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RLRegistration"))
sys.path.insert(0, str(REPO / "benchmarks"))

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


def run_session(policy, pair_images, steps: int):
    """Run a session with labels; returns per-step Dice, wall seconds of the registration, the session."""
    from RLRegistrationLib.metrics import evaluation_labels
    from RLRegistrationLib.session import RegistrationSession, SessionOptions

    fixed, moving, fixed_labels, moving_labels = pair_images
    labels = [v for v in evaluation_labels() if v not in (31, 63)]
    options = SessionOptions(device="cpu", seed=0, dice_labels=labels)
    session = RegistrationSession(fixed, moving, policy, options, fixed_labels, moving_labels)
    session.prepare()
    reports = list(session.run(steps))
    seconds = session.reports[0].step_seconds + sum(r.step_seconds for r in reports)
    return [session.reports[0].dice] + [r.dice for r in reports], seconds, session


def folding_percent(session) -> float:
    from RLRegistrationLib.metrics import jacobian_of_field, jacobian_stats

    return jacobian_stats(jacobian_of_field(session.result().displacement))["folding_percent"]


class UniformWeight:
    """Wraps a policy: its lambda map is replaced by a uniform map of the same mean (ablation)."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.description, self.modality = inner.name, inner.description, inner.modality

    def reset(self, fixed, moving, spacing_mm=None):
        self.inner.reset(fixed, moving, spacing_mm)

    def propose(self, state):
        import torch

        step = self.inner.propose(state)
        if step.weight_map is not None:
            step.weight_map = torch.full_like(step.weight_map, float(step.weight_map.mean()))
        return step


def lambda_by_label(session, fixed_labels) -> dict[str, float]:
    """Mean of the last lambda map per anatomical label of the fixed image (on the working grid)."""
    import SimpleITK as sitk

    from RLRegistrationLib.imaging import resample_to_grid

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

    from RLRegistrationLib.learned_policies import load_model

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
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--pairs", default="11:12,12:13,13:14,14:11")
    parser.add_argument("--spac-steps", type=int, default=5)
    parser.add_argument("--tto-steps", type=int, default=6)
    parser.add_argument("--then-steps", type=int, default=3, help="fine TTO steps after the learned ones")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (SyN runs with the same)")
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--no-cross-contrast", action="store_true")
    parser.add_argument("--no-syn", action="store_true", help="leave out ANTs SyN")
    args = parser.parse_args(argv)
    if not (Path(args.shared_dir) / "synthseg").is_dir():
        print(
            f"benchmark: '{args.shared_dir}/synthseg' is absent: this benchmark needs the SynthSeg label maps "
            "(../shared/data beside the repository, or --shared-dir)",
            file=sys.stderr,
        )
        return 2
    import SimpleITK as sitk
    import torch
    from accuracy import available, prepare_pairs, run_one

    from RLRegistrationLib.learned_policies import ChainedPolicy, SPACPolicy
    from RLRegistrationLib.policies import make_policy

    torch.set_num_threads(args.threads)
    model = Path(args.model)
    fine = {"pyramid": (1,)}

    def spac():
        return SPACPolicy(model, device="cpu")

    def chained(uniform=False, similarity="ncc"):
        first = UniformWeight(spac()) if uniform else spac()
        return ChainedPolicy(first, args.spac_steps, make_policy("tto", similarity=similarity, **fine))

    same = [
        ("tto", lambda: make_policy("tto"), args.tto_steps),
        ("spac", spac, args.spac_steps),
        ("spac+tto", chained, args.spac_steps + args.then_steps),
        ("spac+tto uniform λ", lambda: chained(uniform=True), args.spac_steps + args.then_steps),
    ]
    cross = [
        ("T2: tto ncc", lambda: make_policy("tto"), args.tto_steps),
        ("T2: tto mind", lambda: make_policy("tto", similarity="mind"), args.tto_steps),
        ("T2: spac", spac, args.spac_steps),
        ("T2: spac+tto mind", lambda: chained(similarity="mind"), args.spac_steps + args.then_steps),
    ]
    experiments = [("t1", same)] + ([] if args.no_cross_contrast else [("t2", cross)])
    rows, lambdas = [], []
    for contrast, methods in experiments:
        for pair in prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), contrast):
            images = [sitk.ReadImage(pair[k], sitk.sitkFloat32) for k in ("fixed", "moving")]
            images += [sitk.ReadImage(pair[k]) for k in ("fixed_labels", "moving_labels")]
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
                    "folding_percent": folding_percent(session),
                }
                if name == "spac":
                    lam = session.weight_map_at()[0, 0].numpy()
                    lambdas.append(
                        {
                            "pair": pair["pair"],
                            "min": float(lam.min()),
                            "max": float(lam.max()),
                            "mean": float(lam.mean()),
                            "std": float(lam.std()),
                            "p5": float(np.percentile(lam, 5)),
                            "p95": float(np.percentile(lam, 95)),
                            "by_label": lambda_by_label(session, images[2]),
                        }
                    )
                rows.append(row)
                print(json.dumps(row), flush=True)
    latency = network_latency(model, [(64, 64, 64), (128, 128, 128), (224, 192, 160)])
    table = summarize(rows, lambdas, latency)
    table += f"\npeak RSS of the benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "policies.json").write_text(
        json.dumps({"rows": rows, "lambda": lambdas, "latency_ms": latency, "args": vars(args)}, indent=2)
    )
    (out / "policies.md").write_text(
        f"`python benchmarks/policies.py {' '.join(argv or sys.argv[1:])}`\n\n{table}\n"
    )
    return 0


def summarize(rows, lambdas, latency) -> str:
    names = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "| method | mean Dice per step (0 = affine) | final Dice | % det J ≤ 0 | wall s |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        group = [r for r in rows if r["method"] == name]
        curve = np.mean([r["dice_per_step"] for r in group], axis=0)
        lines.append(
            f"| {name} | {' → '.join(f'{d:.3f}' for d in curve)} | {curve[-1]:.4f} | "
            f"{np.mean([r['folding_percent'] for r in group]):.4f} | "
            f"{np.mean([r['seconds'] for r in group]):.1f} |"
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
