"""Start ``rlreg view`` from parsed command-line arguments (``cli.py`` imports this lazily).

Everything that can be refused is refused before the server starts, as one line and exit code 2, in the
order of what it costs: the options (the panel's presets with the ranges ``rlreg register`` uses), then the
web extra, then the files named on the command line (read and checked as ``rlreg register`` reads them;
fixed = moving refused), the data folder and the port.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from RLRegistrationLib.errors import InputError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def sample_inputs() -> dict[str, Path]:
    """The embedded sample pair (with its label maps)."""
    from RLRegistrationLib.io.sample_pair import SAMPLE_FILES

    return dict(SAMPLE_FILES)


def check_pairs(args) -> None:
    """Images and label maps come in pairs (no file read)."""
    if (args.fixed is None) != (args.moving is None):
        raise InputError("view: give both FIXED and MOVING, or neither (then the sample pair is used)")
    if (args.fixed_labels is None) != (args.moving_labels is None):
        raise InputError("view: give both --fixed-labels and --moving-labels, or neither")
    if args.fixed_labels is not None and args.fixed is None:
        raise InputError("view: --fixed-labels and --moving-labels need FIXED and MOVING")


def check_options(args) -> dict:
    """The panel's presets and the other options, checked as ``rlreg register`` checks them (one line
    naming the option and its range); returns the presets."""
    from RLRegistrationLib.frontends.cli_parser import spec_from_args
    from RLRegistrationLib.options import RANGES
    from RLRegistrationLib.registration.run_spec import check_policy

    if not 0 < args.port < 65536:
        raise InputError(f"--port: must be an integer from 1 to 65535, got {args.port}")
    low, high = 1, int(RANGES["steps"][1])
    if args.autorun is not None and not low <= args.autorun <= high:
        raise InputError(f"--autorun: must be an integer from {low} to {high}, got {args.autorun}")
    presets = {
        k: getattr(args, k)
        for k in ("policy", "quality", "steps", "iterations", "regularization", "device")  # in this order
        if getattr(args, k, None) is not None
    }
    spec = spec_from_args(args)  # the ranges and choices of every run option
    if args.policy is not None:
        check_policy(spec)
    return presets


def command_line_inputs(args) -> dict[str, Path]:
    """The files named on the command line, each read and checked as ``rlreg register`` reads it (one
    line naming the file and the problem), or the sample pair when none is."""
    from RLRegistrationLib.io.imaging import read_image, read_label_map
    from RLRegistrationLib.io.outputs import same_file

    check_pairs(args)
    if args.fixed is None:
        return {} if args.data_dir and not args.sample else sample_inputs()
    inputs = {"fixed": args.fixed, "moving": args.moving}
    if args.fixed_labels is not None:
        inputs.update(fixed_labels=args.fixed_labels, moving_labels=args.moving_labels)
    out = {role: Path(path).expanduser() for role, path in inputs.items()}
    names = {"fixed": "fixed image", "moving": "moving image"}
    names.update(fixed_labels="fixed labels", moving_labels="moving labels")
    for first, second in (("fixed", "moving"), ("fixed_labels", "moving_labels")):
        if second in out and same_file(out[first], out[second]):
            raise InputError(
                f"{names[second]} '{out[second]}': is the same file as the {names[first]} '{out[first]}'; "
                "give two different files"
            )
    for role, path in out.items():
        (read_label_map if "labels" in role else read_image)(path, names[role])
    return out


def run(args) -> int:
    """``rlreg view``: check, build the app, serve until Ctrl-C. Returns the exit code."""
    from . import INSTALL_COMMAND, missing_dependencies

    presets = check_options(args)
    check_pairs(args)
    missing = missing_dependencies()
    if missing:
        raise InputError(
            f"view needs the web extra (missing: {', '.join(missing)}); install it with: {INSTALL_COMMAND}"
        )
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s rlreg view %(levelname)s %(message)s"))
    web_log = logging.getLogger("rlreg.web")
    web_log.addHandler(handler)
    web_log.setLevel(logging.DEBUG if args.debug else logging.INFO)
    from .app import PortInUse, RegistrationWebApp, check_port_free
    from .files import DataFolder

    def data_folder(extra: list[Path]) -> DataFolder:
        try:
            return DataFolder(args.data_dir, extra)
        except NotADirectoryError:
            raise InputError(f"--data-dir '{args.data_dir}': not a folder") from None
        except OSError as error:
            raise InputError(f"--data-dir '{args.data_dir}': {error.strerror or error}") from None

    data_folder([])  # the folder is checked before any image is read
    try:
        check_port_free(args.host, args.port)
    except PortInUse as error:
        raise InputError(str(error)) from None
    inputs = command_line_inputs(args)
    data = data_folder(list(inputs.values()))
    if args.host not in LOCAL_HOSTS:
        print(
            f"rlreg view: warning: serving on {args.host}: anyone who can reach this address can run "
            "registrations and read the images offered (--data-dir). Use it only on a trusted network.",
            file=sys.stderr,
        )
    app = RegistrationWebApp(
        data,
        {role: data.name_of(path) for role, path in inputs.items()},
        autorun=args.autorun,
        presets=presets,
    )
    try:
        app.start(args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0
