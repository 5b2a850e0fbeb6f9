"""Two bfloat16 numerics behind the training code's float32 choices, on this machine's CPU.

    python benchmarks/bf16_numerics.py [--calls 200] [--seed 0]

1. How often PyTorch's CPU bfloat16 conv3d weight gradient holds a non-finite value, on the tiny input that
   made a GRPO test training write NaN weights (a 2^3-voxel feature map of 16 channels, batch 3, to 8
   channels), against the same call in float32: the count of calls (random input and weights, seeded)
   whose weight gradient holds inf or NaN. The fault is at random and depends on the CPU;
   ``training.family_trainer.optimizer_step`` skips such an update.
2. The log-density of a MorphSeek latent of 64 x 6 x 7 x 6 numbers (a 96 x 112 x 96 grid), three samples,
   computed in bfloat16 against float32, and the differences between the samples GRPO weighs: why the
   latent head returns float32 under the autocast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RLRegistration"))

from RLRegistrationLib.policies.morphseek_network import latent_log_prob, sample_latent  # noqa: E402


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


def log_density_error(seed: int) -> None:
    torch.manual_seed(seed)
    mean = torch.randn(3, 64, 6, 7, 6)
    log_std = torch.full_like(mean, -2.3)
    z = sample_latent(mean, log_std, 1.0)
    exact = latent_log_prob(z, mean, log_std, 1.0)
    rounded = latent_log_prob(z.bfloat16(), mean.bfloat16(), log_std.bfloat16(), 1.0).float()
    print(f"log-density float32  {[round(v, 1) for v in exact.tolist()]}")
    print(f"log-density bfloat16 {[round(v, 1) for v in rounded.tolist()]}")
    print(f"error {[round(v, 1) for v in (exact - rounded).abs().tolist()]} nats")
    print(f"differences between samples (float32) {[round(v, 1) for v in (exact - exact[0]).tolist()]} nats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, bfloat16 in (("float32", False), ("bfloat16", True)):
        print(
            f"conv3d weight gradient, {name}: {faulty_calls(args.calls, bfloat16, args.seed)} of {args.calls} calls non-finite"
        )
    log_density_error(args.seed)


if __name__ == "__main__":
    main()
