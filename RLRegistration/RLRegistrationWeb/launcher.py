"""Start ``rlreg view`` from parsed command-line arguments (``cli.py`` imports this lazily)."""

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


def command_line_inputs(args) -> dict[str, Path]:
    """The files named on the command line, or the sample pair when none is; InputError for a half pair."""
    if (args.fixed is None) != (args.moving is None):
        raise InputError("view: give both FIXED and MOVING, or neither (then the sample pair is used)")
    if (args.fixed_labels is None) != (args.moving_labels is None):
        raise InputError("view: give both --fixed-labels and --moving-labels, or neither")
    if args.fixed is None:
        return {} if args.data_dir and not args.sample else sample_inputs()
    inputs = {"fixed": args.fixed, "moving": args.moving}
    if args.fixed_labels is not None:
        inputs.update(fixed_labels=args.fixed_labels, moving_labels=args.moving_labels)
    out = {}
    for role, path in inputs.items():
        path = Path(path).expanduser()
        if not path.exists():
            raise InputError(f"{role.replace('_', ' ')} '{path}': file not found")
        out[role] = path
    return out


def run(args) -> int:
    """``rlreg view``: check, build the app, serve until Ctrl-C. Returns the exit code."""
    from . import INSTALL_COMMAND, missing_dependencies

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

    if args.autorun is not None and args.autorun < 1:
        raise InputError(f"--autorun must be >= 1, got {args.autorun}")
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    inputs = command_line_inputs(args)
    try:
        data = DataFolder(args.data_dir, list(inputs.values()))
    except (OSError, NotADirectoryError) as error:
        raise InputError(
            f"--data-dir '{args.data_dir}': {getattr(error, 'strerror', None) or error}"
        ) from None
    try:
        check_port_free(args.host, args.port)
    except PortInUse as error:
        raise InputError(str(error)) from None
    if args.host not in LOCAL_HOSTS:
        print(
            f"rlreg view: warning: serving on {args.host}: anyone who can reach this address can run "
            "registrations and read the images offered (--data-dir). Use it only on a trusted network.",
            file=sys.stderr,
        )
    presets = {
        k: getattr(args, k)
        for k in ("policy", "steps", "iterations", "regularization", "device")
        if getattr(args, k, None) is not None
    }
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
