"""RLRegistration core library: step-wise deformable registration of 3D images (no Slicer import here).

The floors, each importing only those below it (``docs/ARCHITECTURE.md``):

* ``errors``, ``devices`` - what every floor shares;
* ``fields`` - grids, unit conversions, warping, similarity, regularizers, metrics;
* ``io`` - reading, checking and writing images and transforms; Slicer's arrays;
* ``synthesis`` - synthetic images and pairs from label maps;
* ``policies`` - the policy interface, test-time optimization, learned policies, the registry;
* ``registration`` - a run: ``RunSpec``, presets, pre-alignment, the step-wise session, a worker thread;
* ``training`` - training learned policies; ``frontends`` - the ``rlreg`` command, QC, panel state.

The names most scripts need are here, imported on first use::

    from RLRegistrationLib import RunSpec, read_image, register
"""

from ._aliases import install as _install_aliases
from ._lazy import lazy_exports

__version__ = "0.1.0"

_install_aliases()

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "RunSpec": "registration.run_spec",
        "build_run": "registration.run_spec",
        "register": "registration.run_spec",
        "read_image": "io.imaging",
        "read_label_map": "io.imaging",
        "RegistrationSession": "registration.session",
        "RegistrationResult": "registration.session",
        "SessionOptions": "registration.session",
        "make_policy": "policies.registry",
        "available_policies": "policies.registry",
        "prealign": "registration.prealign",
        "write_transform": "io.export",
    },
)
