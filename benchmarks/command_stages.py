"""Where the wall time of one whole ``rlreg register`` command goes: a timeline of its stages (reading,
making the plan and its policy, the smoothed copies, each pre-alignment level, each step, the do-no-harm
verdict, the writes) with the thread each ran on, and the cost of Python's shutdown once torch is loaded.

    python benchmarks/command_stages.py                                  # validation pair 11:12
    python benchmarks/command_stages.py --policy tto --pair 13:14

The command runs in a fresh process (``entry_point``, as ``rlreg`` does) whose stage functions are wrapped to
print a time stamp (seconds since the interpreter started running the command) on entry and exit; a stage
that ran on another thread than the main one overlapped the main thread's work. The shutdown cost is that
of ``python -c "import torch, SimpleITK"`` ending normally against ending with ``os._exit`` (the median of
``--repeats`` runs each), what ``register`` no longer pays (``frontends.cli.LEAVE_AT_ONCE``).

Reads ``../shared/data`` (the SynthSeg label maps, via ``accuracy.prepare_pairs``); says so and exits 2
when it is absent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RLRegistration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import prepare_pairs  # noqa: E402
from common import shared_data_missing  # noqa: E402

#: (module, attribute) of the stages the timeline shows; the first ones' modules import no torch, the
#: session's are wrapped once ``plan_run`` has imported them (wrapping them first would import torch)
STAGES = [
    ("RLRegistrationLib.frontends.pair_run", "PairFiles.read"),
    ("RLRegistrationLib.registration.run_spec", "plan_run"),
    ("RLRegistrationLib.io.imaging", "antialiased"),
    ("RLRegistrationLib.registration.prealign", "prealign"),
    ("RLRegistrationLib.registration.prealign", "_register"),
    ("RLRegistrationLib.io.outputs", "OutputSet.write"),
]
SESSION_STAGES = [
    ("RLRegistrationLib.registration.session", "RegistrationSession._take_step"),
    ("RLRegistrationLib.registration.session", "RegistrationSession.final_result"),
]

TRACED_COMMAND = """
import importlib, sys, threading, time
start = time.perf_counter()

def stamp(text):
    name = threading.current_thread().name
    print(f"STAGE {time.perf_counter() - start:7.2f} {name[:18]:18s} {text}", flush=True)

def traced(module, attribute):
    owner = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    function = getattr(owner, name)

    def wrapper(*args, **kwargs):
        torch = "torch" in sys.modules
        stamp(f"> {attribute}" + ("" if torch else " (torch not imported yet)"))
        try:
            return function(*args, **kwargs)
        finally:
            stamp(f"< {attribute}")
            if attribute == "plan_run":
                for late in SESSION_STAGES:
                    traced(*late)

    setattr(owner, name, wrapper)

for module, attribute in STAGES:
    traced(module, attribute)
from RLRegistrationLib.frontends.cli import entry_point
sys.argv = ["rlreg", *sys.argv[1:]]
stamp("command starts" + (" (torch imported)" if "torch" in sys.modules else " (torch not imported)"))
sys.exit(entry_point())
"""

SHUTDOWN = "import time, torch, SimpleITK, os, sys; print(time.time(), flush=True){}"


def shutdown_seconds(leave_at_once: bool) -> float:
    """Seconds from the last line of ``import torch, SimpleITK`` to the end of the process."""
    code = SHUTDOWN.format("; os._exit(0)" if leave_at_once else "")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return time.time() - float(done.stdout.split()[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="11:12")
    parser.add_argument("--policy", default="spac-brain-synth")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each shutdown measurement")
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    args = parser.parse_args(argv)
    if shared_data_missing(args.shared_dir, "command_stages"):
        return 2
    pair = prepare_pairs([args.pair], Path(args.shared_dir), Path(args.cache), "t1")[0]
    threads = str(args.threads)
    variables = ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "MKL_NUM_THREADS")
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO / "RLRegistration"),
        **dict.fromkeys(variables, threads),
    }
    with tempfile.TemporaryDirectory() as folder:
        stages = f"STAGES = {STAGES!r}\nSESSION_STAGES = {SESSION_STAGES!r}\n"
        command = [sys.executable, "-c", stages + TRACED_COMMAND, "register"]
        command += [pair["fixed"], pair["moving"], "-o", str(Path(folder) / "t.h5"), "--quiet"]
        command += ["--device", "cpu", "--policy", args.policy]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
        wall = time.perf_counter() - started
    print(f"rlreg register --policy {args.policy}, pair {args.pair}, {threads} threads: {wall:.2f} s wall")
    print("   time  thread             stage (> starts, < ends)")
    for line in done.stdout.splitlines():
        if line.startswith("STAGE "):
            print(line[len("STAGE ") :])
    for leave in (False, True):
        seconds = [shutdown_seconds(leave) for _ in range(args.repeats)]
        how = "os._exit" if leave else "Python's shutdown"
        print(
            f"import torch, SimpleITK, then {how}: {statistics.median(seconds):.2f} s "
            f"(median of {args.repeats}: {', '.join(f'{s:.2f}' for s in seconds)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
