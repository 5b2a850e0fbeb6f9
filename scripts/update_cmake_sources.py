"""Rewrite the MODULE_PYTHON_SCRIPTS list of RLRegistration/CMakeLists.txt from the source tree (every .py
file of RLRegistrationLib, RLRegistrationMRML and RLRegistrationQt; Slicer packages only what is listed there).
``Testing/test_slicer_module_structure.py`` checks the list; run this after adding or removing a module."""

from __future__ import annotations

from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "RLRegistration"


def main() -> None:
    cmake = MODULE / "CMakeLists.txt"
    text = cmake.read_text(encoding="utf-8")
    files = sorted(
        path.relative_to(MODULE).as_posix()
        for package in ("RLRegistrationLib", "RLRegistrationMRML", "RLRegistrationQt")
        for path in (MODULE / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )
    start = text.index("set(MODULE_PYTHON_SCRIPTS\n") + len("set(MODULE_PYTHON_SCRIPTS\n")
    end = text.index("  )\n", start)
    text = text[:start] + "  ${MODULE_NAME}.py\n" + "".join(f"  {f}\n" for f in files) + text[end:]
    cmake.write_text(text, encoding="utf-8")
    print(f"{cmake}: {len(files) + 1} scripts")


if __name__ == "__main__":
    main()
