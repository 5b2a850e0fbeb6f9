"""How often PyTorch's CPU bfloat16 conv3d weight gradient holds a non-finite value, on the tiny input that
made a GRPO test training write NaN weights (a 2^3-voxel feature map of 16 channels, batch 3, to 8 channels),
against the same call in float32.

    python benchmarks/bf16_conv_gradient.py [--calls 200] [--seed 0]

Prints, per precision, the number of calls (random input and weights, seeded) whose weight gradient holds
inf or NaN. The fault is at random and depends on the CPU; ``training.family_trainer.optimizer_step`` skips
such an update.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def faulty_calls(calls: int, bfloat16: bool, seed: int) -> int:
    torch.manual_seed(seed)
    faults = 0
    for _ in range(calls):
        x = torch.randn(3, 16, 2, 2, 2)
        w = torch.randn(8, 16, 3, 3, 3, requires_grad=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bfloat16):
            y = F.conv3d(x, w, padding=1)
        y.float().sum().backward()
        faults += int(not torch.isfinite(w.grad).all())
    return faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, bfloat16 in (("float32", False), ("bfloat16", True)):
        print(f"{name}: {faulty_calls(args.calls, bfloat16, args.seed)} of {args.calls} calls non-finite")


if __name__ == "__main__":
    main()
