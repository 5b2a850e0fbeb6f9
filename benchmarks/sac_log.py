"""The SAC stage of a SPAC training run, window by window, from its ``training_log.csv``: the critic's loss
(median, and how many updates above 100), the mean Q of the replayed plans, the mean reward and the run's
own validation Dice. Issue 25, item 4: tells a critic that has not learned yet from a planner that pushes
the critic's estimates up once it follows them.

    python benchmarks/sac_log.py RUN_FOLDER [RUN_FOLDER ...] [--window 150]

Reads only the logs; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path


def windows(log: Path, width: int) -> list[dict]:
    """One row per ``width`` SAC updates of the log: (first, last] update, critic loss median and count
    above 100, mean Q, mean reward, the last validation Dice in the window."""
    rows = [r for r in csv.DictReader(log.open()) if r["stage"] == "sac"]
    last = max(int(r["step"]) for r in rows)
    out = []
    for start in range(0, last, width):
        group = [r for r in rows if start < int(r["step"]) <= start + width]

        def values(key: str, group=group) -> list[float]:
            return [float(r[key]) for r in group if r.get(key)]

        critic = values("critic_loss")
        validation = values("val_dice")
        out.append(
            {
                "updates": f"{start + 1}-{start + width}",
                "critic_median": statistics.median(critic) if critic else float("nan"),
                "critic_above_100": sum(v > 100 for v in critic),
                "q": statistics.fmean(values("q")) if values("q") else float("nan"),
                "reward": statistics.fmean(values("reward")) if values("reward") else float("nan"),
                "val_dice": validation[-1] if validation else float("nan"),
            }
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run or model folders holding training_log.csv")
    parser.add_argument("--window", type=int, default=150, help="SAC updates per row")
    args = parser.parse_args(argv)
    lines = [
        "| run | updates | critic loss, median | critic loss > 100 | mean Q | mean reward | validation Dice |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in map(Path, args.runs):
        log = run / "training_log.csv"
        if not log.is_file():
            print(f"sac_log: '{log}' is absent", file=sys.stderr)
            return 2
        for row in windows(log, args.window):
            lines.append(
                f"| {run.name} | {row['updates']} | {row['critic_median']:.1f} | {row['critic_above_100']} | "
                f"{row['q']:.2f} | {row['reward']:.2f} | {row['val_dice']:.4f} |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
