#!/usr/bin/env python
"""Trim the shared Slicer API listing to what the RLRegistration module uses: Testing/slicer_api_subset.json.

The full listing (``../shared/slicer-api/slicer_api.json``, extracted from the Slicer, CTK and vtkAddon
sources) is not part of this repository; the subset is, so that ``Testing/test_slicer_module_structure.py``
checks the module's Slicer names anywhere. The subset keeps *whole* entries:

* every C++ class whose name appears in ``RLRegistration/RLRegistration.py``, its ``.ui`` file or its MRML
  layer ``RLRegistrationMRML`` (MRML nodes, logics, qMRML/CTK widgets, vtkAddon classes), the classes the structure test infers as return
  types (display nodes, segmentation classes, module logics), and all their Slicer/CTK base classes;
* the Python sections the module imports from: ``slicer``, ``slicer.util``, ``slicer.ScriptedLoadableModule``,
  ``slicer.parameterNodeWrapper``, ``slicer.i18n``, ``slicer.testing`` and ``scripted.PyTorchUtils``.

Run from the repository root after changing the module (the structure test says when it is needed)::

    python scripts/trim_slicer_api.py [--full PATH] [--check]

``--check`` only compares the existing subset with a fresh one (exit code 1 when stale).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FULL = ROOT.parent / "shared" / "slicer-api" / "slicer_api.json"
SUBSET = ROOT / "Testing" / "slicer_api_subset.json"
# the module, its .ui and its Qt-free MRML layer (the parameter node's classes are named in its settings table)
SOURCES = (
    ROOT / "RLRegistration" / "RLRegistration.py",
    ROOT / "RLRegistration" / "Resources" / "UI" / "RLRegistration.ui",
    *sorted((ROOT / "RLRegistration" / "RLRegistrationMRML").glob("*.py")),
)
PYTHON_SECTIONS = (
    "slicer",
    "slicer.util",
    "slicer.ScriptedLoadableModule",
    "slicer.parameterNodeWrapper",
    "slicer.i18n",
    "slicer.testing",
    "scripted.PyTorchUtils",
)
# classes the structure test uses as inferred types without their name being written in the module
EXTRA_CLASSES = (
    "qSlicerApplication",
    "vtkMRMLScene",
    "vtkMRMLScalarVolumeDisplayNode",
    "vtkMRMLLabelMapVolumeDisplayNode",
    "vtkMRMLTransformDisplayNode",
    "vtkMRMLSegmentationDisplayNode",
    "vtkSegmentation",
    "vtkSegment",
    "vtkSlicerSegmentationsModuleLogic",
    "vtkSlicerTransformLogic",
    "vtkMRMLColorTableNode",
    "vtkMRMLSliceCompositeNode",
)
NAME = re.compile(r"\b(?:vtk|qMRML|qSlicer|ctk)[A-Za-z0-9_]+\b")


def build_subset(full: dict) -> dict:
    classes = full["classes"]
    wanted: set[str] = set(EXTRA_CLASSES)
    for source in SOURCES:
        wanted |= {name for name in NAME.findall(source.read_text(encoding="utf-8")) if name in classes}
    pending = list(wanted)
    while pending:  # close over Slicer/CTK bases (their entries already merge inherited names)
        name = pending.pop()
        for base in classes.get(name, {}).get("bases", []):
            if base in classes and base not in wanted:
                wanted.add(base)
                pending.append(base)
    missing = sorted(name for name in wanted if name not in classes)
    if missing:
        raise SystemExit(f"trim_slicer_api: not in the full listing: {', '.join(missing)}")
    return {
        "about": (
            "Subset of ../shared/slicer-api/slicer_api.json (names of the Slicer/CTK/vtkAddon API) for the "
            "classes and Python modules RLRegistration uses; regenerate with scripts/trim_slicer_api.py. "
            + full.get("about", "")
        ),
        "slicer_commit": full.get("slicer_commit"),
        "ctk_commit": full.get("ctk_commit"),
        "vtkaddon_commit": full.get("vtkaddon_commit"),
        "python": {key: full["python"][key] for key in PYTHON_SECTIONS if key in full["python"]},
        "classes": {name: classes[name] for name in sorted(wanted)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full", type=Path, default=DEFAULT_FULL, help=f"full listing (default {DEFAULT_FULL})"
    )
    parser.add_argument(
        "--check", action="store_true", help="only check that the committed subset is current"
    )
    args = parser.parse_args(argv)
    if not args.full.is_file():
        print(
            f"trim_slicer_api: the full Slicer API listing is absent ({args.full}).\n"
            "It lives outside this repository (../shared/slicer-api/slicer_api.json); pass --full PATH.\n"
            f"The committed subset {SUBSET.relative_to(ROOT)} was left unchanged.",
            file=sys.stderr,
        )
        return 2
    subset = build_subset(json.loads(args.full.read_text(encoding="utf-8")))
    text = json.dumps(subset, indent=1, sort_keys=True) + "\n"
    if args.check:
        current = SUBSET.read_text(encoding="utf-8") if SUBSET.is_file() else ""
        if current != text:
            print(
                f"trim_slicer_api: {SUBSET.relative_to(ROOT)} is stale; run scripts/trim_slicer_api.py",
                file=sys.stderr,
            )
            return 1
        print(f"{SUBSET.relative_to(ROOT)} is up to date ({len(subset['classes'])} classes)")
        return 0
    SUBSET.write_text(text, encoding="utf-8")
    print(
        f"wrote {SUBSET.relative_to(ROOT)}: {len(subset['classes'])} classes, {len(subset['python'])} Python modules"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
