"""Slicer's real core libraries for the test suite: the scene and logics a Slicer application sets up.

``slicer-core`` (Kitware's wheel of Slicer's Qt-free core) gives every ``vtkMRML*`` class and the module
logics; Slicer's own Python layer (``parameterNodeWrapper``, ``ScriptedLoadableModule``, ``i18n``) and its
file colour tables come from ``../shared/slicer-python`` (test material, never copied into the repository).
:func:`start` builds what ``qSlicerCoreApplication`` builds (scene, application logic, colour logic with the
default and file colour tables, the Volumes / Transforms / Segmentations / SubjectHierarchy logics) and sets
``slicer.mrmlScene``, ``slicer.app`` and ``slicer.modules`` to objects made of those real logics.

Stand-ins exist only for what cannot exist without Slicer's Qt application:

* ``qt``: PySide6's QtCore/QtGui/QtWidgets under one name (PythonQt's ``qt``), enough for the module-level
  names Slicer's Python layer and ``RLRegistration.py`` touch;
* ``ctk``: an empty module (CTK widgets are created only by widget code, which cannot run here);
* ``slicer.app.coreIOManager()``: the file types the tests load and save (volumes, label maps, transforms)
  through the real MRML storage nodes and ``vtkSlicerVolumesLogic`` -- what ``qSlicerCoreIOManager``
  dispatches to in Slicer.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # slicer-core may be absent (the tests then skip)
    from RLRegistrationMRML.core_scene import CoreScene

ROOT = Path(__file__).resolve().parents[1]
SHARED_SLICER_PYTHON = ROOT.parent / "shared" / "slicer-python"
# Slicer's Qt classes that its Python layer names at import time (annotations, isinstance checks)
QT_WIDGET_CLASSES = (
    "qMRMLNodeComboBox",
    "qMRMLSliderWidget",
    "qMRMLSpinBox",
    "qMRMLRangeWidget",
    "qMRMLWidget",
    "qMRMLUtils",
    "qMRMLScreenShotDialog",
    "qSlicerWidget",
    "qSlicerScriptedLoadableModule",
    "qSlicerScriptedLoadableModuleWidget",
)
SLICER_CORE_VERSION = "5.11.0.6"  # the version trame-slicer 2.0 supports (pyproject's test and web extras)


def unavailable_reason() -> str | None:
    """Why the real Slicer core cannot be started here (None when it can)."""
    try:
        import slicer  # noqa: F401
        from slicer import vtkMRMLScene  # noqa: F401
    except ImportError as error:
        return f"slicer-core is not installed ({error}); pip install -e '.[test]'"
    if not (SHARED_SLICER_PYTHON / "Base" / "Python" / "slicer" / "parameterNodeWrapper").is_dir():
        return (
            f"Slicer's Python layer is not at {SHARED_SLICER_PYTHON} (../shared is absent in a user's clone)"
        )
    return None


def _install_qt_and_ctk() -> None:
    if "qt" not in sys.modules:
        from PySide6 import QtCore, QtGui, QtWidgets

        qt = types.ModuleType("qt")
        for source in (QtCore, QtGui, QtWidgets):
            for name in dir(source):
                if not name.startswith("_"):
                    setattr(qt, name, getattr(source, name))
        sys.modules["qt"] = qt
    if "ctk" not in sys.modules:
        sys.modules["ctk"] = _stand_in_module("ctk")


def _stand_in_module(name: str) -> types.ModuleType:
    """A module whose every attribute is a distinct placeholder class (widget classes named in annotations
    and ``isinstance`` checks of Slicer's GUI connectors; no instance of them is ever made here)."""
    module = types.ModuleType(name)
    classes: dict[str, type] = {}

    def __getattr__(attribute: str) -> type:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        if attribute not in classes:
            classes[attribute] = type(attribute, (), {"__module__": name})
        return classes[attribute]

    module.__getattr__ = __getattr__
    return module


class CoreIOManager:
    """The part of ``qSlicerCoreIOManager`` the module and its tests use, on real MRML storage nodes."""

    def __init__(self, runtime: CoreScene):
        self.runtime = runtime

    def fileType(self, filename) -> str:
        name = str(filename).lower()
        return "TransformFile" if name.endswith((".h5", ".hdf5", ".tfm", ".txt")) else "VolumeFile"

    def loadNodes(self, filetype, properties, loadedNodes, userMessages) -> bool:
        import slicer

        path = properties["fileName"]
        scene = self.runtime.scene
        if filetype == "VolumeFile":
            name = properties.get("name") or Path(path).name.split(".")[0]
            flags = 1 if properties.get("labelmap") else 0
            node = self.runtime.volumes_logic.AddArchetypeVolume(path, name, flags)
            if node is not None and properties.get("show", True) and not properties.get("labelmap"):
                slicer.util.setSliceViewerLayers(background=node)
        elif filetype == "TransformFile":
            # qSlicerTransformsReader: the node class follows the file's content (linear, grid, ...)
            node = self.runtime.transforms_logic.AddTransform(path, scene)
        else:
            raise ValueError(f"file type {filetype} is not available without Slicer's Qt application")
        if node is None:
            userMessages.AddMessage(0, f"could not read {path}")
            return False
        loadedNodes.AddItem(node)
        return True

    def extractKnownExtension(self, filename, node) -> str:
        name = str(filename).lower()
        for extension in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha", ".h5", ".tfm"):
            if name.endswith(extension):
                return extension
        return os.path.splitext(name)[1]

    def fileWriterExtensions(self, node) -> list[str]:
        if node.IsA("vtkMRMLTransformNode"):
            return ["ITK transform (.h5)", "ITK transform (.tfm)"]
        return ["NIfTI (.nii.gz)", "NRRD (.nrrd)", "NIfTI (.nii)", "MetaImage (.mha)"]

    def exportNodes(self, nodeIDs, fileNames, properties, hardenTransform, userMessages) -> bool:
        scene = self.runtime.scene
        ok = True
        for nodeID, fileName in zip(nodeIDs, fileNames):
            node = scene.GetNodeByID(nodeID)
            storage = node.CreateDefaultStorageNode()
            storage.SetFileName(str(fileName))
            ok = bool(storage.WriteData(node)) and ok
        return ok


class CoreApplication:
    """``slicer.app`` of a headless run: the scene, its logics, a temporary folder and settings."""

    def __init__(self, runtime: CoreScene):
        self._runtime = runtime
        self.temporaryPath = tempfile.mkdtemp(prefix="rlreg-slicer-")
        self._io = CoreIOManager(runtime)
        self.commandOptions = types.SimpleNamespace(noMainWindow=True)
        self.testingEnabled = True

    def mrmlScene(self):
        return self._runtime.scene

    def applicationLogic(self):
        return self._runtime.app_logic

    def coreIOManager(self) -> CoreIOManager:
        return self._io

    def processEvents(self, *args) -> None:
        """Nothing queued without a Qt event loop: the worker posts to a queue the Logic drains."""

    def userSettings(self):
        return {"Developer/SelfTestDisplayMessageDelay": 0}


def _module(logic) -> types.SimpleNamespace:
    return types.SimpleNamespace(logic=lambda: logic)


_RUNTIME: CoreScene | None = None


def start() -> CoreScene:
    """Start (once per process) Slicer's core as ``qSlicerCoreApplication`` does; returns the runtime."""
    global _RUNTIME
    if _RUNTIME is not None:
        return _RUNTIME
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    _install_qt_and_ctk()
    import slicer
    import slicer.util  # the wheel's own copy of Slicer's slicer/util.py

    sys.path.insert(0, str(ROOT / "RLRegistration"))  # the module's folder, as Slicer's module path

    widgets = _stand_in_module("slicer")  # PythonQt classes of Slicer's GUI, named by the Python layer
    for name in QT_WIDGET_CLASSES:
        if not hasattr(slicer, name):
            setattr(slicer, name, getattr(widgets, name))
    python_layer = str(SHARED_SLICER_PYTHON / "Base" / "Python" / "slicer")
    if python_layer not in slicer.__path__:
        slicer.__path__.append(python_layer)

    from RLRegistrationMRML.core_scene import create_core_scene

    core = create_core_scene(color_files=SHARED_SLICER_PYTHON / "Base" / "Logic" / "Resources" / "ColorFiles")
    scene = core.scene

    slicer.mrmlScene = scene
    slicer.app = CoreApplication(core)
    slicer.modules = types.SimpleNamespace(
        volumes=_module(core.volumes_logic),
        transforms=_module(core.transforms_logic),
        segmentations=_module(core.segmentations_logic),
        subjecthierarchy=_module(core.subject_hierarchy_logic),
        colors=_module(core.colors_logic),
    )
    _RUNTIME = core
    return core
