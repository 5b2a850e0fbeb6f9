"""How much could a λ map that knows where the registration folds gain over a uniform one? An upper bound
for the λ head of training stage (c) (``training.weight_map``).

    python benchmarks/weight_map_oracle.py [--pairs 1:2,3:4,5:6,7:8] [--threads 1]

Per pair (training subjects by default, synthesized T1-like, 1 mm), with the SPAC model's ``<id>+tto``
chain: (1) λ uniform = ``--base``; (2) the *oracle* map built from run (1)'s own result exactly as stage
(c) builds its targets, ``base + (1 - base) * fold_risk(det J)`` with the model's stage (c) settings
(threshold, blur and gain, the blur converted from the stage's 2 mm voxels to this grid); (3) λ uniform at
the oracle map's mean; (4) the model's learned λ (the policy as shipped). With a background weight (the
model's stage (c) ``background_weight``, or ``--background-weight``) also (5) the oracle map made at least
that stiff where the fixed label map is background farther than the margin from the head (again as stage
(c) builds its targets) and (6) λ uniform at that map's mean. The oracle cheats (it sees where run (1)
folded); the learned head has to predict that from the images. Needs ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO,
    add_session_arguments,
    folding_inside_and_out,
    load_model_card,
    read_pair,
    run_session,
    shared_data_missing,
    write_results,
)


def record(rows: list, name: str, policy, pair: dict, images: list, steps: int, extra: dict | None = None):
    """Run a session of ``policy`` on the pair, append its row (Dice per step, folding) and return it."""
    dice, seconds, session = run_session(policy, images, steps)
    row = {"method": name, "pair": pair["pair"], "dice_per_step": dice, "seconds": seconds, **(extra or {})}
    rows.append({**row, **folding_inside_and_out(session, images[2])})
    print(json.dumps(rows[-1]), flush=True)
    return session


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(REPO / "models" / "spac-brain-synth"))
    parser.add_argument("--base", type=float, help="uniform λ of run (1) (default: the stage (c) base)")
    parser.add_argument(
        "--background-weight", type=float, help="λ of the oracle's background (default: the stage (c) one)"
    )
    add_session_arguments(parser)
    parser.set_defaults(pairs="1:2,3:4,5:6,7:8")
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir):
        return 2
    import torch
    from accuracy import prepare_pairs

    from RLRegistrationLib.fields.metrics import jacobian_of_field
    from RLRegistrationLib.policies.cards import chain_settings
    from RLRegistrationLib.policies.chained import WeightMapOverride
    from RLRegistrationLib.policies.network_policy import resize_image
    from RLRegistrationLib.policies.registry import make_policy
    from RLRegistrationLib.training.weight_map import WeightMapConfig, no_signal_region, weight_map_target

    model = Path(args.model)
    card = load_model_card(model, args.threads)
    stage = card.get("training", {}).get("weight_map", {}).get("config", {})
    cfg = WeightMapConfig.from_dict(stage)
    base = args.base if args.base is not None else cfg.base_weight
    background = args.background_weight if args.background_weight is not None else cfg.background_weight
    steps = chain_settings(card, model).total_steps

    def chained(value=None):
        """The model's chain; with ``value``, its lambda replaced (a number: uniform; a tensor: that map)."""
        policy = make_policy(f"{card['id']}+tto", device="cpu")
        if value is not None:
            policy.first = WeightMapOverride(policy.first, value=value)
        return policy

    rows = []
    for pair in prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), "t1"):
        images = read_pair(pair)
        session = record(rows, f"uniform λ {base:g}", chained(base), pair, images, steps)
        det = torch.from_numpy(jacobian_of_field(session.result().displacement))[None, None].float()
        spacing = float(images[0].GetSpacing()[0])
        grid_cfg = WeightMapConfig(
            base_weight=base,
            det_threshold=cfg.det_threshold,
            risk_sigma_vox=cfg.risk_sigma_vox * cfg.data.spacing_mm / spacing,
            risk_gain=cfg.risk_gain,
            background_weight=background,
        )
        shape = tuple(session.weight_map_at().shape[2:])
        oracle = resize_image(weight_map_target(det, grid_cfg), shape)
        mean = float(oracle.mean())
        record(rows, "oracle λ", chained(oracle), pair, images, steps, {"lambda_mean": mean})
        record(rows, "uniform λ, oracle mean", chained(mean), pair, images, steps)
        if background is not None:
            labels = torch.from_numpy(sitk.GetArrayFromImage(images[2]).astype(np.int64))[None, None]
            no_signal = no_signal_region(labels, cfg.background_margin_mm / spacing)
            stiff = resize_image(weight_map_target(det, grid_cfg, no_signal), shape)
            stiff_mean = float(stiff.mean())
            name = f"oracle λ, background ≥ {background:g}"
            record(rows, name, chained(stiff), pair, images, steps, {"lambda_mean": stiff_mean})
            record(rows, "uniform λ, that mean", chained(stiff_mean), pair, images, steps)
        record(rows, "learned λ", chained(), pair, images, steps)

    lines = ["| λ map | final Dice | % det J ≤ 0 | in brain | mean λ |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == name]
        lam = np.mean([r["lambda_mean"] for r in group]) if "lambda_mean" in group[0] else float("nan")
        lines.append(
            f"| {name} | {np.mean([r['dice_per_step'][-1] for r in group]):.4f} | "
            f"{np.mean([r['folding_percent'] for r in group]):.4f} | "
            f"{np.mean([r['folding_in_brain_percent'] for r in group]):.4f} | {lam:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    write_results(
        args.out, "weight_map_oracle", {"rows": rows, "args": vars(args)}, table, argv or sys.argv[1:]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
