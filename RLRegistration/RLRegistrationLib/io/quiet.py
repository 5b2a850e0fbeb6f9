"""Silencing what native libraries (ITK, HDF5) print: their diagnostics are turned into one clear line
by the caller, so the many lines they write to the process's stderr are not shown."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 (C/C++ ``stderr``) to the null device while the block runs; Python's own
    ``sys.stderr`` is flushed first and works again afterwards. Not thread-aware: meant for the
    command line, around one native call."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. an embedding application)
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
