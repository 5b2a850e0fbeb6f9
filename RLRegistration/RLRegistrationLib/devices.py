"""Choosing the torch device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``."""

from __future__ import annotations

import torch

from .errors import DeviceError


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for ``name``; a clear ``DeviceError`` when CUDA is asked for but unavailable."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "gpu":
        name = "cuda"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceError(
                f"CUDA was requested but no usable GPU is available (torch {torch.__version__} is {build}); "
                "use --device cpu or install a CUDA build of PyTorch"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{name} was requested but only {torch.cuda.device_count()} GPU(s) are present")
        return device
    raise DeviceError(f"unknown device '{name}' (use auto, cpu or cuda)")


PRECISIONS = ("auto", "float32", "bfloat16")


def network_bfloat16(device: torch.device, precision: str = "auto") -> bool:
    """Whether a policy network runs its convolutions in bfloat16 (``torch.autocast``) on ``device``:
    ``precision`` "bfloat16" or "float32" as asked; "auto": on a CPU with native bfloat16 dot products, Intel
    AMX tiles or AVX512-BF16 (also AMD Zen 4), where a network pass on the 2 mm grid took 0.53 s instead
    of 0.94 s (AMX) and 0.60 s instead of 0.84 s (AVX512-BF16, AMD EPYC) at the same Dice
    (``benchmarks/network_precision.py``); else float32 (elsewhere bfloat16 is emulated, and slower)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision '{precision}' (use {', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision == "bfloat16"
    return device.type == "cpu" and cpu_has_bfloat16_units()


def cpu_has_bfloat16_units() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX512-BF16), as PyTorch reports it."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def describe_device(device: torch.device) -> str:
    """Human-readable name, e.g. ``cuda:0 (NVIDIA H200, 139 GiB)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    return f"cpu ({torch.get_num_threads()} threads)"


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA out-of-memory errors (torch.OutOfMemoryError or the older RuntimeError text)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def device_choices() -> list[tuple[str, str, bool]]:
    """(value, label, available) for a panel's device selector: auto, GPU (naming the GPU found) and CPU."""
    cpu_label = describe_device(torch.device("cpu"))
    if torch.cuda.is_available():
        gpu = describe_device(torch.device("cuda", 0))
        return [
            ("auto", f"Auto: {gpu}", True),
            ("cuda", f"GPU: {gpu}", True),
            ("cpu", f"CPU: {cpu_label}", True),
        ]
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only PyTorch build"
    return [
        ("auto", f"Auto: no GPU found, {cpu_label}", True),
        ("cuda", f"GPU: not available ({build})", False),
        ("cpu", f"CPU: {cpu_label}", True),
    ]
