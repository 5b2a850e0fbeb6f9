"""Does an RL stage make the uncertainty map better? Issue 25, item 4: an RL stage (GRPO for MorphSeek, SAC
for SPAC) must beat the model it starts from in Dice at equal folding *or* in how well the spread of its
sampled trajectories predicts where the registration is still wrong. This measures the second.

    python benchmarks/uncertainty_quality.py [--models recipes/morphseek-brain-synth-warmup,...]
        [--samples 4] [--temperature 1] [--pairs 11:12,12:13,13:14,14:11] [--tag T]

For each model (default: MorphSeek's warm-up model and the four GRPO models started from it, all in
``recipes/``; any sampling model folder, SPAC included: the first is the start) and each validation pair, one
session runs the card's learned steps with K sampled trajectories (``--samples``, ``--temperature``; the
session follows their mean field, as ``rlreg register --samples K`` does). Per (model, pair):

* Dice and % det J <= 0 of the mean field (what the user gets);
* the error to predict: the voxels where the labels still disagree after registration (fixed labels vs the
  moving labels through the result, fixed grid, inside the union of the two foregrounds);
* ``AUROC spread``: how well the uncertainty map (the trajectories' spread, mm) ranks those voxels above
  the agreeing ones (``metrics.auroc``: 0.5 = chance, 1 = perfect), and its Pearson correlation;
* ``AUROC edges``: the same for a map every registration has without sampling, the gradient magnitude of
  the fixed image (Gaussian, sigma 1 mm). Disagreement lies on label boundaries, which are image edges; a
  spread that does not beat this map tells the user nothing the image does not;
* with ``--with-single``, the same model deterministic (one trajectory) in the same run: its Dice, and the
  seconds per learned step of both (what sampling costs).

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
    disagreement_and_uncertainty,
    load_model_card,
    model_folders_missing,
    read_pair,
    run_session,
    write_results,
)

DEFAULT_MODELS = ",".join(
    str(REPO / "recipes" / name)
    for name in (
        "morphseek-brain-synth-warmup",
        "morphseek-brain-synth",
        "morphseek-brain-synth-grpo-labels",
        "morphseek-brain-synth-grpo-group24",
        "morphseek-brain-synth-grpo-conservative",
    )
)


def edge_map(fixed) -> np.ndarray:
    """Gradient magnitude of the fixed image (Gaussian derivative, sigma 1 mm), array order (k, j, i)."""
    import SimpleITK as sitk

    image = sitk.Cast(fixed, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(image, 1.0))


def score_pair(result, edges: np.ndarray, fixed_labels, moving_labels) -> dict[str, float]:
    """Folding of ``result`` (a session's ``result()``), the AUROC and correlation of its spread, and the
    AUROC of the fixed image's ``edges`` (``edge_map``), against label disagreement."""
    from RLRegistrationLib.fields.metrics import auroc, jacobian_of_field, jacobian_stats

    disagree, spread, inside = disagreement_and_uncertainty(result, fixed_labels, moving_labels)
    return {
        "folding_percent": jacobian_stats(jacobian_of_field(result.displacement))["folding_percent"],
        "auroc_spread": auroc(spread, disagree),
        "auroc_edges": auroc(edges[inside], disagree),
        "correlation_spread": float(np.corrcoef(spread, disagree.astype(np.float64))[0, 1]),
        "spread_mean_mm": float(spread.mean()),
        "disagreement_fraction": float(disagree.mean()),
    }


def summary_table(rows: list[dict], start: str) -> str:
    """Markdown table, one row per model (means over the pairs), and per model the pairs on which its
    spread's AUROC is above the start model's."""
    keys = ("dice", "folding_percent", "auroc_spread", "correlation_spread", "auroc_edges", "spread_mean_mm")
    single = all("dice_single" in r for r in rows)
    lines = [
        "| model | Dice (mean field) | max % det J ≤ 0 | AUROC spread | corr. spread | AUROC edges "
        "| mean spread mm | pairs AUROC spread > start |"
        + (" Dice K = 1 | s / step, K = 1 → K |" if single else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if single else ""),
    ]
    start_auroc = {r["pair"]: r["auroc_spread"] for r in rows if r["model"] == start}
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model]
        mean = {k: float(np.mean([r[k] for r in group])) for k in keys}
        worst_fold = max(r["folding_percent"] for r in group)
        above = sum(r["auroc_spread"] > start_auroc[r["pair"]] for r in group)
        lines.append(
            f"| {model} | {mean['dice']:.4f} | {worst_fold:.4f} | {mean['auroc_spread']:.3f} | "
            f"{mean['correlation_spread']:.3f} | {mean['auroc_edges']:.3f} | {mean['spread_mean_mm']:.3f} | "
            f"{'start' if model == start else f'{above} of {len(group)}'} |"
            + (_single_columns(group) if single else "")
        )
    return "\n".join(lines)


def _single_columns(group: list[dict]) -> str:
    """The ``--with-single`` columns of a model's rows: Dice of one deterministic trajectory, and the mean
    seconds per learned step with one and with K trajectories."""
    dice = np.mean([r["dice_single"] for r in group])
    one, k = (np.mean([r[key] for r in group]) for key in ("step_seconds_single", "step_seconds"))
    return f" {dice:.4f} | {one:.2f} → {k:.2f} |"


def step_seconds(session) -> float:
    """Mean wall seconds of a session's steps (the pre-alignment and preparation excluded)."""
    return float(np.mean([r.step_seconds for r in session.reports[1:]]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help="sampling model folders (MorphSeek or SPAC), the first is the start",
    )
    parser.add_argument("--samples", type=int, default=4, help="K sampled trajectories")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument(
        "--with-single", action="store_true", help="also each model deterministic: Dice and time per step"
    )
    parser.add_argument("--tag", default="", help="suffix of the result files")
    add_session_arguments(parser)
    args = parser.parse_args(argv)
    folders = [Path(f) for f in args.models.split(",") if f]
    if model_folders_missing("uncertainty_quality", args.shared_dir, folders):
        return 2
    from accuracy import prepare_pairs

    from RLRegistrationLib.policies.registry import make_policy, policy_default_steps

    ids = [load_model_card(folder, args.threads)["id"] for folder in folders]
    rows = []
    for pair in prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), "t1"):
        images = read_pair(pair)
        edges = edge_map(images[0])
        for model in ids:
            policy = make_policy(
                model, device="cpu", samples=args.samples, temperature=args.temperature, seed=0
            )
            dice, seconds, session = run_session(policy, images, policy_default_steps(model))
            row = {
                "model": model,
                "pair": pair["pair"],
                "dice": dice[-1],
                "seconds": seconds,
                "step_seconds": step_seconds(session),
                **score_pair(session.result(), edges, images[2], images[3]),
            }
            if args.with_single:
                policy = make_policy(model, device="cpu")
                dice_single, _, single = run_session(policy, images, policy_default_steps(model))
                row.update(dice_single=dice_single[-1], step_seconds_single=step_seconds(single))
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = (
        f"K = {args.samples} trajectories at temperature {args.temperature:g}, each model's card steps, "
        f"pairs {args.pairs} (1 mm, T1-like); error = label disagreement after registration inside the "
        f"union foreground; AUROC 0.5 = chance\n\n" + summary_table(rows, ids[0])
    )
    print(table)
    stem = "uncertainty_quality" + (f"_{args.tag}" if args.tag else "")
    write_results(
        args.out, stem, {"rows": rows, "args": vars(args)}, table, argv or sys.argv[1:], "uncertainty_quality"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
