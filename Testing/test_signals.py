"""Signals at random moments of ``rlreg register`` (issue 23): Ctrl-C, SIGTERM and SIGHUP during the imports,
the run, the writes and the renames leave all outputs or none, and pre-existing files byte-identical."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from catalogue_support import (  # Testing/ is on sys.path, as for conftest
    ENV,
    PYTHON,
    RUN,
    Folder,
    _read_back,
    _tree,
)

# ------------------------------------------------------------------------------------------------ signals
OUTPUTS = ("t.h5", "w.nii.gz", "d.nii.gz", "r.json")


def _outputs_argv(f: Folder, steps: int = 2) -> list:
    return [
        "register", f.fixed, f.moving, "-o", f / OUTPUTS[0], "--warped", f / OUTPUTS[1],
        "--displacement", f / OUTPUTS[2], "--report", f / OUTPUTS[3], "--overwrite",
        "--steps", str(steps), *RUN,
    ]  # fmt: skip


def _check_all_or_nothing(f: Folder, before: dict, done_code: int, stderr: str, signum: int) -> str:
    """The promise after a signal: one line, exit code 128 + the signal (or 0: finished first), every
    output new and valid or every output as before, no temporary file. Returns what happened."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and "FATAL" not in stderr, stderr
    after = _tree(f.dir)
    assert set(after) == set(before), set(after) ^ set(before)  # nothing new: no temporary, no backup
    replaced = [name for name in OUTPUTS if after[name] != before[name]]
    if done_code == 0:
        assert not lines and len(replaced) == len(OUTPUTS), stderr
        return "finished"
    if done_code == -signum:
        # the signal's default action: it came in Python's own start or in the interpreter's shutdown after
        # the command ended (outside the command's reach, README); all outputs or none all the same
        assert not lines and len(replaced) in (0, len(OUTPUTS)), (stderr, replaced)
        return "finished" if replaced else "nothing"
    assert done_code == 128 + signum, (done_code, stderr)
    assert len(lines) == 1, stderr
    if lines[0] == "rlreg: cancelled after all outputs were written (they are complete)":
        assert len(replaced) == len(OUTPUTS), replaced
        for name in OUTPUTS:
            _read_back(f / name)
        return "written"
    assert lines[0] == "rlreg: cancelled, nothing written", lines[0]
    assert not replaced, replaced  # the old outputs byte-identical
    return "nothing"


def _old_outputs(f: Folder) -> None:
    """Outputs of an earlier run (and the inputs, before the folder's checksums are taken)."""
    f.fixed, f.moving  # noqa: B018 - written on first use
    for name in OUTPUTS:
        (f / name).write_bytes(b"an earlier run's " + name.encode())


