"""What the QC picture costs: peak RSS of ``rlreg register`` with and without ``--qc``, and the batch's
estimate of the same run (``registration.memory.estimate_peak_memory`` with ``picture=True``).

    python benchmarks/qc_memory.py [--spacings 2,1] [--threads 2] [--work-dir /tmp/rlreg_qc_memory]

On the embedded sample pair at its own 2 mm and resampled (linear) to each spacing of ``--spacings``, each
command runs as its own process under GNU time (``process_peak.run_measured``). Writes
``benchmarks/results/qc_memory.{json,md}`` (the figures of benchmarks/RESULTS.md, "Issue 22"). Checking out
the commit before ce92107 and running this script measures the picture as it was (whole volumes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402
from process_peak import run_measured  # noqa: E402


def pair_at(spacing: float, work: Path) -> tuple[Path, Path]:
    """The sample pair resampled (linear) to ``spacing`` mm, written once into ``work``."""
    import SimpleITK as sitk

    from RLRegistrationLib.io.sample_pair import SAMPLE_FILES

    paths = []
    for role in ("fixed", "moving"):
        path = work / f"{role}_{spacing:g}mm.nii.gz"
        if not path.exists():
            image = sitk.ReadImage(str(SAMPLE_FILES[role]))
            size = [int(round(n * s / spacing)) for n, s in zip(image.GetSize(), image.GetSpacing())]
            resampled = sitk.Resample(
                image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (spacing,) * 3,
                image.GetDirection(),
            )  # fmt: skip
            sitk.WriteImage(resampled, str(path))
        paths.append(path)
    return paths[0], paths[1]


def estimate_gib(fixed: Path, moving: Path) -> dict[str, float]:
    """The run's estimate without and with the picture (GiB), for the default ``RunSpec``."""
    import SimpleITK as sitk

    from RLRegistrationLib.registration.memory import estimate_peak_memory
    from RLRegistrationLib.registration.run_spec import RunSpec, plan_run

    f, m = sitk.ReadImage(str(fixed)), sitk.ReadImage(str(moving))
    plan = plan_run(RunSpec(), f, m)
    steps = getattr(plan.options, "planned_steps", None)
    return {
        name: estimate_peak_memory(f, m, plan.options, steps=steps, picture=picture).total_bytes / 2**30
        for name, picture in (("estimate_gib", False), ("estimate_with_picture_gib", True))
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spacings", default="2,1", help="mm, comma-separated (2 = the sample pair itself)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default="/tmp/rlreg_qc_memory")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "RLRegistration"),
        "OMP_NUM_THREADS": str(args.threads),
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(args.threads),
    }
    rows = []
    for spacing in (float(s) for s in args.spacings.split(",")):
        fixed, moving = pair_at(spacing, work)
        row = {"spacing_mm": spacing, **estimate_gib(fixed, moving)}
        for name, extra in (("without_qc", []), ("with_qc", ["--qc", str(work / f"qc_{spacing:g}.png")])):
            out = work / f"t_{spacing:g}_{name}.h5"
            for stale in (out, work / f"qc_{spacing:g}.png"):
                stale.unlink(missing_ok=True)
            command = [sys.executable, "-m", "RLRegistrationLib", "register", str(fixed), str(moving)]
            done, seconds, peak = run_measured([*command, "-o", str(out), "--quiet", *extra], env)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            row[f"peak_{name}_gib"], row[f"seconds_{name}"] = peak, seconds
        rows.append(row)
        print(row, flush=True)
    table = "\n".join(
        [
            "| spacing | peak without --qc | peak with --qc | the picture | estimate | estimate + picture |",
            "|---|---|---|---|---|---|",
            *(
                f"| {r['spacing_mm']:g} mm | {r['peak_without_qc_gib']:.2f} GiB | {r['peak_with_qc_gib']:.2f} GiB | "
                f"{r['peak_with_qc_gib'] - r['peak_without_qc_gib']:+.2f} GiB | {r['estimate_gib']:.2f} GiB | "
                f"{r['estimate_with_picture_gib']:.2f} GiB |"
                for r in rows
            ),
        ]
    )
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "qc_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "qc_memory.md").write_text(
        f"`python benchmarks/qc_memory.py {' '.join(argv or sys.argv[1:])}`\n\n{table}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
