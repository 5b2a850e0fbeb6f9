"""The Slicer parameter node of the panel, made from the settings table (``parameters.SETTINGS``).

Only the Slicer module (``RLRegistration.py``) calls :func:`parameterNodeClass`: Slicer's
``parameterNodeWrapper`` is part of the application's Python layer, which the browser app does without (it
uses ``parameters.RegistrationParameters``).
"""

from __future__ import annotations

from typing import Annotated, Union

import slicer


def parameterAnnotation(setting):
    """The parameter node's type of a setting: its MRML class (a union with None when it may hold one of
    several), or the type with the setting's range (``WithinRange``) or choices (``Choice``)."""
    from slicer.parameterNodeWrapper import Choice, WithinRange

    if setting.isNode:
        classes = tuple(getattr(slicer, name) for name in setting.nodeClasses)
        # None in the unions: the wrapper must be able to write the empty default (else getParameterNode raises)
        return classes[0] if len(classes) == 1 else Union[(*classes, type(None))]
    if setting.limits is not None:
        return Annotated[setting.type, WithinRange(*setting.limits)]
    if setting.choices is not None:
        return Annotated[setting.type, Choice(list(setting.choices))]
    return setting.type


def parameterNodeClass(moduleName: str):
    """``@parameterNodeWrapper`` class of the panel, made from the settings table (one field per setting,
    its default; node fields default to None), defined as if in ``moduleName``. Saved with the scene: a
    reloaded scene restores the panel."""
    from slicer.parameterNodeWrapper import parameterNodeWrapper

    from .parameters import SETTINGS

    fields = {setting.name: setting.default for setting in SETTINGS if not setting.isNode}
    lines = "\n".join(f"{setting.name} - {setting.doc}" for setting in SETTINGS)
    namespace = {
        "__annotations__": {setting.name: parameterAnnotation(setting) for setting in SETTINGS},
        "__doc__": "Everything the panel shows (RLRegistrationMRML.parameters.SETTINGS):\n\n" + lines,
        "__module__": moduleName,
        **fields,
    }
    return parameterNodeWrapper(type("RLRegistrationParameterNode", (), namespace))
