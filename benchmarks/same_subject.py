"""Same-subject whole-head benchmark: follow-up pairs with a known transform (``followup.follow_up_pair``:
whole head with skull, scalp and neck, a small rigid motion, a smooth deformation of a few mm, new bias
field, texture and noise, less neck in the follow-up's field of view).

Reports per method: Dice over the 30 standard labels (less 31/63), the end-point error |T_est(x) - T(x)|
inside the fixed brain (mean and 95th percentile, mm), % det J <= 0 and wall time. Each (method, pair)
runs in its own process (``accuracy.py``'s methods, plus ``rigid`` and ``rlreg-rigid``).

    python benchmarks/same_subject.py --subjects 11,12 --threads 1

Reads ``../shared/data`` (not shipped with the repo); says so and exits 2 when it is absent.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import METHODS, _threads, available  # noqa: E402
from common import REPO, allocate_like_the_cli, read_pair, shared_data_missing, write_results  # noqa: E402

DEFAULT_METHODS = "affine-legacy,rigid,affine,rlreg,rlreg-rigid,greedy,syn"


def run_rigid(fixed, moving, workdir, args):
    from RLRegistrationLib.registration.prealign import prealign

    return prealign(fixed, moving, "rigid", seed=0), None


def run_rlreg_rigid(fixed, moving, workdir, args):
    """rlreg's default policy after a rigid pre-alignment (what a same-subject follow-up asks for)."""
    from RLRegistrationLib.registration.run_spec import RunSpec, register

    result = register(fixed, moving, RunSpec(initialization="rigid", steps=args.steps, device="cpu"))
    return result.transform, result.displacement


LOCAL = {"rigid": run_rigid, "rlreg-rigid": run_rlreg_rigid}


def prepare(subject: int, shared: Path, cache: Path, spacing: float) -> dict:
    """Write the follow-up pair of ``subject`` once (NIfTI + the true transform as .h5)."""
    import SimpleITK as sitk

    from RLRegistrationLib.synthesis.followup import follow_up_pair

    folder = cache / f"followup_{subject:02d}_{spacing:g}mm"
    names = ("fixed", "moving", "fixed_labels", "moving_labels")
    paths = {k: folder / f"{k}.nii.gz" for k in names} | {"truth": folder / "truth.h5"}
    if not all(p.exists() for p in paths.values()):
        folder.mkdir(parents=True, exist_ok=True)
        pair = follow_up_pair(subject, shared, seed=0, spacing_mm=spacing)
        for key in names:
            sitk.WriteImage(getattr(pair, key), str(paths[key]), useCompression=True)
        sitk.WriteTransform(pair.truth, str(paths["truth"]))
    return {"pair": f"{subject}", **{k: str(v) for k, v in paths.items()}}


def _worker(method: str, pair: dict, args_dict: dict, queue) -> None:
    _threads(args_dict["threads"])
    import os
    import tempfile

    import numpy as np
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(args_dict["threads"])
    from RLRegistrationLib.fields.geometry import Grid
    from RLRegistrationLib.fields.metrics import evaluate_transform, evaluation_labels
    from RLRegistrationLib.io.export import total_displacement
    from RLRegistrationLib.synthesis.contrast import brain_mask

    args = argparse.Namespace(**args_dict)
    allocate_like_the_cli(method)
    fixed, moving, fixed_labels, moving_labels = read_pair(pair)
    truth = sitk.ReadTransform(pair["truth"])
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        start = time.perf_counter()
        transform, displacement = {**METHODS, **LOCAL}[method](fixed, moving, workdir, args)
        seconds = time.perf_counter() - start
        labels = [v for v in evaluation_labels() if v not in (31, 63)]
        report = evaluate_transform(
            fixed_labels, moving_labels, transform, labels, displacement=displacement, with_hd95=False
        )
    grid = Grid.from_image(fixed)
    error = sitk.GetArrayFromImage(total_displacement(transform, grid)) - sitk.GetArrayFromImage(
        total_displacement(truth, grid)
    )
    epe = np.linalg.norm(error, axis=-1)[brain_mask(sitk.GetArrayViewFromImage(fixed_labels))]
    report.pop("dice_per_label")
    report.update(
        {
            "method": method,
            "pair": pair["pair"],
            "seconds": seconds,
            "epe_mean_mm": float(epe.mean()),
            "epe_p95_mm": float(np.percentile(epe, 95)),
        }
    )
    queue.put(report)


def run_one(method: str, pair: dict, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_worker, args=(method, pair, vars(args), queue))
    process.start()
    process.join()
    if process.exitcode != 0 or queue.empty():
        return {"method": method, "pair": pair["pair"], "error": f"exit code {process.exitcode}"}
    return queue.get()


def table(rows: list[dict], methods: list[str]) -> str:
    import numpy as np

    lines = [
        "| method | mean Dice | EPE in brain, mean (mm) | EPE p95 (mm) | % det J ≤ 0 | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for method in methods:
        group = [r for r in rows if r["method"] == method and "dice" in r]
        if not group:
            continue

        def mean(key, group=group):
            values = [r[key] for r in group if key in r]
            return float(np.mean(values)) if values else float("nan")

        lines.append(
            f"| {method} | {mean('dice'):.4f} | {mean('epe_mean_mm'):.2f} | {mean('epe_p95_mm'):.2f} | "
            f"{mean('folding_percent'):.4f} | {mean('seconds'):.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--subjects", default="11,12,13,14", help="validation subjects (one pair each)")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--spacing-mm", type=float, default=1.5, help="voxel size of the synthesized pair")
    parser.add_argument("--steps", type=int, default=6, help="rlreg steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tto", default="", help="rlreg-tuned's schedule (accuracy.py's --tto syntax)")
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--out-stem", default="same_subject", help="name of the result files")
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir, "same_subject"):
        return 2
    methods = []
    for method in args.methods.split(","):
        if method not in METHODS and method not in LOCAL:
            parser.error(f"unknown method {method}")
        if method in LOCAL or available(method):
            methods.append(method)
        else:
            print(f"same_subject: skipping {method} (not installed: pip install .[bench])")
    args.spacing = 2.0  # rlreg working grid (accuracy.run_rlreg reads it)
    args.similarity = "ncc"
    args.profile = False
    pairs = [
        prepare(int(s), Path(args.shared_dir), Path(args.cache), args.spacing_mm)
        for s in args.subjects.split(",")
    ]
    rows = []
    for pair in pairs:
        for method in methods:
            rows.append(run_one(method, pair, args))
            print(json.dumps(rows[-1]), flush=True)
    text = table(rows, methods)
    print(text)
    write_results(
        args.out,
        args.out_stem,
        {"args": vars(args), "rows": rows},
        text,
        argv or sys.argv[1:],
        "same_subject",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
