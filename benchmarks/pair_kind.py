"""What tells the kind of a pair from the images alone: after the pre-alignment, how well the two images'
structures match (gradient alignment, ``registration.harm_check``) and how far the pre-alignment moved
them (the largest displacement of the linear transform over the fixed image's foreground).

Pair kinds measured: different subjects (synthetic 1 mm brains of the SynthSeg subjects, T1 against T1 and
T1 against T2), one subject at two visits (synthetic whole-head follow-ups with a known transform), and the
shared clinical MS patient (T1/T2 against FLAIR of one visit, FLAIR and T1 follow-ups). Thresholds are
chosen on training subjects (1-10) and the clinical patient, then checked on validation subjects (11-14).

    python benchmarks/pair_kind.py --set training
    python benchmarks/pair_kind.py --set validation

Reads ``../shared/data`` (not shipped with the repository); says so and exits 2 when it is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RLRegistration"))
sys.path.insert(0, str(REPO / "benchmarks"))
SETS = {
    "training": {
        "inter": ["1:2", "3:4", "5:6", "7:8"],
        "heads": ["1:2", "3:4"],
        "followup": [1, 2],
        "clinical": True,
    },
    "validation": {
        "inter": ["11:12", "12:13", "13:14", "14:11"],
        "heads": ["11:12", "13:14"],
        "followup": [11, 12],
        "clinical": False,
    },
}
KINDS = ("inter", "heads", "followup", "clinical")


def whole_head(subject: int, shared: Path, cache: Path, role: int) -> sitk.Image:
    """A T1-like whole-head image (skull, scalp and neck kept) of SynthSeg subject ``subject``, 1 mm."""
    path = cache / f"head_{subject:02d}_{role}.nii.gz"
    if not path.exists():
        from RLRegistrationLib.synthesis.contrast import load_label_map, synthesize_volume
        from RLRegistrationLib.synthesis.followup import _head_crop
        from RLRegistrationLib.synthesis.pairs import subject_path

        labels = _head_crop(load_label_map(subject_path(shared, subject)))
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(
            synthesize_volume(labels, contrast="t1", rng=[subject, role], skull_strip=False), str(path)
        )
    return sitk.ReadImage(str(path), sitk.sitkFloat32)


def measure(fixed: sitk.Image, moving: sitk.Image) -> dict:
    """Structural match before and after the affine pre-alignment, and how far it moved the fixed
    foreground (mm)."""
    from RLRegistrationLib.registration.harm_check import HarmCheck
    from RLRegistrationLib.registration.prealign import prealign

    check = HarmCheck(fixed, moving)
    affine = prealign(fixed, moving, "affine")
    before, after = check.scores([None, affine])
    points = np.argwhere(check.region)[:, ::-1].astype(np.float64)  # (i, j, k) of the check grid
    physical = points @ check.grid.index_to_physical_matrix.T + np.asarray(check.grid.origin)
    moved = np.array([affine.TransformPoint(p) for p in physical[:: max(1, len(physical) // 2000)].tolist()])
    shift = np.linalg.norm(moved - physical[:: max(1, len(physical) // 2000)], axis=1)
    return {"match_before": before, "match_after": after, "moved_max_mm": float(shift.max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", choices=list(SETS), default="training")
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"which pair kinds ({', '.join(KINDS)})")
    args = parser.parse_args(argv)
    kinds = set(args.kinds.split(","))
    shared, cache = Path(args.shared_dir), Path(args.cache)
    if not (shared / "synthseg").is_dir():
        print(f"pair_kind.py: the shared data is not here ({shared}); nothing measured", file=sys.stderr)
        return 2
    from accuracy import prepare_pairs
    from same_subject import prepare

    chosen = SETS[args.set]
    rows = []

    def add(kind: str, name: str, fixed: sitk.Image, moving: sitk.Image) -> None:
        row = {"kind": kind, "pair": name, **measure(fixed, moving)}
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    for contrast in ("t1", "t2") if "inter" in kinds else ():
        for pair in prepare_pairs(chosen["inter"], shared, cache, contrast):
            fixed, moving = (sitk.ReadImage(pair[k], sitk.sitkFloat32) for k in ("fixed", "moving"))
            add(f"different subjects ({contrast.upper()} moving)", pair["pair"], fixed, moving)
    for pair in chosen["heads"] if "heads" in kinds else ():
        a, b = (int(v) for v in pair.split(":"))
        add(
            "different subjects (whole heads)",
            pair,
            whole_head(a, shared, cache, 0),
            whole_head(b, shared, cache, 1),
        )
    for subject in chosen["followup"] if "followup" in kinds else ():
        pair = prepare(subject, shared, cache, 1.0)
        fixed, moving = (sitk.ReadImage(pair[k], sitk.sitkFloat32) for k in ("fixed", "moving"))
        add("one subject, two visits (synthetic)", str(subject), fixed, moving)
    patient = shared / "clinical" / "openms_patient01"
    if chosen["clinical"] and patient.is_dir() and "clinical" in kinds:
        from clinical import PAIRS

        for name, (fixed_name, moving_name, kind) in PAIRS.items():
            fixed, moving = (
                sitk.ReadImage(str(patient / f"{n}.nii.gz"), sitk.sitkFloat32)
                for n in (fixed_name, moving_name)
            )
            add(f"clinical {kind}", name, fixed, moving)
    table = ["| kind | pair | match before | match after | moved (mm) |", "|---|---|---|---|---|"]
    table += [
        f"| {r['kind']} | {r['pair']} | {r['match_before']:.3f} | {r['match_after']:.3f} | {r['moved_max_mm']:.1f} |"
        for r in rows
    ]
    print("\n".join(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"pair_kind_{args.set}" + ("" if kinds == set(KINDS) else "_" + "_".join(sorted(kinds)))
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    (out / f"{stem}.md").write_text(
        f"`python benchmarks/pair_kind.py --set {args.set} --kinds {','.join(sorted(kinds))}`\n\n"
        + "\n".join(table)
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
