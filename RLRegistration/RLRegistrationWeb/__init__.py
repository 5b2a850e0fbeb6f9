"""RLRegistration in a browser (``rlreg view``): the registration panel on Slicer's own rendering.

A trame / trame-slicer web application on the shared MRML layer (``RLRegistrationMRML``): the same scene
logic and panel controller (``RLRegistrationMRML.panel_controller``), worker thread
(``RLRegistrationLib.registration.worker``) and panel state machine (``RLRegistrationLib.frontends.panel_state``)
as the Slicer module. Its extra dependencies come with
``pip install -e ".[web]"``; importing this package needs none of them (only :mod:`.app` and the modules it
uses do), so :func:`missing_dependencies` can say what is missing.
"""

from __future__ import annotations

import importlib.util

WEB_MODULES = ("trame", "trame_slicer", "trame_vuetify", "trame_rca", "slicer", "LayerDMLib")
INSTALL_COMMAND = 'pip install -e ".[web]"'


def missing_dependencies() -> list[str]:
    """The web extra's modules that cannot be imported here (empty when ``rlreg view`` can run)."""
    missing = []
    for name in WEB_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing
