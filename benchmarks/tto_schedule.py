"""Schedule search for the default policy (``tto``) on pairs of *training* subjects (so the validation
pairs 11-14 stay untouched): working-grid spacing, steps, regularization, NCC window, iterations.

    python benchmarks/tto_schedule.py --pairs 1:2,3:4 --threads 1
    python benchmarks/tto_schedule.py --pairs 11:12,12:13 --configs base,<chosen> --out-stem tto_schedule_validation

Each configuration is ``name=key:value;key:value`` or one of ``CONFIGS``; keys: ``spacing`` (mm),
``steps``, ``max_voxels`` (0 = no cap) and any ``TestTimeOptimizationConfig`` field (tuples as ``2/2/1``).
Prints a table (mean final Dice, % det J <= 0, wall s) and writes ``results/<out-stem>.{json,md}``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import parse_tto, prepare_pairs  # noqa: E402
from common import REPO, folding_percent, read_pair, shared_data_missing, write_results  # noqa: E402

CONFIGS = {
    "base": "",
    "reg1": "regularization:1.0",
    "win5": "ncc_window:5",
    "steps8": "steps:8",
    "it8": "iterations:8",
    "sp1.5": "spacing:1.5;max_voxels:0",
    "reg1-win5": "regularization:1.0;ncc_window:5",
}


def run(pair_images, config: dict) -> dict:
    from RLRegistrationLib.fields.metrics import evaluation_labels
    from RLRegistrationLib.policies.tto import make_tto_policy
    from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

    config = dict(config)
    spacing = float(config.pop("spacing", 2.0))
    steps = int(config.pop("steps", 6))
    max_voxels = int(config.pop("max_voxels", 112**3)) or None
    fixed, moving, fixed_labels, moving_labels = pair_images
    labels = [v for v in evaluation_labels() if v not in (31, 63)]
    options = SessionOptions(
        device="cpu", seed=0, dice_labels=labels, working_spacing_mm=spacing, max_working_voxels=max_voxels
    )
    session = RegistrationSession(
        fixed, moving, make_tto_policy(**config), options, fixed_labels, moving_labels
    )
    start = time.perf_counter()
    session.prepare()
    reports = list(session.run(steps))
    seconds = time.perf_counter() - start
    return {"dice": reports[-1].dice, "seconds": seconds, "folding_percent": folding_percent(session)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--pairs", default="1:2,3:4", help="fixed:moving subject pairs (training: 1-10)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="names of CONFIGS or name=spec")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--out-stem", default="tto_schedule_training")
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir, "tto_schedule"):
        return 2
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    configs = {}
    for item in args.configs.split(","):
        name, _, spec = item.partition("=")
        configs[name] = parse_tto(spec if spec else CONFIGS[name])
    pairs = prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), "t1")
    rows = []
    for pair in pairs:
        images = read_pair(pair)
        for name, config in configs.items():
            row = {"config": name, "pair": pair["pair"], **run(images, config)}
            rows.append(row)
            print(row, flush=True)
    lines = ["| config | settings | mean Dice | % det J ≤ 0 | wall s |", "|---|---|---|---|---|"]
    for name, config in configs.items():
        group = [r for r in rows if r["config"] == name]
        lines.append(
            f"| {name} | {config or 'defaults'} | {np.mean([r['dice'] for r in group]):.4f} | "
            f"{np.mean([r['folding_percent'] for r in group]):.4f} | {np.mean([r['seconds'] for r in group]):.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    write_results(
        args.out,
        args.out_stem,
        {"args": vars(args), "rows": rows},
        table,
        [shlex.quote(a) for a in (argv or sys.argv[1:])],
        script="tto_schedule",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
