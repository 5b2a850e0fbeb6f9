"""Everything a registration does to a Slicer scene, Qt-free: one implementation for every front-end.

:class:`RegistrationSceneLogic` is one object made of four parts, one file each:

* :mod:`.scene_inputs` reads the inputs from MRML nodes (volumes, label maps, segmentations, masks, the
  moving volume's parent transforms) and refuses what cannot be registered, before anything is created;
* :mod:`.scene_run` builds the session from the panel's ``RunSpec``, runs it on the worker thread of
  ``RLRegistrationLib.registration.worker`` and drains its messages on the calling (main) thread;
* :mod:`.scene_outputs` keeps the output nodes up to date: the transform hierarchy of the result, the
  warped volume, the overlays and their colours, the slice view layers and the field display; cleanup on
  cancel, on error and when the scene closes;
* :mod:`.scene_export` applies, hardens and saves the result.

It needs Slicer's MRML classes (inside Slicer, or the ``slicer-core`` wheel outside it) and never Qt: the
Slicer panel (``RLRegistration.py``) and the browser app drive it through
:class:`~RLRegistrationMRML.panel_controller.PanelController`.

**Transform hierarchy.** The result ``T(x) = A(x + u(x))`` (fixed point -> moving point, docs/ARCHITECTURE.md §3) is
two nodes, both tagged with the fixed and moving volumes::

    output parent (optional) <- outputTransform (grid: x + u(x)) <- outputLinearTransform (linear: A)
                                                                      <- moving volume (after "apply")

A node's "transform from parent" maps parent coordinates to its own, so a world point ``x`` reaches the
moving volume's coordinates as ``A(x + u(x))``. The grid node, nearest to the world, is what the field
display shows: the deformable refinement alone, not the pre-alignment. Harden and the ``.h5`` give the same
``T``. The pre-alignment includes the moving volume's own parent transform when it initialized the run.

``params`` is the Slicer panel's parameter node or a :class:`~RLRegistrationMRML.parameters.RegistrationParameters`.
Errors a user can cause raise ``ValueError``/``RuntimeError`` (or the library's ``InputError``) with a
message meant for the panel.
"""

from __future__ import annotations

import slicer

from .scene_export import SceneExport, pointsFromWorld, useLinearInterpolation
from .scene_inputs import SceneInputs
from .scene_outputs import SceneOutputs
from .scene_run import RunUpdate, SceneRun, runSpec

__all__ = ["RegistrationSceneLogic", "RunUpdate", "pointsFromWorld", "runSpec", "useLinearInterpolation"]


class RegistrationSceneLogic(SceneInputs, SceneRun, SceneOutputs, SceneExport):
    """Runs registrations on a worker thread and keeps the output nodes of ``scene`` up to date.

    All methods run on the thread that owns the scene (Slicer's main thread). ``runBlocking(params, steps)``
    registers and returns the step reports, for scripts and tests.
    """

    def __init__(self, scene=None) -> None:
        self._scene = scene
        self.session = None
        self.plan = None
        self.worker = None
        self.movingImage = None
        self.createdNodeIDs = []
        self.fullResolutionStep = None
        self.displayedStep = None
        self.deviceDescription = ""
        self._fixedImage = None
        self._pendingFinal = None
        self._layersPending = False
        self._closeObservers = []
        self.weightMapRangeText = "—"
        self.uncertaintyRangeText = "—"
        self.magnitudeRangeText = "—"

    @property
    def scene(self):
        """The scene the logic works on (Slicer's own scene unless one was given)."""
        return self._scene if self._scene is not None else slicer.mrmlScene
