"""Structural checks of the Slicer module without Slicer (3D Slicer cannot be installed here).

* ``Resources/UI/RLRegistration.ui`` loads with PySide6's ``QUiLoader`` (offscreen) with stand-in classes for
  the ctk/qMRML widgets; every ``self.ui.<name>`` of the module exists in it; every Qt property the ``.ui``
  sets on a ctk/qMRML widget, every signal/slot of its connections and every ``SlicerParameterName`` is real.
* Every ``slicer.util.X``, ``slicer.X`` class, MRML/VTK method (on receivers whose class the walk can infer),
  ScriptedLoadableModule method, parameter-node-wrapper name and ``qt``/``vtk`` name the module uses exists:
  Slicer names in ``Testing/slicer_api_subset.json`` (trimmed from the Slicer sources' listing by
  ``scripts/trim_slicer_api.py``), VTK names in the real ``vtk`` package, Qt names in PySide6.

"The module" is ``RLRegistration.py`` with its widget's mixins (``RLRegistrationQt``) and the MRML layer's
modules that run inside Slicer. Names the listing cannot hold (PythonQt dynamic attributes such as
``slicer.app``) are in small allowlists below, each with the reason; the walk itself is
``slicer_api_walk``, the layout and packaging checks are ``test_slicer_module_packaging``.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from slicer_api_walk import (
    MODULE_LOGICS,
    PARAMETER_NODE,
    Names,
    TypeWalker,
    annotation_class,
    dotted,
    module_functions,
    qt_class,
    qt_has_property,
    vtk_class,
)

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "RLRegistration" / "RLRegistration.py"
MRML_LAYER = ROOT / "RLRegistration" / "RLRegistrationMRML"
QT_LAYER = ROOT / "RLRegistration" / "RLRegistrationQt"  # the widget's mixins: Qt, run only in Slicer
MRML_IN_SLICER = (  # the MRML layer's modules that run inside Slicer (with RLRegistration.py)
    "parameters.py",
    "panel_controller.py",
    "panel_messages.py",
    "scene_logic.py",
    "scene_inputs.py",
    "scene_run.py",
    "scene_outputs.py",
    "scene_export.py",
    "self_test.py",
    "colors.py",
)
UI = ROOT / "RLRegistration" / "Resources" / "UI" / "RLRegistration.ui"
SUBSET = Path(__file__).with_name("slicer_api_subset.json")
FULL = ROOT.parent / "shared" / "slicer-api" / "slicer_api.json"

# attributes of the ``slicer`` package that PythonQt creates at runtime (not classes, not in the listing)
SLICER_RUNTIME = {
    "app",
    "mrmlScene",
    "modules",
    "util",
    "i18n",
    "parameterNodeWrapper",
    "ScriptedLoadableModule",
}
# PyTorchUtilsLogic methods: the listing has the class but no methods (the module is outside Slicer's
# sources). Verified against fepegar/SlicerPyTorch PyTorchUtils/PyTorchUtils.py: staticmethod
# torchInstalled(), installTorch(askConfirmation=False, forceComputationBackend=None, ...) -> torch or None.
PYTORCHUTILS_LOGIC = {"torchInstalled", "installTorch", "torch", "getDevice", "importTorch"}
# methods added to @parameterNodeWrapper classes (Base/Python/slicer/parameterNodeWrapper/wrapper.py)
WRAPPER_METHODS = {
    "connectGui",
    "disconnectGui",
    "default",
    "isCached",
    "setValue",
    "getValue",
    "parameterNode",
}
_KEEP_ALIVE: list = []  # stand-in classes and loaded widgets (PySide6 does not own them)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def api() -> dict:
    assert SUBSET.is_file(), "Testing/slicer_api_subset.json is missing: run scripts/trim_slicer_api.py"
    return json.loads(SUBSET.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    """The module, its Qt mixins and the parts of its Qt-free MRML layer that run inside Slicer, as one
    tree: every Slicer name they call is checked against Slicer's sources (``core_scene`` and
    ``slice_rendering`` stand in for Slicer's application outside it and run for real against
    ``slicer-core`` in the tests)."""
    module = ast.parse(MODULE.read_text(encoding="utf-8"))
    for path in [*sorted(QT_LAYER.glob("*.py")), *(MRML_LAYER / name for name in MRML_IN_SLICER)]:
        module.body.extend(ast.parse(path.read_text(encoding="utf-8")).body)
    return module


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ui_xml() -> ET.Element:
    return ET.parse(UI).getroot()


@pytest.fixture(scope="module")
def ui_widgets(ui_xml) -> dict[str, str]:
    """objectName -> class of every widget in the .ui."""
    return {w.get("name"): w.get("class") for w in ui_xml.iter("widget")}


def slicer_annotation(setting) -> str:
    """The parameter node's annotation of a setting, as source: what ``parameterAnnotation`` in
    ``RLRegistrationMRML/parameter_node.py`` builds (``test_slicer_logic_inputs`` checks the real class against the same table)."""
    if setting.nodeClasses:
        classes = ", ".join(setting.nodeClasses)
        return classes if len(setting.nodeClasses) == 1 else f"Union[{classes}, None]"
    if setting.limits is not None:
        return f"Annotated[{setting.type.__name__}, WithinRange{tuple(setting.limits)}]"
    if setting.choices is not None:
        return f"Annotated[{setting.type.__name__}, Choice({list(setting.choices)})]"
    return setting.type.__name__


@pytest.fixture(scope="module")
def parameter_fields(module_tree) -> dict[str, ast.expr]:
    """Fields of the parameter node: name -> annotation. ``RLRegistration.py`` makes its
    ``parameterNodeWrapper`` class with ``RLRegistrationMRML.parameter_node.parameterNodeClass`` from the MRML
    layer's settings table, so the fields are the table's."""
    from RLRegistrationMRML.parameters import SETTINGS

    def calls(tree, name: str) -> list:
        return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and dotted(n.func) == name]

    assert calls(module_tree, "parameterNodeClass"), "RLRegistration.py makes no parameter node class"
    maker = ast.parse((MRML_LAYER / "parameter_node.py").read_text(encoding="utf-8"))
    assert calls(maker, "parameterNodeWrapper"), "parameter_node.py makes no parameterNodeWrapper class"
    assert "SETTINGS" in {n.id for n in ast.walk(maker) if isinstance(n, ast.Name)}
    return {setting.name: ast.parse(slicer_annotation(setting), mode="eval").body for setting in SETTINGS}


@pytest.fixture(scope="module")
def qt_app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from PySide6.QtWidgets import QApplication
    except ImportError as error:  # pragma: no cover - environment without PySide6
        pytest.skip(f"PySide6 is not importable: {error}")
    app = QApplication.instance()
    if app is None:
        try:
            app = QApplication(["test"])
        except Exception as error:  # pragma: no cover
            pytest.skip(f"PySide6 cannot create an offscreen QApplication: {error}")
    return app


# ---------------------------------------------------------------------------------------------- .ui


def test_ui_loads_with_stand_ins_and_has_every_ui_name(qt_app, tree, ui_xml, ui_widgets):
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QWidget

    custom = {c.findtext("class"): c.findtext("extends") for c in ui_xml.iter("customwidget")}
    assert custom, "the .ui declares its ctk/qMRML widgets in <customwidgets>"
    assert set(custom) == {cls for cls in ui_widgets.values() if cls.startswith(("ctk", "qMRML", "qSlicer"))}
    from PySide6.QtCore import qInstallMessageHandler

    loader = QUiLoader()
    for name in custom:  # stand-ins: plain QWidget subclasses carrying the class name
        stand_in = type(name, (QWidget,), {})
        _KEEP_ALIVE.append(stand_in)  # Qt calls back into these classes: they must outlive the widgets
        loader.registerCustomWidget(stand_in)
    messages: list[str] = []
    previous = qInstallMessageHandler(lambda mode, context, message: messages.append(message))
    file = QFile(str(UI))
    assert file.open(QIODevice.ReadOnly)
    try:
        widget = loader.load(file)
    finally:
        file.close()
        qInstallMessageHandler(previous)
    assert widget is not None, loader.errorString()
    _KEEP_ALIVE.append(widget)
    # the stand-ins lack the real signals/slots (checked against the listing in another test): only the
    # .ui connections may complain
    unexpected = [m for m in messages if "QObject::connect" not in m]
    assert not unexpected, unexpected
    assert type(widget).__name__ == "qMRMLWidget" and widget.objectName() == "RLRegistration"

    used = sorted(
        {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and dotted(node.value) == "self.ui"
        }
    )
    assert len(used) > 20
    missing = [name for name in used if name not in ui_widgets]
    assert not missing, f"self.ui names missing from the .ui: {missing}"
    for name in used:
        assert widget.findChild(QWidget, name) is not None, f"{name} not created by QUiLoader"


def test_ui_properties_of_custom_widgets_exist(api, ui_xml, qt_app):
    names = Names(api)
    problems = []
    checked = 0
    for w in ui_xml.iter("widget"):
        cls = w.get("class")
        for p in w.findall("property"):
            if p.get("stdset") == "0":
                continue  # dynamic property (SlicerParameterName), checked below
            checked += 1
            if cls in api["classes"]:
                ok = names.has_property(cls, p.get("name"))
            else:
                ok = qt_has_property(qt_class(cls), p.get("name"))
            if not ok:
                problems.append(f"{w.get('name')} ({cls}).{p.get('name')}")
        if cls == "qMRMLNodeComboBox":
            for s in w.iter("string"):
                if s.text and s.text.startswith("vtkMRML"):
                    assert s.text in api["classes"], f"nodeTypes of {w.get('name')}: unknown {s.text}"
    assert checked > 50
    assert not problems, f"properties the .ui sets that do not exist: {problems}"


def test_ui_connections_use_real_signals_and_slots(api, ui_xml, ui_widgets):
    connections = list(ui_xml.iter("connection"))
    assert connections
    names = Names(api)
    for c in connections:
        sender, receiver = ui_widgets[c.findtext("sender")], ui_widgets[c.findtext("receiver")]
        signal, slot = c.findtext("signal").split("(")[0], c.findtext("slot").split("(")[0]
        assert signal in api["classes"][sender]["signals"], f"{sender} has no signal {signal}"
        assert slot in api["classes"][receiver]["slots"] or names.has_method(receiver, slot)
    receivers = {c.findtext("receiver") for c in connections}
    combos = {name for name, cls in ui_widgets.items() if cls == "qMRMLNodeComboBox"}
    assert combos <= receivers, f"node selectors without the scene: {sorted(combos - receivers)}"


def test_slicer_parameter_names_match_the_parameter_node(ui_xml, parameter_fields):
    connectable = {  # guiConnectors.py: which widget can show which type
        "qMRMLNodeComboBox": lambda a: (
            isinstance(annotation_class(a), list) or str(annotation_class(a)).startswith("vtkMRML")
        ),
        "QSpinBox": lambda a: "int" in ast.unparse(a),
        "ctkSliderWidget": lambda a: "float" in ast.unparse(a) or "int" in ast.unparse(a),
        "QCheckBox": lambda a: ast.unparse(a) == "bool",
        "QComboBox": lambda a: "Choice" in ast.unparse(a),
    }
    seen = set()
    for w in ui_xml.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                field = p.findtext("string")
                assert field in parameter_fields, f"{w.get('name')}: no parameter '{field}'"
                assert field not in seen, f"parameter '{field}' bound twice"
                seen.add(field)
                assert connectable[w.get("class")](parameter_fields[field]), (
                    f"{w.get('name')} cannot show {field}"
                )
    # the ones without a widget binding are handled by the module by hand (labels with data)
    assert set(parameter_fields) - seen == {"policy", "device", "initialization", "quality", "pair"}


def test_ui_attribute_use_matches_widget_classes(api, tree, ui_widgets, qt_app):
    """self.ui.X.prop = ..., self.ui.X.method(...), self.ui.X.signal.connect(...) exist for X's class."""
    names = Names(api)
    problems = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
            continue
        if dotted(node.value.value) != "self.ui":
            continue
        widget, attr = node.value.attr, node.attr
        cls = ui_widgets.get(widget)
        if cls is None:
            continue  # reported by the .ui test
        if names.has_property(cls, attr) or names.has_method(cls, attr) or names.has_signal(cls, attr):
            continue
        problems.append(f"self.ui.{widget}.{attr} ({cls})")
    assert not problems, problems


