"""Does the automatic cross-contrast switch of the TTO tell same-contrast pairs from T1/T2 pairs?

For each pair the session's pre-alignment runs (the default affine, 2 mm working grid) and the fixed and
pre-aligned moving working-grid images are compared by ``contrast_correlation`` (Pearson correlation over
the voxels inside both heads); ``intensity_mapping="auto"`` switches the mapping on below
``AUTO_CORRELATION``. Pairs: inter-subject pairs with a T1-like and with a T2-like moving image
(``accuracy.py``'s pairs) and same-subject whole-head follow-ups (``same_subject.py``'s pairs).

    python benchmarks/contrast_detection.py --pairs 1:2,3:4,5:6,7:8 --followups 1,2

Reads ``../shared/data``; says so and exits 2 when it is absent.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RLRegistration"))
sys.path.insert(0, str(REPO / "benchmarks"))


def correlation_after_prealignment(pair: dict) -> float:
    from common import read_pair

    from RLRegistrationLib.fields.intensity_mapping import contrast_correlation
    from RLRegistrationLib.policies.registry import make_policy
    from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

    fixed, moving = read_pair(pair)[:2]
    session = RegistrationSession(fixed, moving, make_policy("tto"), SessionOptions(device="cpu", seed=0))
    session.prepare()
    return contrast_correlation(session.fixed_tensor, session.moving_tensor)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--pairs", default="1:2,3:4,5:6,7:8", help="fixed:moving subject pairs")
    parser.add_argument("--followups", default="1,2", help="subjects of same-subject follow-up pairs")
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    from accuracy import prepare_pairs
    from common import shared_data_missing
    from same_subject import prepare

    from RLRegistrationLib.policies.tto import AUTO_CORRELATION

    if shared_data_missing(args.shared_dir, "contrast_detection"):
        return 2
    shared, cache = Path(args.shared_dir), Path(args.cache)
    cases = []
    for contrast in ("t1", "t2"):
        for pair in prepare_pairs(args.pairs.split(","), shared, cache, contrast):
            cases.append(
                (f"inter-subject {pair['pair']}", f"T1 / {contrast.upper()}", contrast == "t2", pair)
            )
    for subject in filter(None, args.followups.split(",")):
        cases.append(
            (
                f"same subject {subject}",
                "T1 / T1, whole head",
                False,
                prepare(int(subject), shared, cache, 1.0),
            )
        )
    rows = []
    for name, contrasts, different, pair in cases:
        r = correlation_after_prealignment(pair)
        row = {
            "pair": name,
            "contrasts": contrasts,
            "different": different,
            "correlation": r,
            "mapping_on": r < AUTO_CORRELATION,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        f"`python benchmarks/contrast_detection.py {shlex.join(argv or sys.argv[1:])}`",
        "",
        f'`intensity_mapping="auto"` switches the mapping on below a correlation of {AUTO_CORRELATION}.',
        "",
        "| pair | contrasts | correlation after pre-alignment | mapping on | right |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        right = "yes" if row["mapping_on"] == row["different"] else "**no**"
        lines.append(
            f"| {row['pair']} | {row['contrasts']} | {row['correlation']:.3f} | "
            f"{'yes' if row['mapping_on'] else 'no'} | {right} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "contrast_detection.json").write_text(json.dumps(rows, indent=2))
    (out / "contrast_detection.md").write_text(table)
    return 0 if all(r["mapping_on"] == r["different"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
