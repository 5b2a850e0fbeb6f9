"""Score models with the validation of a training run (``training.validation.validate``: deterministic
episodes on synthetic T1-like pairs of label maps, Dice of the true labels on the training grid), on any
subjects, to see whether what a training run selects on predicts the whole command at 1 mm
(``learned_alone.py``, ``accuracy.py``).

    python benchmarks/training_validation.py --config configs/spac_2mm_finetune_cpu.json \
        --models models/spac-brain-synth,/work/runs/spac-brain-synth-2mm --subjects 9,10 --pairs 2

The grid (spacing, shape) and the number of steps are the config's (``data``, ``env.episode_length``);
pairs i -> i+1 cyclically, then i -> i+2, ... (``training.data.validation_pairs``). Needs
``../shared/data``; exits 2 when absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, shared_data_missing, write_results  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="training config whose grid and steps are used")
    parser.add_argument("--models", required=True, help="model folders, comma separated")
    parser.add_argument("--subjects", default="11,12,13,14", help="label-map subjects of the pairs")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir, "training_validation"):
        return 2
    import torch

    from RLRegistrationLib.policies.network_policy import load_model
    from RLRegistrationLib.training.config import TrainConfig
    from RLRegistrationLib.training.data import subject_bank, validation_pairs
    from RLRegistrationLib.training.validation import validate

    torch.set_num_threads(args.threads)
    cfg = TrainConfig.load(args.config)
    d = cfg.data
    d.shared_dir = args.shared_dir
    subjects = [int(s) for s in args.subjects.split(",")]
    bank = subject_bank(d, subjects, "t1", cfg.model.divisor)
    pairs = validation_pairs(bank, d, args.pairs, cfg.seed)
    steps = int(cfg.env["episode_length"])
    rows = []
    for folder in args.models.split(","):
        network, _ = load_model(Path(folder))
        scores = validate(network, pairs, steps, torch.device("cpu"))
        rows.append({"model": folder, **scores})
        print(rows[-1], flush=True)
    lines = [
        f"training validation of {args.config}: {len(pairs)} pairs of subjects {args.subjects}, "
        f"{steps} deterministic steps on the {list(d.shape)} grid at {d.spacing_mm} mm, float32",
        "",
        "| model | Dice before | Dice after | % det J ≤ 0 (working grid) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['val_dice_before']:.4f} | {r['val_dice']:.4f} | {r['val_folding_percent']:.4f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    stem = "training_validation" + (f"_{args.tag}" if args.tag else "")
    write_results(
        args.out, stem, {"rows": rows, "args": vars(args)}, table, argv or sys.argv[1:], "training_validation"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