# ---------------------------------------------------------------------------------------------- module


def test_imports_from_slicer_exist(api, tree):
    python = api["python"]
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.module or not node.module.startswith("slicer"):
            continue
        for alias in node.names:
            name = alias.name
            if node.module == "slicer":
                assert name in api["classes"], f"from slicer import {name}: unknown class"
            else:
                section = python[node.module]
                assert name in section["functions"] or name in section["classes"], (
                    f"from {node.module} import {name}"
                )


def test_slicer_util_and_slicer_names_exist(api, tree):
    util = api["python"]["slicer.util"]
    used_util, used_slicer = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = dotted(node)
            if name and name.startswith("slicer.util.") and name.count(".") == 2:
                used_util.add(node.attr)
            elif name and name.startswith("slicer.") and name.count(".") == 1:
                used_slicer.add(node.attr)
    assert {"loadUI", "childWidgetVariables", "arrayFromGridTransform", "tryWithErrorDisplay"} <= used_util
    missing = sorted(n for n in used_util if n not in util["functions"] and n not in util["classes"])
    assert not missing, f"slicer.util names not in Slicer: {missing}"
    unknown = sorted(n for n in used_slicer - SLICER_RUNTIME if n not in api["classes"])
    assert not unknown, f"slicer.X names that are not Slicer classes: {unknown}"
    for node in ast.walk(tree):  # slicer.modules.<name>.logic(): only known core modules
        name = dotted(node) if isinstance(node, ast.Attribute) else None
        if name and name.startswith("slicer.modules.") and name.count(".") == 2:
            assert node.attr in MODULE_LOGICS, f"slicer.modules.{node.attr}: add its logic class to the test"


