"""Process-wide memory allocator setting for command-line runs on CPU.

A test-time optimization on a 1 mm grid allocates and frees tensors of tens to hundreds of MB many times
per iteration. glibc serves each of them with a fresh ``mmap`` and returns it with ``munmap``, so every
iteration pays the kernel's page faults again (12 s of system time in a 25 s run on a 1 mm brain pair,
3 s with this setting: ``benchmarks/fine_profile.py [--allocator]``). ``reuse_freed_memory`` makes glibc serve them from its heap and keep freed
memory for the next allocation. It changes the whole process, so only the CLI (and the benchmarks that
time what the CLI does) call it; a host application such as Slicer keeps its own setting.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_KEEP_BYTES = 1 << 30  # freed memory kept before glibc returns the top of its heap to the system


def reuse_freed_memory() -> bool:
    """glibc on Linux: no ``mmap`` for large blocks and up to 1 GiB of freed memory kept for reuse.
    True when applied; False elsewhere (another C library or platform), where nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
