"""A command run as its own process, timed, with its peak RSS from GNU time.

GNU time reports the command's own high-water mark; measured from inside (``resource.getrusage`` of
children), a child forked from a large benchmark process would inherit that process's mark.
"""

from __future__ import annotations

import subprocess
import tempfile
import time


def run_measured(command: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """(the finished process with its captured text output, wall seconds, peak RSS in GiB; NaN when GNU
    time wrote none)."""
    with tempfile.NamedTemporaryFile("r") as peak:
        start = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-q", "-f", "%M", "-o", peak.name, *command],
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        lines = peak.read().strip().splitlines()
    return done, seconds, (float(lines[-1]) / 2**20 if lines and lines[-1] else float("nan"))
