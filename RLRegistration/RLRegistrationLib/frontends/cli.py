"""Command line ``rlreg``: register, evaluate, demo, info, view, train, tune-weight-map.

Every expected problem (bad input or option, existing output, unknown policy, missing GPU, a file this
user may not read or write) is reported as one line ``rlreg: error: ...`` with exit code 2 and nothing
written; ``--debug`` shows tracebacks. Ctrl-C, SIGTERM and SIGHUP stop the command at any moment with exit
code 128 + the signal's number and one line, leaving no partial output (``io.outputs``); a second signal
within ``REPEAT_GRACE_S`` seconds of the first is ignored, so that the cleanup the first one started
finishes. This module imports only the standard library when it is imported (the parser and the option
vocabulary come with ``main``), so that the handlers are in place before any heavy import.
"""

from __future__ import annotations

import os
import signal
import sys
import threading  # here, not in the signal handler: see _raise_interrupted
import time
import warnings

from ..errors import InputWarning, RLRegistrationError

#: seconds after a signal during which another one is ignored (the cleanup the first started finishes)
REPEAT_GRACE_S = 5.0
#: a signal that comes while a module is being imported is sent again this many seconds later
IMPORT_RETRY_S = 0.05
_first_signal_at: float | None = None


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command is, like Ctrl-C; ``signum`` gives the exit code."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    """SIGINT raises ``KeyboardInterrupt``, SIGTERM and SIGHUP ``Interrupted``; a repeat within
    ``REPEAT_GRACE_S`` seconds is ignored. Not inside an import: a module being imported may swallow the
    exception and be left half made (numpy turns it into an ImportError that SimpleITK takes for "no
    numpy", and the next import of numpy fails), so the signal is sent again until the import is over.
    The handler itself imports nothing: an import run inside an interrupted one (same thread) deletes the
    outer import's lock entry, which then fails with a KeyError traceback when it finishes."""
    global _first_signal_at
    if _importing(frame):
        retry = threading.Timer(IMPORT_RETRY_S, os.kill, (os.getpid(), signum))
        retry.daemon = True
        retry.start()
        return
    now = time.monotonic()
    if _first_signal_at is not None and now - _first_signal_at < REPEAT_GRACE_S:
        return
    _first_signal_at = now
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


def _importing(frame) -> bool:
    """True when ``frame`` runs inside an import statement."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _warning_printer(default):
    """``warnings.showwarning`` that prints input warnings as one line ``rlreg: warning: ...`` and hands
    other warnings to ``default``."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            print(f"rlreg: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def entry_point() -> int:
    """The ``rlreg`` command: ``main`` in a process of its own, whose allocator may keep freed memory
    (``allocator.reuse_freed_memory``: a 1 mm ``--quality fine`` run 25.3 -> 19.6 s on 2 CPU threads,
    ``benchmarks/fine_profile.py``), with SIGTERM and SIGHUP handled like Ctrl-C. A cancelled command, and
    a command of ``LEAVE_AT_ONCE`` that succeeded, end the process without Python's shutdown (``_leave``)."""
    handled = [
        signum
        for signum in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
        if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN  # nohup: stays ignored
    ]
    for signum in handled:
        signal.signal(signum, _raise_interrupted)
    args = None
    try:
        from .allocator import reuse_freed_memory

        reuse_freed_memory()
        args = _parse(None)
        code = run(args)
        # the command has ended: a signal in the interpreter's shutdown meets the system's default (an
        # exception raised there, inside an atexit callback, would print a traceback)
        for signum in handled:
            signal.signal(signum, signal.SIG_DFL)
    except KeyboardInterrupt as interrupt:  # during the imports, before main's own handler
        code = _cancelled(interrupt)
    if code > 128:
        # cancelled: up to 1 s freeing a run's memory; and an output writer the signal cut short may still
        # be in native code, which the shutdown would stop inside C++ (abort, "FATAL: exception not
        # rethrown")
        _leave(code)
    if code == 0 and args is not None and args.command in LEAVE_AT_ONCE:
        _leave(code)
    return code


#: commands whose process ends at once when they succeed: their outputs are complete and closed by then
#: and nothing of theirs runs on, while Python's shutdown with torch loaded takes 0.3-0.5 s (of a 9-10 s
#: ``rlreg register --policy spac-brain-synth`` on 2 CPU cores: ``benchmarks/RESULTS.md``, issue 25)
LEAVE_AT_ONCE = ("register", "demo")


def _leave(code: int) -> None:
    """Flush the standard streams and end the process with ``code``, without Python's shutdown (no atexit
    callbacks, no freeing of what the modules hold)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the command; returns the exit code."""
    return run(_parse(argv))


def _parse(argv: list[str] | None):
    from .cli_parser import build_parser

    return build_parser().parse_args(argv)


def run(args) -> int:
    """Run the command of the parsed ``args``; returns the exit code (2 and one line for an expected
    problem, 128 + the signal's number when cancelled)."""
    from .cli_parser import one_line

    with warnings.catch_warnings():  # restores warnings.showwarning when the command ends
        warnings.simplefilter("always", InputWarning)
        warnings.showwarning = _warning_printer(warnings.showwarning)
        try:
            return COMMANDS[args.command](args)
        except RLRegistrationError as error:
            if args.debug:
                raise
            print(f"rlreg: error: {one_line(error)}", file=sys.stderr)
            return 2
        except OSError as error:  # a file system refusal no check foresaw (permissions, a full disk...)
            if args.debug:
                raise
            where = f"'{error.filename}': " if error.filename else ""
            print(f"rlreg: error: {where}{error.strerror or error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as interrupt:
            return _cancelled(interrupt)


def _cancelled(interrupt: KeyboardInterrupt) -> int:
    """One line and exit code 128 + the signal's number. ``written`` on the interrupt (a signal that came
    while the outputs were being put in place, held until all of them were) says they are complete."""
    signum = getattr(interrupt, "signum", signal.SIGINT)
    if getattr(interrupt, "written", None):
        print("rlreg: cancelled after all outputs were written (they are complete)", file=sys.stderr)
    else:
        print("rlreg: cancelled, nothing written", file=sys.stderr)
    return 128 + int(signum)


def cmd_register(args) -> int:
    """``rlreg register``: see ``register_command``."""
    from .register_command import cmd_register as run

    return run(args)


def cmd_demo(args) -> int:
    """``rlreg demo``: see ``register_command``."""
    from .register_command import cmd_demo as run

    return run(args)


def cmd_evaluate(args) -> int:
    """``rlreg evaluate``: Dice, HD95 and folding of a transform file, from label maps (JSON on stdout)."""
    import json

    from ..fields.geometry import Grid
    from ..fields.metrics import evaluate_transform, parse_label_list
    from ..io.export import total_displacement
    from ..io.imaging import read_label_map, read_transform

    labels = parse_label_list(args.labels)
    transform = read_transform(args.transform, "transform")
    fixed_labels = read_label_map(args.fixed_labels, "fixed labels")
    moving_labels = read_label_map(args.moving_labels, "moving labels")
    check_evaluated_labels(fixed_labels, moving_labels, labels, args)
    report = evaluate_transform(
        fixed_labels,
        moving_labels,
        transform,
        labels,
        displacement=total_displacement(transform, Grid.from_image(fixed_labels)),
        with_hd95=not args.no_hd95,
    )
    report.pop("dice_per_label")
    print(json.dumps(report, indent=2))
    return 0


def check_evaluated_labels(fixed_labels, moving_labels, labels: list[int] | None, args) -> None:
    """``InputError`` when nothing could be scored: the maps share no label (``--labels all``), a label
    asked for is in neither map (its Dice would be NaN), or none of ``--labels 30`` is in them."""
    import numpy as np
    import SimpleITK as sitk

    from ..errors import InputError

    present = [
        set(np.unique(sitk.GetArrayViewFromImage(image)).tolist()) for image in (fixed_labels, moving_labels)
    ]
    if labels is None:
        if not (present[0] & present[1]) - {0}:
            raise InputError(
                f"moving labels '{args.moving_labels}': shares no label with the fixed labels "
                f"'{args.fixed_labels}' (nothing to score)"
            )
        return
    absent = [label for label in labels if label not in present[0] | present[1]]
    if args.labels == "30" and len(absent) < len(labels):
        return  # the standard set: a map without one of them is scored on the others
    if absent:
        shown = ", ".join(map(str, absent[:10])) + (", ..." if len(absent) > 10 else "")
        which = f"label {shown} is" if len(absent) == 1 else f"labels {shown} are"
        raise InputError(f"--labels: {which} in neither label map")


def cmd_info(args) -> int:
    """``rlreg info``: versions, the device ``auto`` picks, and the policies with their default steps."""
    import SimpleITK as sitk
    import torch

    from .. import __version__
    from ..devices import describe_device, resolve_device
    from ..policies.registry import registered_policies
    from ..registration.run_spec import schedule_steps

    print(f"rlreg {__version__}")
    print(f"torch {torch.__version__}, SimpleITK {sitk.Version.VersionString()}")
    print(f"device (auto): {describe_device(resolve_device('auto'))}")
    print(f"CUDA available: {torch.cuda.is_available()}")
    print("policies:")
    for name, entry in registered_policies().items():
        sampling = " [--samples K: sampled trajectories, uncertainty map]" if entry.supports_sampling else ""
        fine = schedule_steps(name, "fine")
        steps = f"{entry.default_steps} steps by default"
        if fine is not None:  # quality auto runs the fine schedule where memory allows
            steps = f"{entry.default_steps} steps at --quality standard, {fine} at fine"
        print(f"  {name:12s} {entry.description} ({steps}){sampling}")
    return 0


def cmd_view(args) -> int:
    """``rlreg view``: the web app (imported here only: the library never needs the web extra)."""
    from RLRegistrationWeb.launcher import run

    return run(args)


def cmd_train(args) -> int:
    """``rlreg train``: train a learned policy from a config (also under torchrun)."""
    from ..errors import InputError
    from ..training.config import TrainConfig
    from ..training.train import train

    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    config = TrainConfig.load(args.config)
    out = train(
        config,
        out_dir=args.out,
        run_dir=args.run_dir,
        steps=args.steps,
        resume=args.resume,
        device=args.device,
        shared_dir=args.shared_dir,
        overwrite=args.overwrite,
        progress=not args.quiet,
        command=" ".join(["rlreg", *sys.argv[1:]]),
    )
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(f"model written to {out}/ (weights.pt, card.json)")
    return 0


def cmd_tune_weight_map(args) -> int:
    """``rlreg tune-weight-map``: refit a SPAC model's lambda head (training stage c)."""
    from ..training.weight_map import WeightMapConfig, tune_weight_map

    out = tune_weight_map(
        args.model,
        args.out,
        WeightMapConfig.load(args.config),
        overwrite=args.overwrite,
        shared_dir=args.shared_dir,
        progress=not args.quiet,
        command=" ".join(["rlreg", *sys.argv[1:]]),
    )
    if not args.quiet:
        print(f"model written to {out}/ (weights.pt, card.json)")
    return 0


def cmd_batch(args) -> int:
    """``rlreg batch``: see ``batch_command``."""
    from .batch_command import cmd_batch as run

    return run(args)


COMMANDS = {
    "register": cmd_register,
    "batch": cmd_batch,
    "evaluate": cmd_evaluate,
    "demo": cmd_demo,
    "info": cmd_info,
    "view": cmd_view,
    "train": cmd_train,
    "tune-weight-map": cmd_tune_weight_map,
}


if __name__ == "__main__":
    sys.exit(entry_point())
