"""bfloat16 against float32 for a learned policy's network (``precision``, ``devices.network_bfloat16``).

    python benchmarks/network_precision.py [--model models/spac-brain-synth] [--pairs 1:2,3:4]

1. One network pass on the 2 mm grid of a 1 mm brain pair (96 x 112 x 80, what a learned step at 2 mm
   costs): seconds per pass (mean of 3 after a warm-up) and how far the bfloat16 step is from float32's
   (max and mean, network-grid voxels), on a real training pair's working-grid images.
2. The policy alone (the card's steps and step spacings, the session ``rlreg register`` builds) on pairs of
   **training** subjects with each precision: Dice and the registration's seconds.

bfloat16 is only fast where the CPU has bfloat16 matrix units (Intel AMX); elsewhere it is emulated.
Needs ``../shared/data`` for the pairs; exits 2 when absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_model_card, read_pair, shared_data_missing, write_results  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


def pass_times(model: Path, session) -> dict:
    """Seconds of one network pass per precision on ``session``'s working grid, and the step difference."""
    from RLRegistrationLib.policies.spac_policy import SPACPolicy

    spacing = float(session.grid.spacing[0])
    steps, out = {}, {}
    for precision in PRECISIONS:
        # one step on a network grid of the working grid's own spacing
        policy = SPACPolicy(model, device="cpu", precision=precision, step_spacings_mm=(spacing,))
        policy.reset(session.fixed_tensor, session.moving_tensor, spacing_mm=spacing)
        _network_step(policy, session.moving_tensor)
        start = time.perf_counter()
        for _ in range(3):
            steps[precision] = _network_step(policy, session.moving_tensor)
        out[f"{precision}_s"] = (time.perf_counter() - start) / 3
    difference = (steps["float32"] - steps["bfloat16"]).abs()
    out.update(grid=list(steps["float32"].shape[2:]), max_diff_vox=float(difference.max()))
    out["mean_diff_vox"] = float(difference.mean())
    return out


def _network_step(policy, moving):
    """The raw step output (float32) of one pass of ``policy``'s network at its precision."""
    import torch

    with torch.no_grad(), policy.autocast():
        return policy.network(policy._fixed, policy.to_network(moving), deterministic=True).step.float()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(REPO / "models" / "spac-brain-synth"))
    parser.add_argument("--pairs", default="1:2,3:4", help="fixed:moving training subject pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir, "network_precision"):
        return 2
    from accuracy import prepare_pairs

    from RLRegistrationLib.fields.metrics import evaluate_transform, evaluation_labels
    from RLRegistrationLib.policies.registry import make_policy
    from RLRegistrationLib.registration.run_spec import RunSpec, build_session
    from RLRegistrationLib.registration.session import RegistrationSession

    model = Path(args.model).resolve()
    card = load_model_card(model, args.threads)
    labels = [v for v in evaluation_labels() if v not in (31, 63)]
    pairs = prepare_pairs(args.pairs.split(","), Path(args.shared_dir), Path(args.cache), "t1")
    rows, timing = [], None
    for pair in pairs:
        fixed, moving, fixed_labels, moving_labels = read_pair(pair)
        for precision in PRECISIONS:
            start = time.perf_counter()
            _, plan = build_session(RunSpec(policy=card["id"], device="cpu"), fixed, moving, keep_steps=False)
            policy = make_policy(card["id"], device="cpu", precision=precision)
            session = RegistrationSession(fixed, moving, policy, plan.options)
            for _ in session.run(plan.steps):
                pass
            result = session.final_result()[0]
            seconds = time.perf_counter() - start
            report = evaluate_transform(
                fixed_labels, moving_labels, result.transform, labels, with_hd95=False
            )
            rows.append(
                {"pair": pair["pair"], "precision": precision, "dice": report["dice"], "seconds": seconds}
            )
            print(rows[-1], flush=True)
            if timing is None and precision == "float32":
                timing = pass_times(model, session)
    lines = [
        f"model {model.name}; one network pass on the {timing['grid']} working grid (2 mm) of pair "
        f"{pairs[0]['pair']}, mean of 3, {args.threads} threads: float32 {timing['float32_s']:.2f} s, "
        f"bfloat16 {timing['bfloat16_s']:.2f} s; bfloat16 step - float32 step: max "
        f"{timing['max_diff_vox']:.4f}, mean {timing['mean_diff_vox']:.5f} voxel",
        "",
        "| pair | precision | Dice | registration s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['pair']} | {r['precision']} | {r['dice']:.4f} | {r['seconds']:.1f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    write_results(
        args.out,
        f"network_precision_{card['id']}",
        {"rows": rows, "pass": timing},
        table,
        argv or sys.argv[1:],
        "network_precision",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
