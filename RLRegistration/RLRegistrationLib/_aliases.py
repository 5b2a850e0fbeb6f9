"""The module names of version 0.1 (one flat folder), kept importable for one release with a
``DeprecationWarning`` that names the new place: ``import RLRegistrationLib.session`` gives
``RLRegistrationLib.registration.session``. A name split into several modules (``learned_policies``,
``slicer_bridge``) gives a namespace that looks its attributes up in the new modules."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

PACKAGE = __name__.rsplit(".", 1)[0]

#: old module (relative to the package) -> the module(s) that hold its names now
MOVED = {
    "allocator": ("frontends.allocator",),
    "cli": ("frontends.cli",),
    "devices": ("devices",),
    "environment": ("training.environment",),
    "export": ("io.export", "io.slicer_arrays"),
    "followup": ("synthesis.followup",),
    "geometry": ("fields.geometry",),
    "imaging": ("io.imaging",),
    "integrity": ("io.integrity",),
    "intensity_mapping": ("fields.intensity_mapping",),
    "learned_policies": (
        "policies.cards",
        "policies.network_policy",
        "policies.morphseek_policy",
        "policies.chained",
        "policies.registry",
    ),
    "masks": ("io.masks",),
    "memory": ("registration.memory",),
    "metrics": ("fields.metrics",),
    "morphseek": ("policies.morphseek_network",),
    "networks": ("policies.networks",),
    "panel_state": ("frontends.panel_state",),
    "prealign": ("registration.prealign",),
    "qc": ("frontends.qc",),
    "quality": ("registration.quality",),
    "regularizers": ("fields.regularizers",),
    "session": ("registration.session",),
    "similarity": ("fields.similarity",),
    "slicer_bridge": (
        "io.slicer_arrays",
        "registration.worker",
        "policies.choices",
        "frontends.display",
        "devices",
    ),
    "spatial": ("fields.spatial",),
}


class _Loader(importlib.abc.Loader):
    def __init__(self, old: str, targets: tuple[str, ...]):
        self.old, self.targets = old, targets

    def create_module(self, spec):
        warnings.warn(
            f"{PACKAGE}.{self.old} is deprecated: import from "
            + " / ".join(f"{PACKAGE}.{t}" for t in self.targets),
            DeprecationWarning,
            stacklevel=3,
        )
        modules = [importlib.import_module(f"{PACKAGE}.{t}") for t in self.targets]
        if len(modules) == 1:
            return modules[0]
        namespace = types.ModuleType(spec.name, f"Deprecated: the names of {', '.join(self.targets)}.")

        def __getattr__(name: str):
            for module in modules:
                if hasattr(module, name):
                    return getattr(module, name)
            raise AttributeError(f"module {spec.name!r} has no attribute {name!r}")

        namespace.__getattr__ = __getattr__
        return namespace

    def exec_module(self, module) -> None:
        """Nothing to run: the module was made by ``create_module``."""


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.rpartition(".")
        if package != PACKAGE or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(old, MOVED[old]))


def install() -> None:
    """Make the old module names importable (once per interpreter)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
