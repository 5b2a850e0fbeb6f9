"""A small static walk of the Slicer module's source for ``test_slicer_module_structure``: where names of
Slicer, VTK and Qt are looked up (``Names``: the trimmed Slicer listing, the real ``vtk`` package,
PySide6) and how the class of an expression inside one function is inferred (``TypeWalker``:
flow-insensitive, small on purpose)."""

from __future__ import annotations

import ast
import builtins

# ``slicer.modules.<name>.logic()`` -> logic class (names of core loadable modules)
MODULE_LOGICS = {
    "segmentations": "vtkSlicerSegmentationsModuleLogic",
    "transforms": "vtkSlicerTransformLogic",
}

# return types of calls the walk follows (receiver class -> method -> class); "*" = any receiver
RETURN_TYPES = {
    "*": {
        "GetParentTransformNode": "vtkMRMLTransformNode",
        "GetSegmentation": "vtkSegmentation",
        "GetNthSegment": "vtkSegment",
        "GetImageData": "vtkImageData",
        "GetDisplacementGrid": "vtkImageData",
        "GetGridDirectionMatrix": "vtkMatrix4x4",
        "GetNodeByID": "vtkMRMLNode",
        "GetFirstNodeByClass": "vtkMRMLNode",
    },
    "vtkMRMLScalarVolumeNode": {"GetDisplayNode": "vtkMRMLScalarVolumeDisplayNode"},
    "vtkMRMLGridTransformNode": {
        "GetDisplayNode": "vtkMRMLTransformDisplayNode",
        "GetTransformFromParent": "vtkOrientedGridTransform",
    },
    "vtkMRMLTransformNode": {
        "GetDisplayNode": "vtkMRMLTransformDisplayNode",
        "GetTransformFromParent": "vtkAbstractTransform",
    },
}
UTIL_RETURNS = {
    "loadVolume": "vtkMRMLScalarVolumeNode",
    "loadLabelVolume": "vtkMRMLLabelMapVolumeNode",
    "loadTransform": "vtkMRMLTransformNode",
    "loadSegmentation": "vtkMRMLSegmentationNode",
}
PARAMETER_NODE = "<parameter node>"


def qt_class(name: str):
    """The PySide6 class of a Qt class name (QtWidgets, QtCore or QtGui), or None."""
    from PySide6 import QtCore, QtGui, QtWidgets

    for module in (QtWidgets, QtCore, QtGui):
        if hasattr(module, name):
            return getattr(module, name)
    return None


def qt_has_property(cls, name: str) -> bool:
    return cls is not None and cls.staticMetaObject.indexOfProperty(name) >= 0


def vtk_class(name: str):
    import vtk

    return getattr(vtk, name, None)


class Names:
    """Looks names up in the listing, the real vtk package and PySide6."""

    def __init__(self, api: dict):
        self.api = api
        self.classes = api["classes"]

    def exists(self, cls: str) -> bool:
        return cls in self.classes or vtk_class(cls) is not None or qt_class(cls) is not None

    def has_method(self, cls: str, name: str) -> bool:
        entry = self.classes.get(cls)
        if entry is not None:
            if name in entry["methods"] or name in entry.get("signals", []) or name in entry.get("slots", []):
                return True
            outside = entry.get("outside_base")
            return bool(outside) and self.has_method(outside, name)
        if vtk_class(cls) is not None:
            return hasattr(vtk_class(cls), name)
        if qt_class(cls) is not None:
            return hasattr(qt_class(cls), name)
        return False

    def has_property(self, cls: str, name: str) -> bool:
        entry = self.classes.get(cls)
        if entry is not None:
            return name in entry.get("properties", []) or qt_has_property(
                qt_class(entry["outside_base"]), name
            )
        return qt_has_property(qt_class(cls), name)

    def has_signal(self, cls: str, name: str) -> bool:
        entry = self.classes.get(cls)
        if entry is not None:
            return name in entry.get("signals", []) or self.has_signal(entry["outside_base"], name)
        q = qt_class(cls)
        if q is None:
            return False
        mo = q.staticMetaObject
        return any(
            mo.method(i).name().data().decode() == name and mo.method(i).methodType().name == "Signal"
            for i in range(mo.methodCount())
        )


