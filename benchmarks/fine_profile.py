"""Where the time of one ``--quality fine`` registration goes: pre-alignment and preparation, each step,
the export of the field, and the process's user and system CPU time.

    python benchmarks/fine_profile.py                    # validation pair 11:12, 2 threads
    python benchmarks/fine_profile.py --allocator        # with the rlreg command's allocator setting
    python benchmarks/fine_profile.py --quality standard

Runs in this process (compare runs of the same command). Reads ``../shared/data``; says so and exits 2
when it is absent.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, read_pair, shared_data_missing  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--pair", default="11:12")
    parser.add_argument("--quality", default="fine")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocator", action="store_true", help="glibc keeps freed memory (as rlreg does)")
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir, "fine_profile"):
        return 2
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    if args.allocator:
        from RLRegistrationLib.frontends.allocator import reuse_freed_memory

        print(f"allocator setting applied: {reuse_freed_memory()}")
    from accuracy import prepare_pairs

    from RLRegistrationLib.policies.registry import make_policy
    from RLRegistrationLib.registration.quality import QUALITY_PRESETS
    from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

    pair = prepare_pairs([args.pair], Path(args.shared_dir), Path(args.cache), "t1")[0]
    fixed, moving, _, _ = read_pair(pair)
    preset = QUALITY_PRESETS[args.quality]
    spacing = preset.working_spacing(fixed)
    policy = make_policy("tto", **preset.tto_overrides(spacing))
    options = SessionOptions(
        device="cpu", seed=0, working_spacing_mm=spacing, max_working_voxels=preset.max_working_voxels
    )
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    session = RegistrationSession(fixed, moving, policy, options)
    session.prepare()
    print(f"pre-alignment and preparation: {time.perf_counter() - start:.2f} s")
    for report in session.run(preset.steps or 6):
        factor = report.diagnostics.get("pyramid_factor")
        print(f"step {report.index} (pyramid factor {factor}): {report.step_seconds:.2f} s")
    before_export = time.perf_counter()
    session.result()
    end = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    print(f"export of the field: {end - before_export:.2f} s")
    print(
        f"total {end - start:.1f} s; CPU user {cpu.ru_utime - cpu_before.ru_utime:.1f} s, "
        f"system {cpu.ru_stime - cpu_before.ru_stime:.1f} s; peak RSS {cpu.ru_maxrss / 2**20:.2f} GiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