def test_mrml_and_vtk_methods_exist_on_inferred_classes(api, tree, parameter_fields):
    names = Names(api)
    problems, checked, unresolved = [], 0, set()
    all_methods = {m for entry in api["classes"].values() for m in entry["methods"]}
    imported = {  # module names (qt, session, PyTorchUtils, ...): calls on them are constructors/functions
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    for _cls, function in module_functions(tree):
        walker = TypeWalker(parameter_fields, function)
        for node in ast.walk(function):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver, method = node.func.value, node.func.attr
            owner = walker.type_of(receiver)
            if owner == PARAMETER_NODE:
                assert method in WRAPPER_METHODS, f"parameter node has no method {method}"
                continue
            if owner == "PyTorchUtilsLogic":
                assert method in PYTORCHUTILS_LOGIC, f"PyTorchUtilsLogic.{method} not verified"
                continue
            if owner is None:
                base = dotted(receiver)
                if (
                    method[:1].isupper()
                    and base not in ("self", "self.logic")
                    and (base or "").split(".")[0] not in imported
                ):
                    unresolved.add(method)  # VTK-style call on a receiver the walk cannot type
                continue
            owners = owner if isinstance(owner, list) else [owner]
            checked += 1
            for cls in owners:
                if not names.exists(cls):
                    problems.append(f"unknown class {cls} (line {node.lineno})")
                elif not names.has_method(cls, method):
                    problems.append(f"{cls}.{method} (line {node.lineno})")
    assert checked > 60, checked
    assert not problems, problems
    # calls on receivers of unknown class must at least be a method of some class the module uses
    # (or of the SimpleITK transforms the library returns)
    import SimpleITK as sitk

    vtk_names = {
        m
        for cls in (
            "vtkImageData",
            "vtkGridTransform",
            "vtkGeneralTransform",
            "vtkMatrix4x4",
            "vtkStringArray",
        )
        for m in dir(vtk_class(cls))
    }
    sitk_names = set(dir(sitk.AffineTransform)) | set(dir(sitk.CompositeTransform)) | set(dir(sitk.Image))
    not_found = sorted(m for m in unresolved if m not in all_methods | vtk_names | sitk_names)
    assert not not_found, f"VTK-style calls that exist nowhere: {not_found}"


def test_scripted_module_base_methods_exist(api, tree):
    bases_api = api["python"]["slicer.ScriptedLoadableModule"]["classes"]
    mixin = set(api["python"]["slicer.util"]["classes"]["VTKObservationMixin"])
    own_methods = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            own_methods[node.name] = {i.name for i in node.body if isinstance(i, ast.FunctionDef)}
    problems = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [dotted(b) for b in node.bases]
        slicer_bases = [b for b in bases if b in bases_api]
        if not slicer_bases:
            continue
        allowed = set(own_methods[node.name])
        for base in bases:  # methods of the module's own mixins (e.g. the MRML layer's workflow tests)
            allowed |= own_methods.get(base, set())
        for b in slicer_bases:
            allowed |= set(bases_api[b])
        if "VTKObservationMixin" in bases:
            allowed |= mixin
        if "ScriptedLoadableModuleTest" in bases:
            allowed |= {n for n, _ in inspect.getmembers(unittest.TestCase)}
        for call in ast.walk(node):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
                continue
            target = dotted(call.func.value)
            if target == "self" and call.func.attr not in allowed:
                problems.append(f"{node.name}: self.{call.func.attr}()")
            if target in bases_api and call.func.attr not in bases_api[target]:
                problems.append(f"{node.name}: {target}.{call.func.attr}()")
            if isinstance(call.func.value, ast.Call) and dotted(call.func.value.func) == "super":
                if not any(call.func.attr in bases_api[b] for b in slicer_bases):
                    problems.append(f"{node.name}: super().{call.func.attr}()")
    assert not problems, problems


def test_vtk_and_qt_names_exist(tree, qt_app):
    import vtk

    for node in ast.walk(tree):
        name = dotted(node) if isinstance(node, ast.Attribute) else None
        if not name:
            continue
        parts = name.split(".")
        if parts[0] == "vtk" and len(parts) >= 2 and parts[1] != "util":
            obj = vtk
            for part in parts[1:]:
                assert hasattr(obj, part), f"vtk has no {name}"
                obj = getattr(obj, part)
        if parts[0] == "qt" and len(parts) >= 2:
            obj = qt_class(parts[1])
            assert obj is not None, f"Qt has no {parts[1]}"
            for part in parts[2:]:
                assert hasattr(obj, part), f"Qt has no {name}"
                obj = getattr(obj, part)


def test_subset_matches_the_full_listing(api):
    """The committed subset is a faithful, current excerpt (only where the full listing is at hand)."""
    if not FULL.is_file():
        pytest.skip(f"full listing not present at {FULL}")
    import importlib.util

    spec = importlib.util.spec_from_file_location("trim_slicer_api", ROOT / "scripts" / "trim_slicer_api.py")
    trim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trim)
    fresh = trim.build_subset(json.loads(FULL.read_text(encoding="utf-8")))
    assert fresh == api, "Testing/slicer_api_subset.json is stale: run scripts/trim_slicer_api.py"
