"""What the page may show: messages without the server's file system paths.

The library and the MRML layer name files by their paths (``moving image '/srv/data/a.nii.gz': ...``); the
browser knows them only by the names the data folder lists. :class:`PublicText` rewrites every text bound
for the page: the server paths it was told about become the page's names for them, any other absolute path
becomes its last part (a path in the data folder: its name there), and the names the page itself sent are kept as they were sent.
"""

from __future__ import annotations

import re
from pathlib import Path

# an absolute POSIX path: "/" not inside a word, a relative path ("../x") or a URL, then 1+ parts
ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s'\"/,;()<>|]+/)*[^\s'\"/,;()<>|]+/?")


class PublicText:
    """Rewrites texts for the page (see the module docstring)."""

    def __init__(self) -> None:
        self._paths: dict[str, str] = {}
        self._folders: dict[str, str] = {}
        self._kept: set[str] = set()

    def name_path(self, path: str | Path, name: str) -> None:
        """Show ``path`` (and its resolved form) as ``name``."""
        for form in {str(path), str(Path(path).expanduser().resolve())}:
            if len(form) > 1:
                self._paths[form] = name

    def name_folder(self, folder: str | Path, name: str) -> None:
        """Show ``folder`` as ``name``, and the paths inside it relative to it (the names the page lists)."""
        for form in {str(folder).rstrip("/"), str(Path(folder).expanduser().resolve())}:
            if len(form) > 1:
                self._folders[form] = name

    def keep(self, text: str | None) -> None:
        """A name the page sent (a picked file name): shown as it is, even when it looks like a path."""
        if text:
            self._kept.add(str(text))

    def __call__(self, text: str) -> str:
        if not text:
            return text
        tokens: list[str] = []

        def protect(value: str) -> str:
            tokens.append(value)
            return f"\x00{len(tokens) - 1}\x00"

        for kept in sorted(self._kept, key=len, reverse=True):
            text = text.replace(f"'{kept}'", f"'{protect(kept)}'")
        for path in sorted(self._paths, key=len, reverse=True):
            text = text.replace(path, protect(self._paths[path]))
        for folder in sorted(self._folders, key=len, reverse=True):
            inside = re.escape(folder) + r"/([^\s'\"]+)"
            text = re.sub(inside, lambda match: protect(match.group(1)), text)
            text = text.replace(folder, protect(self._folders[folder]))
        text = ABSOLUTE_PATH.sub(lambda match: Path(match.group(0).rstrip("/")).name or "/", text)
        return re.sub("\x00(\\d+)\x00", lambda match: tokens[int(match.group(1))], text)
