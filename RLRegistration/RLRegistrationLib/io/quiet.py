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


@contextlib.contextmanager
def itk_warnings_off() -> Iterator[None]:
    """ITK's warnings (``WARNING: In .../itkNiftiImageIO.cxx ...``, two to six lines each) are not printed
    while the block runs: the checks around the call turn what matters into one message of their own
    (e.g. a header's zero spacing, a folder without a DICOM series). Restores the previous setting."""
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def silence_native_stderr_from_now_on() -> None:
    """Send file descriptor 2 to the null device for the rest of the process, keeping Python's
    ``sys.stderr`` on the real stderr (a duplicate of it). For a command that leaves a native call
    running in another thread when it is cancelled (an output writer): what that call prints as it
    fails must not add lines after the command's own last line. Does nothing when ``sys.stderr`` is not
    file descriptor 2 (a test's capture, an embedding application)."""
    try:
        if sys.stderr.fileno() != 2:
            return
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
