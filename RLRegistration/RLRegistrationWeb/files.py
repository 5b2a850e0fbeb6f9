"""Which files the web app may read: the ``--data-dir`` folder (and the files named on the command line).

Every path that arrives from a browser is a *name* relative to the data folder. :meth:`DataFolder.resolve`
resolves it (symbolic links and ``..`` included) and refuses anything that ends up outside the folder with
:class:`PathRefused` (the app answers it like an HTTP 403 and logs it). Nothing in the app writes into the
folder: the session's outputs live in a private temporary folder and are only offered as downloads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("rlreg.web")

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MAX_LISTED_FILES = 2000


class PathRefused(PermissionError):
    """A path outside the data folder (403 Forbidden): refused, logged, nothing read or written."""

    status = 403


def is_image_name(name: str) -> bool:
    """True for the file names the pickers offer (NIfTI, NRRD, MetaImage)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


class DataFolder:
    """The files a browser may pick: images under ``root`` (when given) plus the named ``extra`` files.

    ``extra`` are the files given on the command line (or the embedded sample pair): the user named them,
    so they may be read even when they lie outside ``root``; the browser refers to them by their
    listed name only, never by a path.
    """

    def __init__(self, root: str | Path | None = None, extra: list[str | Path] | None = None):
        self.root = None if root is None else Path(root).expanduser().resolve(strict=True)
        if self.root is not None and not self.root.is_dir():
            raise NotADirectoryError(f"--data-dir '{root}' is not a folder")
        self._extra: dict[str, Path] = {}
        for path in extra or []:
            path = Path(path).expanduser().resolve()
            name = self._extra_name(path)
            self._extra[name] = path

    def _extra_name(self, path: Path) -> str:
        if self.root is not None and _is_within(path, self.root):
            return path.relative_to(self.root).as_posix()
        name, parent, n = path.name, path.parent.name, 1
        candidate = name
        while candidate in self._extra and self._extra[candidate] != path:
            n += 1
            candidate = f"{parent}/{name}" if n == 2 else f"{parent}/{name} ({n})"
        return candidate

    # ------------------------------------------------------------------ listing
    def names(self) -> list[str]:
        """Names offered by the pickers: the command-line files first, then the folder's images (sorted)."""
        names = list(self._extra)
        if self.root is not None:
            found = []
            for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for filename in filenames:
                    if is_image_name(filename) and not filename.startswith("."):
                        path = Path(dirpath) / filename
                        if _is_within(path.resolve(), self.root):  # links pointing out are not offered
                            found.append(path.relative_to(self.root).as_posix())
                if len(found) >= MAX_LISTED_FILES:
                    break
            names += [n for n in sorted(found) if n not in self._extra]
        return names

    def name_of(self, path: str | Path) -> str | None:
        """The listed name of a command-line file (None when it was not named)."""
        path = Path(path).expanduser().resolve()
        for name, extra in self._extra.items():
            if extra == path:
                return name
        return None

    # ------------------------------------------------------------------ checking
    def resolve(self, name: str, what: str = "file") -> Path:
        """The real path of a name sent by a browser, or :class:`PathRefused` (logged) when it is not
        one of the command-line files and does not resolve to a file inside the data folder."""
        if not isinstance(name, str) or not name or "\x00" in name:
            self._refuse(name, what, "not a file name")
        if name in self._extra:
            return self._extra[name]
        if self.root is None:
            self._refuse(name, what, "not one of the files given on the command line (no --data-dir)")
        candidate = Path(name)
        path = (candidate if candidate.is_absolute() else self.root / candidate).resolve()
        if not _is_within(path, self.root):
            self._refuse(
                name, what, "outside the data folder (--data-dir)", f"resolves to {path}, outside {self.root}"
            )
        return path

    def _refuse(self, name, what: str, why: str, detail: str = ""):
        """Log (with the server's paths in ``detail``) and raise; the message, which the page may show,
        names no path of the server."""
        log.warning("refused %s %r: %s%s", what, name, why, f" ({detail})" if detail else "")
        raise PathRefused(f"403 Forbidden: {what} '{name}' is {why}")


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
