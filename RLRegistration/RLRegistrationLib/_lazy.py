"""Package namespaces that re-export names of their modules on first use (PEP 562), so that importing a
package imports none of its modules (``import RLRegistrationLib`` loads neither torch nor SimpleITK)."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the module (relative to
    the package, e.g. ``"registry"`` or ``"io.imaging"``) that defines it."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list:
        return sorted(exports)

    return __getattr__, __dir__
