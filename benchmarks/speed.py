"""Speed of the building blocks and of one TTO step, on this machine's CPU (or a GPU with --device cuda).

    python benchmarks/speed.py [--device cpu] [--threads 2]

Prints a table: local NCC as separable box filter vs a dense 9^3 convolution, a grid_sample warp, and the
time of one test-time-optimization step (5 Adam iterations) at working grids of 64^3, 96^3 and 80x96x112.
Synthetic random volumes: the numbers are about arithmetic, not accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RLRegistration"))

from RLRegistrationLib.fields.similarity import LocalNCC  # noqa: E402
from RLRegistrationLib.fields.spatial import warp  # noqa: E402
from RLRegistrationLib.policies.base import PolicyState  # noqa: E402
from RLRegistrationLib.policies.registry import make_policy  # noqa: E402


def timed(fn, device, repeats: int = 3) -> float:
    """Median wall seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def dense_ncc(fixed, warped, window: int = 9):
    """Reference local NCC with a dense window^3 convolution (what the separable filter replaces)."""
    kernel = torch.ones((5, 1, window, window, window), device=fixed.device)
    stacked = torch.cat([fixed, warped, fixed * fixed, warped * warped, fixed * warped], dim=1)
    sums = F.conv3d(stacked, kernel, padding=window // 2, groups=5)
    n = float(window**3)
    f, w, ff, ww, fw = sums.unbind(1)
    cross = fw - f * w / n
    return -(cross * cross / ((ff - f * f / n) * (ww - w * w / n) + 1e-5)).mean()


def measure(shape: tuple[int, int, int], device: torch.device) -> str:
    """One table row for a working grid of ``shape`` (D, H, W)."""
    fixed = torch.rand((1, 1, *shape), device=device)
    moving = torch.rand((1, 1, *shape), device=device)
    field = torch.randn((1, 3, *shape), device=device)
    ncc = LocalNCC(9)
    t_sep = timed(lambda: ncc(fixed, moving), device)
    t_dense = timed(lambda: dense_ncc(fixed, moving), device, repeats=1)
    t_warp = timed(lambda: warp(moving, field), device)
    policy = make_policy("tto")
    policy.reset(fixed, moving)
    state = PolicyState(fixed, moving, moving, torch.zeros_like(field), step_index=10)  # a fine-level step
    t_step = timed(lambda: policy.propose(state), device, repeats=2)
    return (
        f"| {shape} | {1000 * t_sep:.0f} | {1000 * t_dense:.0f} | {t_dense / t_sep:.0f}x | "
        f"{1000 * t_warp:.0f} | {1000 * t_step:.0f} |"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {args.threads} threads")
    print(
        "| working grid (D,H,W) | NCC separable ms | NCC dense 9^3 ms | speed-up | warp ms | TTO step ms (5 it) |"
    )
    print("|---|---|---|---|---|---|")
    for shape in [(64, 64, 64), (96, 96, 96), (112, 96, 80)]:
        print(measure(shape, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
