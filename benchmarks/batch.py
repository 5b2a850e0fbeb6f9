"""``rlreg batch`` against plain ``rlreg register`` processes run by hand with ``xargs -P``, side by side.

    python benchmarks/batch.py [--pairs 16] [--work-dir /tmp/rlreg_batch_bench] [--xargs 2x1,1x2,2x2]
                               [-- extra rlreg run options, e.g. --steps 2]

Makes ``--pairs`` sample-sized pairs (the embedded 2 mm sample pair, its moving image and labels under a
different small rigid motion in each pair), then, on this machine's cores, times end to end:

* ``xargs -P P`` running ``rlreg register`` with T threads each (``OMP_NUM_THREADS`` and
  ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``), for each ``PxT`` of ``--xargs`` (default: cores x 1,
  cores/2 x 2 and cores x 2), each pair writing what a batch pair writes (transform, warped, QC picture,
  report, config; with labels);
* ``rlreg batch pairs.csv --out DIR`` with its default local cluster.

Prints and writes (``benchmarks/results/batch.{json,md}``): pairs per minute of each and the batch's
ratio to the best ``xargs``; the batch's scheduling overhead per pair (on each worker, the time from one
pair's end, as its task measures it, to the next pair's start: the result going back, the next pair
handed out and started); the startup (command start to the first pair's start) and the tail; each
worker's peak memory (the pairs' ``VmHWM``) against the pair's own estimate and the worker's memory
limit; and the load averages before and after (the machine should be quiet).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "RLRegistration"
sys.path.insert(0, str(LIB))

REGISTER_ONE = """#!/bin/sh
# register_one.sh ID FIXED MOVING FIXED_LABELS MOVING_LABELS OUT [rlreg options...]: one pair, as a batch pair
id=$1; fixed=$2; moving=$3; fl=$4; ml=$5; out=$6; shift 6
mkdir -p "$out/$id"
exec "$PYTHON" -m RLRegistrationLib register "$fixed" "$moving" -o "$out/$id/transform.h5" \\
  --warped "$out/$id/warped.nii.gz" --qc "$out/$id/qc.png" --report "$out/$id/report.json" \\
  --save-config "$out/$id/config.json" --fixed-labels "$fl" --moving-labels "$ml" --quiet "$@"