def dotted(node: ast.AST) -> str | None:
    """'a.b.c' of a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def annotation_class(annotation: ast.expr | None) -> str | list[str] | None:
    """Class name(s) of an annotation: 'vtkMRMLX', vtkMRMLX, Union[A, B], Annotated[T, ...]."""
    if annotation is None:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return annotation.value
    if isinstance(annotation, ast.Name):  # builtins (str, int, ...) are not Slicer classes
        return None if annotation.id in dir(__builtins__) or annotation.id in dir(builtins) else annotation.id
    if isinstance(annotation, ast.Subscript):
        base = dotted(annotation.value)
        inner = annotation.slice
        if base == "Union" and isinstance(inner, ast.Tuple):  # Union[A, B, None]: the classes A and B
            return [c for c in (annotation_class(e) for e in inner.elts) if c is not None]
        if base == "Annotated" and isinstance(inner, ast.Tuple):
            return annotation_class(inner.elts[0])
    return None


class TypeWalker:
    """Infers the Slicer/VTK class of expressions inside one function (flow-insensitive, small on purpose)."""

    def __init__(self, parameter_fields: dict[str, ast.expr], function: ast.FunctionDef | None = None):
        self.fields = parameter_fields
        self.scope: dict[str, object] = {}
        if function is not None:
            for arg in function.args.args + function.args.kwonlyargs:
                cls = annotation_class(arg.annotation)
                if arg.arg == "params":
                    cls = PARAMETER_NODE
                if cls is not None:
                    self.scope[arg.arg] = cls
            for _ in range(3):  # a few passes so that assignments from assigned names resolve
                for node in ast.walk(function):
                    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                        cls = annotation_class(node.annotation)
                        if cls is not None:
                            self.scope[node.target.id] = cls
                    elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                        target = node.targets[0]
                        if isinstance(target, ast.Name):
                            cls = self.type_of(node.value)
                            if cls is not None:
                                self.scope[target.id] = cls

    def type_of(self, node: ast.AST):
        if isinstance(node, ast.Name):
            return self.scope.get(node.id)
        name = dotted(node)
        if name in ("slicer.mrmlScene", "self.scene"):  # the MRML layer's scene is Slicer's by default
            return "vtkMRMLScene"
        if name == "slicer.app":
            return "qSlicerApplication"
        if name in ("self._parameterNode",):
            return PARAMETER_NODE
        if isinstance(node, ast.Attribute):
            owner = self.type_of(node.value)
            if owner == PARAMETER_NODE and node.attr in self.fields:
                return annotation_class(self.fields[node.attr])
            return None
        if isinstance(node, ast.Call):
            func = node.func
            fname = dotted(func)
            if (
                fname
                in (
                    "slicer.mrmlScene.AddNewNodeByClass",
                    "self.scene.AddNewNodeByClass",
                    "scene.AddNewNodeByClass",
                )
                and node.args
            ):
                arg = node.args[0]
                return arg.value if isinstance(arg, ast.Constant) else None
            if fname and fname.startswith("slicer.util.") and fname.split(".")[-1] in UTIL_RETURNS:
                return UTIL_RETURNS[fname.split(".")[-1]]
            if fname and fname.startswith("slicer.modules.") and fname.endswith(".logic"):
                return MODULE_LOGICS.get(fname.split(".")[2])
            if fname and fname.count(".") == 1 and fname.split(".")[0] in ("slicer", "vtk"):
                return fname.split(".")[1]  # slicer.vtkX() / vtk.vtkX()
            if fname == "PyTorchUtils.PyTorchUtilsLogic":
                return "PyTorchUtilsLogic"
            if isinstance(func, ast.Attribute):
                if func.attr == "getParameterNode":
                    return PARAMETER_NODE
                owner = self.type_of(func.value)
                for key in ([owner] if isinstance(owner, str) else owner or []) + ["*"]:
                    if func.attr in RETURN_TYPES.get(key, {}):
                        return RETURN_TYPES[key][func.attr]
        return None


def module_functions(tree: ast.Module):
    """(class name or None, function) for every function of the module."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield None, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    yield node.name, item
