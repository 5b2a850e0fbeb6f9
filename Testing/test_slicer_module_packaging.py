"""How the Slicer module is laid out and packaged, read from its source (3D Slicer cannot be installed here):
the template's classes and bases, only torch-free modules imported when the panel opens (it opens before
PyTorch is installed), and every Python file and resource listed in ``RLRegistration/CMakeLists.txt``
(Slicer packages only what is listed there)."""

from __future__ import annotations

import ast
from pathlib import Path

from slicer_api_walk import dotted

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "RLRegistration" / "RLRegistration.py"
MRML_LAYER = ROOT / "RLRegistration" / "RLRegistrationMRML"
QT_LAYER = ROOT / "RLRegistration" / "RLRegistrationQt"


def module_tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"))


def test_module_layout_follows_the_template():
    tree = module_tree()
    classes = {
        node.name: [dotted(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)
    }
    assert classes["RLRegistration"] == ["ScriptedLoadableModule"]
    assert classes["RLRegistrationWidget"] == [
        "ScriptedLoadableModuleWidget",
        "VTKObservationMixin",
        "ReplayControlsMixin",
        "ResultActionsMixin",
    ]
    # the Logic is a facade: the scene work is the Qt-free MRML layer's (shared with the browser app)
    assert classes["RLRegistrationLogic"] == ["ScriptedLoadableModuleLogic", "RegistrationSceneLogic"]
    # the workflow checks are the MRML layer's (self_test.SceneWorkflowTests), run on the module's Logic
    assert classes["RLRegistrationTest"] == ["ScriptedLoadableModuleTest", "SceneWorkflowTests"]
    source = MODULE.read_text(encoding="utf-8")
    # torch is never pip-installed directly; RLRegistrationLib (torch) is imported lazily
    assert 'pip_install("torch' not in source and "pip_install('torch" not in source
    assert "installTorch" in source
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    own_imports = sorted(
        n.module
        for n in top_level
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(OWN_PACKAGES)
    )
    assert own_imports == [
        "RLRegistrationLib.frontends.panel_state",
        "RLRegistrationMRML.panel_controller",
        "RLRegistrationMRML.parameter_node",
        "RLRegistrationMRML.parameters",
        "RLRegistrationMRML.scene_logic",
        "RLRegistrationMRML.self_test",
        "RLRegistrationQt.replay_controls",
        "RLRegistrationQt.result_actions",
    ], "only torch-free modules at import time (the panel opens before PyTorch is installed)"
    reached = module_level_imports(own_imports)
    assert "RLRegistrationMRML.scene_inputs" in reached and "RLRegistrationLib.options" in reached
    torch_users = sorted(name for name, imports in reached.items() if "torch" in imports)
    assert not torch_users, f"imported when the module loads, and import torch: {torch_users}"
    assert not any(isinstance(n, ast.Import) and any(a.name == "torch" for a in n.names) for n in top_level)


OWN_PACKAGES = ("RLRegistrationLib", "RLRegistrationMRML", "RLRegistrationQt")


def _module_path(name: str) -> Path | None:
    base = MODULE.parent / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_level_imports(names: list[str]) -> dict[str, set[str]]:
    """Our modules imported when ``names`` are (module-level statements, packages' ``__init__`` included,
    followed transitively): module name -> the top-level names of everything it imports at module level."""
    reached: dict[str, set[str]] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) not in reached]
        path = _module_path(name)
        if name in reached or path is None:
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imports: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                modules = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            for module in modules:
                imports.add(module.split(".")[0])
                if module.startswith(OWN_PACKAGES) and _module_path(module):
                    todo.append(module)
        reached[name] = imports
    return reached


def test_cmake_lists_every_library_file_and_resource():
    cmake = (ROOT / "RLRegistration" / "CMakeLists.txt").read_text(encoding="utf-8")
    lib = ROOT / "RLRegistration" / "RLRegistrationLib"
    for path in sorted([*lib.rglob("*.py"), *MRML_LAYER.rglob("*.py"), *QT_LAYER.rglob("*.py")]):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(ROOT / "RLRegistration").as_posix()
        assert rel in cmake, f"{rel} is not in RLRegistration/CMakeLists.txt (it would not be packaged)"
    for path in sorted((lib / "sample_data").iterdir()):
        assert path.relative_to(ROOT / "RLRegistration").as_posix() in cmake
    for resource in ("Resources/Icons/RLRegistration.png", "Resources/UI/RLRegistration.ui"):
        assert resource in cmake and (ROOT / "RLRegistration" / resource).is_file()
    assert "models" in cmake
    extension = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert key in extension
    assert "PyTorch" in extension and "add_subdirectory(RLRegistration)" in extension
    testing = (ROOT / "RLRegistration" / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest" in testing
