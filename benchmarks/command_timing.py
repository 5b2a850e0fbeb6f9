"""Wall time of the whole ``rlreg register`` command on the validation pairs, this tree against another
source tree, run by turns so that both see the same load on the machine.

    git worktree add /tmp/baseline <commit>
    python benchmarks/command_timing.py --baseline /tmp/baseline --repeats 2 [--policy spac-brain-synth]

Each run is a fresh ``python -m RLRegistrationLib register <fixed> <moving> -o out.h5 --quiet --device cpu
--policy <id>`` subprocess (interpreter start, imports, reading, registration, writing the transform), with
the thread settings of ``accuracy.py``; the two trees take turns pair by pair, each going first as often
as the other. On a 2-core machine the same command varies by about a second from run to run: compare the
two columns of one run, not numbers of different runs. Prints a table per pair and the means, and writes
``results/command_timing_<tag>.json``.

Reads ``../shared/data`` (the SynthSeg label maps, via ``accuracy.prepare_pairs``); says so and exits 2
when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RLRegistration"))

from accuracy import DEFAULT_PAIRS, prepare_pairs  # noqa: E402


def command_seconds(source: Path, pair: dict, policy: str, workdir: Path) -> float:
    """Wall seconds of one ``register`` command run from the package of the tree ``source``."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(source / "RLRegistration"),
        **{v: "2" for v in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "MKL_NUM_THREADS")},
    }
    command = [sys.executable, "-m", "RLRegistrationLib", "register", pair["fixed"], pair["moving"]]
    command += [
        "-o",
        str(workdir / "out.h5"),
        "--overwrite",
        "--quiet",
        "--device",
        "cpu",
        "--policy",
        policy,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL, cwd=workdir)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="another source tree (e.g. a git worktree)")
    parser.add_argument("--pairs", default=",".join(DEFAULT_PAIRS))
    parser.add_argument("--policy", default="spac-brain-synth")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    parser.add_argument("--tag", default="latest")
    args = parser.parse_args()
    shared = Path(args.shared_dir)
    if not (shared / "synthseg").is_dir():
        print(
            f"command_timing: {shared}/synthseg not found: the validation pairs need ../shared/data",
            file=sys.stderr,
        )
        return 2
    trees = {"this tree": REPO, "baseline": Path(args.baseline).resolve()}
    pairs = prepare_pairs(args.pairs.split(","), shared, Path(args.cache), "t1")
    workdir = Path(args.cache) / "command_timing"
    workdir.mkdir(parents=True, exist_ok=True)
    times: dict[str, dict[str, list[float]]] = {name: {p["pair"]: [] for p in pairs} for name in trees}
    for repeat in range(args.repeats):
        for index, pair in enumerate(pairs):
            order = list(trees.items())
            if (repeat + index) % 2:  # each tree goes first as often as the other
                order.reverse()
            for name, source in order:
                seconds = command_seconds(source, pair, args.policy, workdir)
                times[name][pair["pair"]].append(seconds)
                print(f"{name:9s} {pair['pair']:6s} {seconds:.2f} s", flush=True)
    print(f"\n| pair | this tree (s) | baseline {args.baseline} (s) |\n|---|---|---|")
    for pair in pairs:
        cells = [" / ".join(f"{t:.1f}" for t in times[name][pair["pair"]]) for name in trees]
        print(f"| {pair['pair']} | {cells[0]} | {cells[1]} |")
    means = {name: statistics.mean(t for runs in times[name].values() for t in runs) for name in trees}
    print(f"| mean | {means['this tree']:.2f} | {means['baseline']:.2f} |")
    out = REPO / "benchmarks" / "results" / f"command_timing_{args.tag}.json"
    record = {"args": vars(args), "seconds": times, "means": means}
    out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
