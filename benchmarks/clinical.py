"""Do no harm on real clinical scans: one MS patient (two visits, T1/T2/FLAIR, thick oblique slices, lesions
that change), judged against the dataset's own reference transforms inside its brain mask.

Pairs (fixed <- moving): T1 -> FLAIR and T2 -> FLAIR of each visit (the same minutes: the truth is close to
rigid), and the FLAIR and T1 follow-ups onto the baseline (about 10 mm of head motion). The reference of
each pair is the database's affine registrations composed (``studyK_*_intrastudy_to_FLAIR.txt``,
``studyK_FLAIR_to_common_space.txt``; each maps a point of its target space to a point of the named image).
The brain mask lives in the common space and is brought to each fixed image through the references.
The judge: for every fixed voxel inside the brain, the distance (mm) between where the written transform
and where the reference send it (``sitk.TransformToDisplacementField`` of both on the fixed grid): mean,
95th percentile and max; "no registration" is the identity transform.

Each rlreg method is the ``rlreg register`` command in its own process (peak RSS of that process); Greedy
(``picsl-greedy``) runs with NCC for one contrast and NMI across contrasts, affine then deformable, as in
``accuracy.py``.

    python benchmarks/clinical.py                               # default methods, all pairs
    python benchmarks/clinical.py --methods affine,rlreg --pairs t1-flair-1,flair-followup
    python benchmarks/clinical.py --variant 'mind=--similarity mind --quality fine'

Reads ``../shared/data/clinical/openms_patient01`` (not shipped with the repository); says so and exits 2
when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from process_peak import run_measured

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RLRegistration"))
PATIENT = REPO.parent / "shared" / "data" / "clinical" / "openms_patient01"
#: pair name -> (fixed, moving, kind); kind "same-visit" (one visit, two contrasts) or "follow-up"
PAIRS = {
    "t1-flair-1": ("study1_FLAIR", "study1_T1W", "same-visit"),
    "t2-flair-1": ("study1_FLAIR", "study1_T2W", "same-visit"),
    "t1-flair-2": ("study2_FLAIR", "study2_T1W", "same-visit"),
    "t2-flair-2": ("study2_FLAIR", "study2_T2W", "same-visit"),
    "flair-followup": ("study1_FLAIR", "study2_FLAIR", "follow-up"),
    "t1-followup": ("study1_T1W", "study2_T1W", "follow-up"),
}
DEFAULT_METHODS = ["identity", "affine", "rlreg", "greedy"]
#: rlreg methods: the command's options
RLREG = {"affine": ["--steps", "0"], "rlreg": []}


def _affine(path: Path) -> sitk.Transform:
    return sitk.ReadTransform(str(path))


def image_to_flair(study: int, image: str, patient: Path) -> sitk.Transform:
    """A point of ``image`` (T1W, T2W or FLAIR of ``study``) -> the same point in that study's FLAIR."""
    if image == "FLAIR":
        return sitk.Transform(3, sitk.sitkIdentity)
    return _affine(patient / f"study{study}_{image}_intrastudy_to_FLAIR.txt").GetInverse()


def flair_to_image(study: int, image: str, patient: Path) -> sitk.Transform:
    """A point of study ``study``'s FLAIR -> the same point in ``image`` of that study."""
    if image == "FLAIR":
        return sitk.Transform(3, sitk.sitkIdentity)
    return _affine(patient / f"study{study}_{image}_intrastudy_to_FLAIR.txt")


def chain(*transforms: sitk.Transform) -> sitk.CompositeTransform:
    """The transform applying ``transforms`` in the order given (first given, first applied)."""
    composite = sitk.CompositeTransform(3)
    for transform in reversed(transforms):  # ITK applies the last added first
        composite.AddTransform(transform)
    return composite


def reference(fixed: str, moving: str, patient: Path) -> tuple[sitk.Transform, sitk.Transform]:
    """(fixed point -> moving point, fixed point -> common-space point) from the dataset's registrations."""
    f_study, f_image = int(fixed[5]), fixed.split("_")[1]
    m_study, m_image = int(moving[5]), moving.split("_")[1]
    to_common = {k: _affine(patient / f"study{k}_FLAIR_to_common_space.txt") for k in (1, 2)}  # common -> K
    fixed_to_common = chain(image_to_flair(f_study, f_image, patient), to_common[f_study].GetInverse())
    if f_study == m_study:
        fixed_to_moving = chain(
            image_to_flair(f_study, f_image, patient), flair_to_image(m_study, m_image, patient)
        )
    else:
        fixed_to_moving = chain(
            fixed_to_common, to_common[m_study], flair_to_image(m_study, m_image, patient)
        )
    return fixed_to_moving, fixed_to_common


def brain_on(fixed: sitk.Image, fixed_to_common: sitk.Transform, patient: Path) -> np.ndarray:
    """The common-space brain mask on the fixed image's grid (bool array, (k, j, i))."""
    mask = sitk.ReadImage(str(patient / "coregistered" / "brainmask.nii.gz"))
    resampled = sitk.Resample(mask, fixed, fixed_to_common, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled) > 0


def displacement(transform: sitk.Transform, fixed: sitk.Image) -> np.ndarray:
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        fixed.GetSize(),
        fixed.GetOrigin(),
        fixed.GetSpacing(),
        fixed.GetDirection(),
    )
    return sitk.GetArrayFromImage(field)


def distances(transform: sitk.Transform, truth: np.ndarray, fixed: sitk.Image, brain: np.ndarray) -> dict:
    """mean / 95th percentile / max of |T(x) - T_ref(x)| over the brain voxels (mm)."""
    error = np.linalg.norm(displacement(transform, fixed) - truth, axis=-1)[brain]
    return {
        "mean_mm": float(error.mean()),
        "p95_mm": float(np.percentile(error, 95)),
        "max_mm": float(error.max()),
    }