"""


def make_pairs(work: Path, count: int) -> list[dict]:
    """``count`` pairs: the sample fixed image and the sample moving image (and labels) moved by a small
    rigid motion of its own (up to 4 degrees, 4 mm), written once into ``work`` (kept for reruns)."""
    import numpy as np
    import SimpleITK as sitk

    from RLRegistrationLib.io.sample_pair import SAMPLE_FILES

    work.mkdir(parents=True, exist_ok=True)
    fixed, fixed_labels = SAMPLE_FILES["fixed"], SAMPLE_FILES["fixed_labels"]
    moving = sitk.ReadImage(str(SAMPLE_FILES["moving"]))
    moving_labels = sitk.ReadImage(str(SAMPLE_FILES["moving_labels"]))
    centre = moving.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in moving.GetSize()])
    pairs = []
    for i in range(count):
        name = f"pair{i:03d}"
        paths = {"id": name, "fixed": str(fixed), "fixed_labels": str(fixed_labels)}
        paths["moving"] = str(work / f"{name}_moving.nii.gz")
        paths["moving_labels"] = str(work / f"{name}_moving_labels.nii.gz")
        if not (Path(paths["moving"]).exists() and Path(paths["moving_labels"]).exists()):
            rng = np.random.default_rng(i)
            motion = sitk.Euler3DTransform(
                centre, *np.deg2rad(rng.uniform(-4, 4, 3)), tuple(rng.uniform(-4, 4, 3))
            )
            sitk.WriteImage(sitk.Resample(moving, moving, motion, sitk.sitkLinear, 0.0), paths["moving"])
            labels = sitk.Resample(moving_labels, moving_labels, motion, sitk.sitkNearestNeighbor, 0)
            sitk.WriteImage(labels, paths["moving_labels"])
        pairs.append(paths)
    return pairs


def run_xargs(pairs: list[dict], work: Path, processes: int, threads: int, extra: list[str]) -> float:
    """Wall seconds of ``xargs -P processes`` running register_one.sh over the pairs."""
    out = work / f"xargs_{processes}x{threads}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    script = work / "register_one.sh"
    script.write_text(REGISTER_ONE)
    script.chmod(0o755)
    lines = work / "pairs.txt"
    lines.write_text(
        "".join(
            " ".join(
                [p["id"], p["fixed"], p["moving"], p["fixed_labels"], p["moving_labels"], str(out), *extra]
            )
            + "\n"
            for p in pairs
        )
    )
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(LIB),
        "OMP_NUM_THREADS": str(threads),
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads),
    }
    start = time.perf_counter()
    subprocess.run(
        ["xargs", "-a", str(lines), "-P", str(processes), "-L", "1", str(script)], env=env, check=True
    )
    seconds = time.perf_counter() - start
    done = sum((out / p["id"] / "report.json").exists() for p in pairs)
    if done != len(pairs):
        raise SystemExit(f"xargs {processes}x{threads}: {len(pairs) - done} pairs not registered")
    return seconds


def run_batch(pairs: list[dict], work: Path, extra: list[str]) -> tuple[float, float, list[dict], str]:
    """``rlreg batch`` end to end: (wall seconds, its start as a UNIX time, summary rows, its stdout)."""
    out = work / "batch"
    shutil.rmtree(out, ignore_errors=True)
    table = work / "pairs.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "fixed", "moving", "fixed_labels", "moving_labels"])
        writer.writeheader()
        writer.writerows(pairs)
    env = {**os.environ, "PYTHONPATH": str(LIB)}
    command = [sys.executable, "-m", "RLRegistrationLib", "batch", str(table), "--out", str(out), *extra]
    started = time.time()
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"rlreg batch failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return seconds, started, rows, completed.stdout


def scheduling(rows: list[dict], started: float, wall: float) -> dict:
    """Gaps between consecutive pairs on each worker, the startup and the tail (seconds)."""

    def at(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    gaps, by_worker = [], {}
    for row in rows:
        by_worker.setdefault(row["worker"], []).append((at(row["started"]), at(row["finished"])))
    for spans in by_worker.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    first = min(s for spans in by_worker.values() for s, _ in spans)
    last = max(f for spans in by_worker.values() for _, f in spans)
    return {
        "workers": len(by_worker),
        "overhead_per_pair_s": sum(gaps) / len(gaps) if gaps else 0.0,
        "overhead_max_s": max(gaps) if gaps else 0.0,
        "startup_s": first - started,
        "tail_s": started + wall - last,
        "task_seconds_mean": sum(float(r["seconds"]) for r in rows) / len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--work-dir", default="/tmp/rlreg_batch_bench")
    parser.add_argument(
        "--xargs", help="PxT configurations of xargs (default: cores x 1, cores/2 x 2, cores x 2)"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--tag", default="batch", help="results file stem")
    parser.add_argument("extra", nargs="*", help="rlreg run options for every pair (after --)")
    args = parser.parse_args()
    from RLRegistrationLib.frontends.batch_cluster import MEMORY_MARGIN, usable_cores

    cores = usable_cores()
    configs = args.xargs or ",".join(dict.fromkeys([f"{cores}x1", f"{max(1, cores // 2)}x2", f"{cores}x2"]))
    configs = [tuple(int(v) for v in c.split("x")) for c in configs.split(",")]
    extra = ["--device", "cpu", *args.extra]
    work = Path(args.work_dir)
    pairs = make_pairs(work, args.pairs)
    load_before = os.getloadavg()
    results = {"pairs": len(pairs), "cores": cores, "extra": extra, "load_before": load_before, "xargs": {}}
    for processes, threads in configs:
        seconds = run_xargs(pairs, work, processes, threads, extra)
        results["xargs"][f"{processes}x{threads}"] = {
            "seconds": seconds,
            "pairs_per_minute": 60 * len(pairs) / seconds,
        }
        print(
            f"xargs -P {processes}, {threads} thread(s) each: {seconds:.1f} s, {60 * len(pairs) / seconds:.2f} pairs/min",
            flush=True,
        )
    seconds, started, rows, stdout = run_batch(pairs, work, extra)
    results["load_after"] = os.getloadavg()
    statuses = {r["status"] for r in rows}
    if statuses != {"done"}:
        raise SystemExit(f"rlreg batch: statuses {statuses}")
    best_name, best = max(results["xargs"].items(), key=lambda item: item[1]["pairs_per_minute"])
    per_minute = 60 * len(pairs) / seconds
    overhead = scheduling(rows, started, seconds)
    peaks: dict[str, float] = {}
    for row in rows:
        peaks[row["worker"]] = max(peaks.get(row["worker"], 0.0), float(row["peak_memory_gib"]))
    estimate = max(float(r["estimated_memory_gib"]) for r in rows)
    limit = MEMORY_MARGIN * estimate
    results["batch"] = {
        "seconds": seconds,
        "pairs_per_minute": per_minute,
        "ratio_to_best_xargs": per_minute / best["pairs_per_minute"],
        "best_xargs": best_name,
        "cluster": next((line for line in stdout.splitlines() if line.startswith("local cluster")), ""),
        **overhead,
        "peak_memory_gib_per_worker": peaks,
        "estimate_gib": estimate,
        "worker_limit_gib": limit,
    }
    b = results["batch"]
    table = "\n".join(
        [
            f"{len(pairs)} pairs of the 2 mm sample size on {cores} cores; options {' '.join(extra)}",
            "",
            "| run | wall s | pairs/min |",
            "|---|---|---|",
            *(
                f"| xargs -P {name.split('x')[0]} x {name.split('x')[1]} thread(s) | {v['seconds']:.1f} | {v['pairs_per_minute']:.2f} |"
                for name, v in results["xargs"].items()
            ),
            f"| rlreg batch ({b['cluster'].removeprefix('local cluster: ')}) | {seconds:.1f} | {per_minute:.2f} |",
            "",
            f"* batch / best xargs ({best_name}): **{b['ratio_to_best_xargs']:.3f}** (goal >= 0.95)",
            f"* scheduling overhead per pair: **{b['overhead_per_pair_s']:.3f} s** mean, {b['overhead_max_s']:.3f} s at most "
            f"(goal < 0.5 s); startup {b['startup_s']:.1f} s, tail {b['tail_s']:.1f} s; a pair's task "
            f"{b['task_seconds_mean']:.1f} s on average",
            f"* peak memory per worker: {', '.join(f'{v:.3f}' for v in peaks.values())} GiB; the pairs' estimate "
            f"{estimate:.3f} GiB ({'within' if max(peaks.values()) <= estimate else 'ABOVE'}), the workers' limit "
            f"{limit:.3f} GiB",
            f"* load averages (1, 5, 15 min) before {tuple(round(v, 2) for v in load_before)}, after "
            f"{tuple(round(v, 2) for v in results['load_after'])}",
        ]
    )
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    argv = " ".join(sys.argv[1:])
    (out / f"{args.tag}.md").write_text(f"`python benchmarks/batch.py {argv}`\n\n{table}\n")


if __name__ == "__main__":
    main()
