"""The files a run writes, all or nothing.

``OutputSet`` is checked before any image is read (each file's type from its name, its folder really
writable, no output that exists without ``overwrite``, is one of the inputs, or is given twice). After the
registration, ``write`` puts every output into a hidden staging folder next to its destination and, only
once all of them are complete, renames them into place with SIGINT/SIGTERM/SIGHUP held back: a signal or
an error at any moment leaves either all the new outputs in place or none of them, and every file that
was there before byte-identical (a replaced file is kept as a hard link until all renames have
succeeded). On the main thread each writer runs in a helper thread, so that Ctrl-C answers at once even
during a long native write (a 1 mm field as ``.tfm`` text: 4 s); a writer cut short that way is left to
fail in its staging folder, which is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError
from .quiet import itk_warnings_off, silence_native_stderr_from_now_on

#: transform files that hold a displacement field (ITK's .mat holds linear transforms only)
TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt")
#: single-file image formats (a .mhd or .nhdr header would write a second, detached data file)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")
JSON_SUFFIXES = (".json",)
#: what each output holds, and the file types it may have
KINDS = {
    "transform": TRANSFORM_SUFFIXES,
    "image": IMAGE_SUFFIXES,
    "warped": IMAGE_SUFFIXES,
    "displacement": IMAGE_SUFFIXES,
    "jacobian": IMAGE_SUFFIXES,
    "weight_map": IMAGE_SUFFIXES,
    "uncertainty": IMAGE_SUFFIXES,
    "qc": PICTURE_SUFFIXES,
    "report": JSON_SUFFIXES,
    "config": JSON_SUFFIXES,
}
HELD_SIGNALS = tuple(
    s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s
)


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file (the same path, or links to one file); False when either
    cannot be resolved (a loop of links, a folder this user may not enter: reading it will say so)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and a.samefile(b)  # hard links
    except (OSError, RuntimeError):  # RuntimeError: a loop of symbolic links (Python < 3.13)
        return False


def suffix_of(path: Path, allowed: tuple[str, ...]) -> str | None:
    """The allowed suffix ``path`` ends in (case-insensitive, longest first), or None."""
    name = path.name.lower()
    return next((s for s in sorted(allowed, key=len, reverse=True) if name.endswith(s)), None)


@dataclass
class Staged:
    """One output written to ``temporary`` and waiting to be renamed to ``path``."""

    kind: str
    path: Path
    temporary: Path


class OutputSet:
    """The outputs of one run: ``{kind: path}`` (kinds in ``KINDS``; None = not asked for).

    ``option_names`` ({kind: "--warped"}) name the options in messages; ``inputs`` ({"moving image":
    path}) are the files no output may replace, also through links.
    """

    def __init__(
        self,
        paths: Mapping[str, str | Path | None],
        overwrite: bool = False,
        inputs: Mapping[str, str | Path | None] | None = None,
        option_names: Mapping[str, str] | None = None,
    ):
        unknown = set(paths) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown output kinds {sorted(unknown)}")
        self.paths = {kind: Path(p) for kind, p in paths.items() if p is not None}
        self.overwrite = overwrite
        self.inputs = dict(inputs or {})
        self.option_names = dict(option_names or {})
        self._staged: dict[str, Path] = {}
        self.written: list[Path] = []  # after write: the outputs in place

    def __contains__(self, kind: str) -> bool:
        return kind in self.paths

    def __getitem__(self, kind: str) -> Path:
        return self.paths[kind]

    def staged_path(self, kind: str) -> Path:
        """During ``write``: the complete temporary file of an output written before this one (a later
        writer may read it back, e.g. a report of what the written transform gives)."""
        return self._staged[kind]

    def check(self) -> None:
        """Refuse, before any work, what could not be written (``OutputError`` naming the file)."""
        from .integrity import data_files

        protected = [
            (name, f) for name, source in self.inputs.items() if source for f in data_files(Path(source))
        ]
        seen: dict[Path, str] = {}
        for kind, path in self.paths.items():
            option = self.option_names.get(kind, kind)
            try:
                self._check_one(kind, path, option, protected, seen)
            except RuntimeError:  # Path.resolve: a loop of symbolic links (Python < 3.13)
                raise OutputError(f"{option} '{path}': a loop of symbolic links") from None
            except OSError as error:  # e.g. a folder on the way that this user may not enter
                raise OutputError(
                    f"{option} '{path}': folder '{path.parent}' is not accessible ({error.strerror or error})"
                ) from None

    def _check_one(self, kind: str, path: Path, option: str, protected: list, seen: dict) -> None:
        for name, source in protected:
            if same_file(path, source):
                raise OutputError(
                    f"{option} '{path}': is the same file as the {name} '{source}'; an output never "
                    "replaces an input (choose another file name)"
                )
        if suffix_of(path, KINDS[kind]) is None:
            raise OutputError(f"{option} '{path}': the file name must end in {', '.join(KINDS[kind])}")
        resolved = path.resolve()
        if resolved in seen:
            raise OutputError(f"{option} '{path}': the same file is also given to {seen[resolved]}")
        seen[resolved] = option
        if path.is_dir():
            raise OutputError(f"{option} '{path}': is a folder, a file name is needed")
        if os.path.lexists(path) and not self.overwrite:  # a link, even a dangling one, is a file there
            raise OutputError(f"{option} '{path}': file exists (use --overwrite to replace it)")
        check_writable_folder(path.parent, f"{option} '{path}'")

    def write(self, writers: Mapping[str, Callable[[Path], None]]) -> list[Path]:
        """Write every output with ``writers[kind](temporary_path)`` (a writer for each kind of this set;
        the temporary name has the file's suffix in lower case, so format choices by suffix work), then
        rename them all into place together; returns the paths written, also kept in ``written``. On any
        error or signal, nothing is left behind; a signal that arrives while the files are renamed is
        held until all of them are in place (``written`` then says so)."""
        staged: list[Staged] = []
        folders: dict[Path, Path] = {}
        self.written = []
        try:
            with itk_warnings_off():
                for kind, path in self.paths.items():
                    option = self.option_names.get(kind, kind)
                    if path.parent not in folders:
                        folders[path.parent] = staging_folder(path.parent, f"{option} '{path}'")
                    temporary = folders[path.parent] / staged_name(path)
                    staged.append(Staged(kind, path, temporary))
                    try:
                        run_writer(writers[kind], temporary)
                    except OutputError:
                        raise
                    except (OSError, RuntimeError, ValueError) as error:
                        text = str(error).strip()
                        message = text.splitlines()[-1] if text else type(error).__name__
                        raise OutputError(f"{option} '{path}': could not be written ({message})") from None
                    if not temporary.exists():
                        raise OutputError(f"{option} '{path}': nothing was written")
                    self._staged[kind] = temporary
            commit(staged, self.written)
        finally:
            self._staged = {}
            for folder in folders.values():
                remove_staging_folder(folder)
        return list(self.written)


def staging_folder(folder: Path, name: str) -> Path:
    """A new hidden folder in ``folder`` for this process's temporary outputs (on the same file system:
    the outputs are renamed out of it)."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".outputs.rlreg-{os.getpid()}-partial-", dir=folder))
    except OSError as error:
        raise OutputError(f"{name}: folder '{folder}' is not writable ({error.strerror})") from None