def folding(path: Path, fixed: sitk.Image, brain: np.ndarray) -> float:
    """% of brain voxels where the written deformation's det J <= 0 (physical, on the fixed grid)."""
    from RLRegistrationLib.fields.metrics import jacobian_of_field

    transform = sitk.ReadTransform(str(path))
    det = jacobian_of_field(
        sitk.Cast(
            sitk.TransformToDisplacementField(
                transform,
                sitk.sitkVectorFloat64,
                fixed.GetSize(),
                fixed.GetOrigin(),
                fixed.GetSpacing(),
                fixed.GetDirection(),
            ),
            sitk.sitkVectorFloat64,
        )
    )
    return float(100.0 * np.mean(det[brain] <= 0))


def run_rlreg(options: list[str], fixed: Path, moving: Path, out: Path, threads: int) -> dict:
    """``rlreg register`` in its own process: seconds, peak RSS (GiB), the lines it printed about its choices."""
    command = [sys.executable, "-m", "RLRegistrationLib", "register", str(fixed), str(moving), "-o", str(out)]
    command += ["--device", "cpu", *options]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads))
    env["PYTHONPATH"] = str(REPO / "RLRegistration") + os.pathsep + env.get("PYTHONPATH", "")
    done, seconds, peak_gib = run_measured(command, env)
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}"
        }
    said = [line for line in done.stdout.splitlines() if not line.startswith(("step", "prepared", "done"))]
    said += [line for line in done.stderr.splitlines() if line.startswith("rlreg:")]
    return {"seconds": seconds, "peak_rss_gib": peak_gib, "said": said[:8]}


def run_greedy(fixed: sitk.Image, moving: sitk.Image, kind: str, threads: int, out: Path) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from peer_methods import greedy_register, greedy_transform

    multimodal = kind == "same-visit"  # two contrasts: NMI
    start = time.perf_counter()
    composite, _ = greedy_transform(
        greedy_register(
            sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32), threads, multimodal
        )
    )
    seconds = time.perf_counter() - start
    sitk.WriteTransform(composite, str(out))
    return {"seconds": seconds, "metric": "NMI" if multimodal else "NCC"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patient", default=str(PATIENT))
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OPTIONS",
        help="an rlreg method with these command-line options (repeatable), e.g. 'fine=--quality fine'",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--tag", default="", help="suffix of the result files (clinical_<tag>.json/.md)")
    parser.add_argument("--keep", help="folder to keep each method's transform in (<pair>_<method>.h5)")
    args = parser.parse_args(argv)
    patient = Path(args.patient)
    if not (patient / "study1_FLAIR.nii.gz").is_file():
        print(f"clinical.py: the clinical patient is not here ({patient}); nothing measured", file=sys.stderr)
        return 2
    methods = dict(RLREG)
    for text in args.variant:
        name, _, options = text.partition("=")
        methods[name] = shlex.split(options)
    wanted = [m for m in args.methods.split(",") if m] + [t.partition("=")[0] for t in args.variant]
    rows = []
    for pair in [p for p in args.pairs.split(",") if p]:
        fixed_name, moving_name, kind = PAIRS[pair]
        fixed_path, moving_path = patient / f"{fixed_name}.nii.gz", patient / f"{moving_name}.nii.gz"
        fixed = sitk.ReadImage(str(fixed_path), sitk.sitkFloat32)
        truth_transform, to_common = reference(fixed_name, moving_name, patient)
        truth = displacement(truth_transform, fixed)
        brain = brain_on(fixed, to_common, patient)
        for method in wanted:
            with tempfile.TemporaryDirectory() as work:
                out = Path(work) / "t.h5"
                if method == "identity":
                    info = {"seconds": 0.0}
                    sitk.WriteTransform(sitk.Transform(3, sitk.sitkIdentity), str(out))
                elif method == "greedy":
                    moving = sitk.ReadImage(str(moving_path), sitk.sitkFloat32)
                    info = run_greedy(fixed, moving, kind, args.threads, out)
                else:
                    info = run_rlreg(methods[method], fixed_path, moving_path, out, args.threads)
                row = {"pair": pair, "kind": kind, "method": method, **info}
                if "error" not in info:
                    row.update(distances(sitk.ReadTransform(str(out)), truth, fixed, brain))
                    row["folding_percent"] = folding(out, fixed, brain)
                    if args.keep:
                        Path(args.keep).mkdir(parents=True, exist_ok=True)
                        shutil.copy(out, Path(args.keep) / f"{pair}_{method}.h5")
            rows.append(row)
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "said"}
            print(json.dumps(shown), flush=True)
            for line in row.get("said", []):
                print(f"    {line}", flush=True)
    table = markdown(rows, wanted)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"clinical_{args.tag}" if args.tag else "clinical"
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    (out / f"{stem}.md").write_text(
        f"`python benchmarks/clinical.py {' '.join(argv or sys.argv[1:])}`\n\n{table}\n"
    )
    return 0


def markdown(rows: list[dict], methods: list[str]) -> str:
    """One line per pair: mean / p95 / max distance (mm) of each method."""
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    lines = ["| pair | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for pair in pairs:
        cells = []
        for method in methods:
            row = next((r for r in rows if r["pair"] == pair and r["method"] == method), None)
            if row is None:
                cells.append("")
            elif "error" in row:
                cells.append(f"error: {row['error'][:60]}")
            else:
                cells.append(f"{row['mean_mm']:.2f} / {row['p95_mm']:.2f} / {row['max_mm']:.1f}")
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
