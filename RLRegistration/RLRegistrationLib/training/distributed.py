"""Distributed training helpers: joining the ``torchrun`` process group (gloo on CPU, nccl on CUDA; ranks
read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), averaging the logged numbers over the ranks and checking
that the replicas' parameters agree."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..devices import resolve_device


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module initialized the process group (and tears it down)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): nccl on CUDA, gloo on
    CPU; one GPU per local rank. Single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist_info = Distributed(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    if dist_info.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
        dist_info.owns_group = True
        if device.type == "cpu":  # share the cores between the local processes
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    return dist_info, device


def average_logs(logs: dict[str, float], dist_info: Distributed, device: torch.device) -> dict[str, float]:
    """Mean of each logged number over the ranks (one small all-reduce; every rank logs the same keys).
    NaN marks a number a rank does not have (e.g. the label loss of an unlabelled pair): it is left out of
    that mean (NaN when no rank has it)."""
    if not dist_info.enabled or not logs:
        return logs
    keys = sorted(logs)
    values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=device)
    present = ~torch.isnan(values)
    packed = torch.cat([torch.where(present, values, torch.zeros_like(values)), present.double()])
    torch.distributed.all_reduce(packed)
    sums, counts = packed.split(len(keys))
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
    return {k: float(v) for k, v in zip(keys, means.tolist())}


def parameter_checksum(module: nn.Module) -> float:
    """A number that differs when any parameter differs (position-weighted sum, float64)."""
    total = 0.0
    for i, p in enumerate(module.state_dict().values()):
        if p.is_floating_point():
            total += (i + 1) * float(p.double().sum()) + float(p.double().abs().sum())
    return total


def gather_checksums(agent: nn.Module, dist_info: Distributed, device: torch.device) -> list[float]:
    """Parameter checksum of every rank (all equal when DDP kept the replicas in sync)."""
    value = torch.tensor([parameter_checksum(agent)], dtype=torch.float64, device=device)
    if not dist_info.enabled:
        return [float(value)]
    gathered = [torch.zeros_like(value) for _ in range(dist_info.world_size)]
    torch.distributed.all_gather(gathered, value)
    return [float(v) for v in gathered]