def staged_name(path: Path) -> str:
    """``path``'s name with its output suffix in lower case (ITK picks a format by a lower-case suffix
    only: ``T.H5`` and ``W.NII.GZ`` are written as ``T.h5`` and ``W.nii.gz``, then renamed)."""
    suffix = suffix_of(path, tuple({s for v in KINDS.values() for s in v}))
    if suffix is None:
        return path.name
    return path.name[: len(path.name) - len(suffix)] + suffix


#: what ``write`` leaves only when its process is killed outright (SIGKILL, a lost machine): staging
#: folders and backups of replaced files, ``.<name>.rlreg-<pid>-partial...`` / ``-previous``
LEFTOVER = re.compile(r"^\..*\.rlreg-(\d+)-(partial|previous)")


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove from ``folder`` the staging folders and backups that writers killed outright left there,
    those of processes that no longer run (a running one's are its own); returns what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for path in Path(folder).iterdir():
            match = LEFTOVER.match(path.name)
            if match is None or _process_runs(int(match.group(1))):
                continue
            if path.is_dir() and not path.is_symlink():
                remove_staging_folder(path)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def remove_staging_folder(folder: Path) -> None:
    """Remove a staging folder and what is in it. A writer left running (cancelled) may create its file
    while the folder is being emptied, so this tries again until the folder is gone; a writer that comes
    later finds no folder and fails."""
    for _ in range(100):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.lexists(folder):
            return
        time.sleep(0.01)


def run_writer(writer: Callable[[Path], None], temporary: Path) -> None:
    """``writer(temporary)``; on the main thread in a helper thread that the main thread waits for, so
    that a signal is answered at once (Python runs signal handlers on the main thread between bytecodes,
    never inside a native call such as ITK's writers). A writer still running when a signal ends the wait
    is left to itself: its staging folder is removed, and what its native code prints as it then fails is
    silenced (the command line then leaves with ``os._exit``: Python's shutdown would stop the thread
    inside C++ code and abort). The wait polls an event: a ``Thread.join`` cut short by a signal marks a
    running thread as stopped (Python 3.11)."""
    if threading.current_thread() is not threading.main_thread():
        writer(temporary)
        return
    outcome: list[BaseException] = []
    finished = threading.Event()

    def target() -> None:
        try:
            writer(temporary)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            outcome.append(error)
        finally:
            finished.set()

    threading.Thread(target=target, name="rlreg-output-writer", daemon=True).start()
    try:
        while not finished.is_set():
            time.sleep(0.02)
    except BaseException:
        if not finished.is_set():
            silence_native_stderr_from_now_on()
        raise
    if outcome:
        raise outcome[0]


def check_writable_folder(folder: Path, name: str) -> None:
    """``OutputError`` unless ``folder`` exists and a file can really be created in it (tried, then
    removed: permissions, read-only file systems and ACLs all count, also for root)."""
    if not folder.exists():
        raise OutputError(f"{name}: folder '{folder}' does not exist")
    if not folder.is_dir():
        raise OutputError(f"{name}: '{folder}' is not a folder")
    probe = folder / f".rlreg-{os.getpid()}-write-test"
    try:
        descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(descriptor)
    except OSError as error:
        raise OutputError(f"{name}: folder '{folder}' is not writable ({error.strerror})") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back while the block runs: their Python handlers are replaced by
    one that only notes the signal, and the first signal noted is handed to its own handler when the
    block ends (Ctrl-C: ``KeyboardInterrupt`` raised there; a signal left to the system's default: sent
    again). Blocking them with ``pthread_sigmask`` would not do: in a process with other threads (torch's,
    a writer's) the system hands the signal to one of them, and Python still runs the handler on the main
    thread. Only on the main thread, the one that may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = {}
    try:
        for signum in HELD_SIGNALS:
            previous[signum] = signal.signal(signum, lambda signum, frame: noted.append(signum))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if noted:
            _deliver(noted[0], previous.get(noted[0]))


def _deliver(signum: int, handler) -> None:
    """Hand a held signal to the handler it would have met."""
    if callable(handler):
        handler(signum, None)
    elif handler in (signal.SIG_DFL, None):
        signal.raise_signal(signum)


def commit(staged: list[Staged], written: list[Path] | None = None) -> None:
    """Rename every staged file into place, signals held; on a failure, undo the renames done so far
    (a replaced file comes back from its hard link, or copy where links are not possible). ``written``
    receives the paths once all of them are in place; a signal held meanwhile is raised after that."""
    written = [] if written is None else written
    with signals_held():
        done: list[tuple[Staged, Path | None]] = []
        current = None
        try:
            for current in staged:
                item, backup = current, None
                if item.path.exists():
                    backup = item.path.with_name(f".{item.path.name}.rlreg-{os.getpid()}-previous")
                    try:
                        os.link(item.path, backup)
                    except OSError:
                        shutil.copy2(item.path, backup)
                done.append((item, backup))
                os.replace(item.temporary, item.path)
            written.extend(item.path for item in staged)
        except BaseException as error:
            written.clear()
            for item, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, item.path)
                    elif item.path.exists():
                        item.path.unlink()
            if not isinstance(error, OSError):
                raise
            raise OutputError(
                f"output '{current.path if current else ''}': could not be put in place ({error.strerror})"
            ) from None
        finally:
            for _, backup in done:
                if backup is not None:
                    with contextlib.suppress(OSError):
                        backup.unlink()


def write_json(values: object) -> Callable[[Path], None]:
    """A writer of ``values`` as indented JSON."""

    def write(path: Path) -> None:
        path.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")

    return write