def _wait_for_the_handlers(process: subprocess.Popen) -> None:
    """Until the command has set its SIGTERM handler (``/proc``: caught signals), its first step: before
    it, in Python's own start (about 0.03 s), a signal meets Python's defaults."""
    status = Path(f"/proc/{process.pid}/status")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            caught = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            time.sleep(0.2)  # no /proc here: go by the clock
            return
        if int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.002)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_at_random_moments_of_a_run_leaves_all_outputs_or_none(signum, tmp_path):
    """Signals from the heavy imports (right after the handlers are set, and 0.3 s later) to the end of a
    small run with four outputs replacing older ones."""
    rng = random.Random(23 + signum)
    seen = set()
    for attempt, delay in enumerate([0.0, 0.3] + [rng.uniform(0.8, 5.0) for _ in range(3)]):
        f = Folder(tmp_path / f"run{attempt}")
        f.dir.mkdir()
        _old_outputs(f)
        before = _tree(f.dir)
        process = subprocess.Popen(
            [*PYTHON, *map(str, _outputs_argv(f))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=ENV, cwd=f.dir,
        )  # fmt: skip
        _wait_for_the_handlers(process)
        time.sleep(delay)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        seen.add(_check_all_or_nothing(f, before, process.returncode, stderr, signum))
    assert "nothing" in seen


#: runs ``rlreg`` with the writes slowed down: each output writer waits PAUSE_S first, and each rename into
#: place (``os.replace``) too when RENAMES is set; "WRITING" / "RENAMING" on stdout say when
SLOW_WRITES = """
import os, sys, time
import RLRegistrationLib.io.outputs as outputs
PAUSE_S, RENAMES = float(sys.argv[1]), sys.argv[2] == "renames"
writer = outputs.run_writer
def slow_writer(write, temporary):
    def slow(path):
        print("WRITING", flush=True)
        time.sleep(PAUSE_S)
        write(path)
    writer(slow, temporary)
outputs.run_writer = slow_writer
replace = os.replace
def slow_replace(a, b):
    if RENAMES and ".rlreg-" in str(a) and ".rlreg-" not in str(b):  # out of the staging folder
        print("RENAMING", flush=True)
        time.sleep(PAUSE_S)
    replace(a, b)
os.replace = slow_replace
sys.argv = ["rlreg", *sys.argv[3:]]
from RLRegistrationLib.frontends.cli import entry_point
sys.exit(entry_point())
"""


def _slow_run(f: Folder, signals: list[int], marker: str, pause: float, renames: bool) -> tuple[int, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITES, str(pause), "renames" if renames else "-", *map(str, _outputs_argv(f, 1))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=f.dir,
    )  # fmt: skip
    for line in process.stdout:
        if marker in line:
            break
    for signum in signals:
        process.send_signal(signum)
        time.sleep(0.05)
    process.stdout.read()
    return process.wait(timeout=60), process.stderr.read()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"])
def test_a_signal_during_the_writes_leaves_the_old_outputs(signum, tmp_path):
    """The issue's case: "cancelled, nothing written" while a new .h5 was left and an old warped image
    replaced. Here the second output is being written (its writer waits 3 s): the answer comes at once,
    nothing new is left, the older outputs are byte-identical."""
    f = Folder(tmp_path)
    _old_outputs(f)
    before = _tree(tmp_path)
    code, stderr = _slow_run(f, [signum], "WRITING", 3.0, renames=False)
    assert _check_all_or_nothing(f, before, code, stderr, signum) == "nothing"


def test_cancelling_a_long_write_answers_at_once(tmp_path):
    """Ctrl-C while a writer is in a long call: the command ends within a second, not when the write ends."""
    f = Folder(tmp_path)
    _old_outputs(f)
    before = _tree(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITES, "30", "-", *map(str, _outputs_argv(f, 1))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
    )  # fmt: skip
    for line in process.stdout:
        if "WRITING" in line:
            break
    sent = time.perf_counter()
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=60)
    assert time.perf_counter() - sent < 1.5
    assert _check_all_or_nothing(f, before, code, process.stderr.read(), signal.SIGINT) == "nothing"


def test_a_signal_while_the_outputs_are_put_in_place_is_held_until_all_are(tmp_path):
    """Ctrl-C, then SIGTERM, during the first rename: both wait until every output is in place; the
    command says the outputs are complete (exit code of the first signal), and no backup is left."""
    f = Folder(tmp_path)
    _old_outputs(f)
    before = _tree(tmp_path)
    code, stderr = _slow_run(f, [signal.SIGINT, signal.SIGTERM], "RENAMING", 0.5, renames=True)
    assert _check_all_or_nothing(f, before, code, stderr, signal.SIGINT) == "written"


def test_two_quick_signals_during_the_writes_still_leave_one_line_and_nothing(tmp_path):
    f = Folder(tmp_path)
    _old_outputs(f)
    before = _tree(tmp_path)
    code, stderr = _slow_run(f, [signal.SIGINT, signal.SIGINT, signal.SIGTERM], "WRITING", 3.0, renames=False)
    assert _check_all_or_nothing(f, before, code, stderr, signal.SIGINT) == "nothing"


# the command ends, then an atexit callback (as torch registers its own) takes a while: the signal comes there
SLOW_SHUTDOWN = """
import atexit, sys, time
from RLRegistrationLib.frontends.cli import entry_point
atexit.register(time.sleep, 30)
atexit.register(print, "SHUTDOWN", flush=True)  # atexit runs last-registered first: before the sleep
sys.argv = ["rlreg", "info"]
sys.exit(entry_point())
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_the_shutdown_after_the_command_meets_the_default(signum):
    """After the command has ended, a signal in Python's shutdown ends the process by the system's default
    (README): no traceback from an exception raised inside an atexit callback, at once."""
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_SHUTDOWN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=ENV,
    )  # fmt: skip
    for line in process.stdout:
        if "SHUTDOWN" in line:
            break
    sent = time.perf_counter()
    process.send_signal(signum)
    code = process.wait(timeout=60)
    stderr = process.stderr.read()
    assert time.perf_counter() - sent < 5.0
    assert code == -signum, (code, stderr)
    assert "Traceback" not in stderr, stderr
