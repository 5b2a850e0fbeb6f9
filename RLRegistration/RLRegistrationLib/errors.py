"""Errors the library raises on purpose: each message is one line naming the problem (and the file)."""


class RLRegistrationError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits non-zero, without a traceback."""


class InputError(RLRegistrationError):
    """An input file or image is missing, unreadable or unusable."""


class OutputError(RLRegistrationError):
    """An output cannot be written (exists without --overwrite, folder missing, ...)."""


class PolicyError(RLRegistrationError):
    """A policy is unknown, or its weights/card are missing, corrupt or inconsistent."""


class DeviceError(RLRegistrationError):
    """The requested compute device is unavailable or ran out of memory."""


class InputWarning(UserWarning):
    """An input is usable but the result will suffer (e.g. very thick slices); the CLI prints one line."""
