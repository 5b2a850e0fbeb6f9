"""The files a run writes, all or nothing.

``OutputSet`` is checked before any image is read (each file's type from its name, its folder really
writable, no output that exists without ``overwrite``, is one of the inputs, or is given twice). After the
registration, ``write`` puts every output into a temporary file next to its destination and, only once
all of them are complete, renames them into place with SIGINT/SIGTERM/SIGHUP held back: a signal or an
error at any moment leaves either all the new outputs in place or none of them, and every file that was
there before byte-identical (a replaced file is kept as a hard link until all renames have succeeded).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError

TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")
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
    """True when ``a`` and ``b`` name one file (the same path, or links to one file)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)  # hard links
    except OSError:
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
            if path.exists() and not self.overwrite:
                raise OutputError(f"{option} '{path}': file exists (use --overwrite to replace it)")
            check_writable_folder(path.parent, f"{option} '{path}'")

    def write(self, writers: Mapping[str, Callable[[Path], None]]) -> list[Path]:
        """Write every output with ``writers[kind](temporary_path)`` (a writer for each kind of this set;
        the temporary name keeps the file's suffix, so format choices by suffix work), then rename them all
        into place together; returns the paths written. On any error or signal, nothing is left behind."""
        staged: list[Staged] = []
        try:
            for kind, path in self.paths.items():
                temporary = temporary_name(path)
                staged.append(Staged(kind, path, temporary))
                try:
                    writers[kind](temporary)
                except OutputError:
                    raise
                except (OSError, RuntimeError, ValueError) as error:
                    message = (
                        str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                    )
                    option = self.option_names.get(kind, kind)
                    raise OutputError(f"{option} '{path}': could not be written ({message})") from None
                if not temporary.exists():
                    raise OutputError(f"{self.option_names.get(kind, kind)} '{path}': nothing was written")
                self._staged[kind] = temporary
            commit(staged)
        finally:
            self._staged = {}
            for item in staged:
                with contextlib.suppress(OSError):
                    item.temporary.unlink()
        return [item.path for item in staged]


def temporary_name(path: Path) -> Path:
    """A hidden name next to ``path`` with the same suffixes (this process's own)."""
    suffix = next(
        (
            s
            for s in sorted({s for v in KINDS.values() for s in v}, key=len, reverse=True)
            if path.name.lower().endswith(s)
        ),
        path.suffix,
    )
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.rlreg-{os.getpid()}-partial{suffix}")


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
    """Hold SIGINT, SIGTERM and SIGHUP back (delivered when the block ends); only on the main thread,
    where Python runs signal handlers, and where the platform can."""
    can = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
    if can:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        if can:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def commit(staged: list[Staged]) -> None:
    """Rename every staged file into place, signals held; on a failure, undo the renames done so far
    (a replaced file comes back from its hard link, or copy where links are not possible)."""
    with signals_held():
        done: list[tuple[Staged, Path | None]] = []
        try:
            for item in staged:
                backup = None
                if item.path.exists():
                    backup = item.path.with_name(f".{item.path.name}.rlreg-{os.getpid()}-previous")
                    try:
                        os.link(item.path, backup)
                    except OSError:
                        shutil.copy2(item.path, backup)
                done.append((item, backup))
                os.replace(item.temporary, item.path)
        except OSError as error:
            for item, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, item.path)
                    elif item.path.exists():
                        item.path.unlink()
            raise OutputError(
                f"output '{done[-1][0].path}': could not be put in place ({error.strerror})"
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
