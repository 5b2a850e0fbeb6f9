"""Shared fixtures of the RLRegistrationLib pytest suite: small deterministic grids, images and fields.

Everything here is tiny (a few thousand voxels) and seeded, so tests stay fast and reproducible.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

# helper modules whose asserts pytest should explain like a test's
pytest.register_assert_rewrite("bad_inputs_support")

try:  # the package is pip-installable (pip install -e .); fall back to the source tree
    import RLRegistrationLib  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RLRegistration"))
    import RLRegistrationLib  # noqa: F401

from RLRegistrationLib.fields.geometry import Grid  # noqa: E402


def rotation_matrix(degrees_x: float, degrees_y: float, degrees_z: float) -> np.ndarray:
    """Proper rotation Rz @ Ry @ Rx (angles in degrees)."""
    ax, ay, az = np.deg2rad([degrees_x, degrees_y, degrees_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_grid(size, spacing, origin, direction=None) -> Grid:
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    return Grid(
        tuple(int(s) for s in size),
        tuple(float(s) for s in spacing),
        tuple(float(o) for o in origin),
        tuple(float(d) for d in direction.ravel()),
    )


def image_on_grid(array_kji: np.ndarray, grid: Grid) -> sitk.Image:
    """SimpleITK image of an array in (k, j, i) order placed on ``grid``."""
    image = sitk.GetImageFromArray(np.asarray(array_kji))
    assert image.GetSize() == grid.size
    return grid.apply_to(image)


def blob_array(shape, seed: int = 0, blobs: int = 12, sigma=(2.0, 4.0), margin: float = 0.2) -> np.ndarray:
    """Smooth textured volume (k, j, i): a sum of random Gaussian blobs, float32, values in ~[0, 2]."""
    rng = np.random.default_rng(seed)
    shape_arr = np.asarray(shape, dtype=np.float64)
    index = np.indices(shape, dtype=np.float64)
    out = np.zeros(shape, dtype=np.float64)
    for _ in range(blobs):
        centre = rng.uniform(margin, 1.0 - margin, 3) * (shape_arr - 1)
        s = rng.uniform(*sigma)
        r2 = ((index - centre.reshape(3, 1, 1, 1)) ** 2).sum(axis=0)
        out += rng.uniform(0.3, 1.0) * np.exp(-r2 / (2 * s * s))
    return out.astype(np.float32)


class SinusoidField:
    """Smooth deterministic vector field in voxel units, a sum of low-frequency plane waves.

    ``at(ijk)`` evaluates it exactly anywhere (continuous index, channels (i, j, k)); ``tensor()`` samples
    it on the grid as a (1, 3, D, H, W) float32 tensor. Every component is bounded by ``amplitude``.
    """

    def __init__(self, shape, amplitude: float, seed: int, modes: int = 3, shortest_wavelength: float = 24):
        g = torch.Generator().manual_seed(seed)
        self.shape = tuple(int(s) for s in shape)
        max_frequency = 2 * np.pi / shortest_wavelength
        self.freq = (torch.rand(3, modes, 3, generator=g, dtype=torch.float64) * 2 - 1) * max_frequency
        self.phase = torch.rand(3, modes, generator=g, dtype=torch.float64) * 2 * np.pi
        self.coef = (torch.rand(3, modes, generator=g, dtype=torch.float64) * 2 - 1) * amplitude / modes

    def at(self, ijk: torch.Tensor) -> torch.Tensor:
        """Field at continuous indices ``ijk`` (..., 3) -> (..., 3) float64."""
        ijk = ijk.double()
        arg = torch.einsum("...d,cmd->...cm", ijk, self.freq) + self.phase
        return (self.coef * torch.sin(arg)).sum(-1)

    def index_points(self) -> torch.Tensor:
        """(D, H, W, 3) continuous indices (i, j, k) of the grid voxels, float64."""
        k, j, i = (torch.arange(n, dtype=torch.float64) for n in self.shape)
        kk, jj, ii = torch.meshgrid(k, j, i, indexing="ij")
        return torch.stack([ii, jj, kk], dim=-1)

    def tensor(self) -> torch.Tensor:
        return self.at(self.index_points()).permute(3, 0, 1, 2)[None].float().contiguous()


def edit_card(folder: Path, **changes) -> None:
    """Replace top-level entries of a model folder's ``card.json`` (to make it wrong on purpose)."""
    import json

    path = folder / "card.json"
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


def random_policy_state(shape=(16, 16, 16), seed: int = 0, step_index: int = 0):
    """A policy state of random fixed and moving images (moving = warped, zero field), seeded."""
    from RLRegistrationLib.policies.base import PolicyState

    g = torch.Generator().manual_seed(seed)
    fixed, moving = torch.rand((1, 1, *shape), generator=g), torch.rand((1, 1, *shape), generator=g)
    return PolicyState(fixed, moving, moving, torch.zeros(1, 3, *shape), step_index)


# the helpers above, as fixtures (test modules do not import conftest)
def _helper_fixture(name: str, helper):
    @pytest.fixture(name=name)
    def fixture():
        return helper

    return fixture


rotation_matrix_fixture = _helper_fixture("rotation_matrix", rotation_matrix)
make_grid_fixture = _helper_fixture("make_grid", make_grid)
image_on_grid_fixture = _helper_fixture("image_on_grid", image_on_grid)
blob_array_fixture = _helper_fixture("blob_array", blob_array)
sinusoid_field_fixture = _helper_fixture("sinusoid_field", SinusoidField)
edit_card_fixture = _helper_fixture("edit_card", edit_card)
policy_state_fixture = _helper_fixture("policy_state", random_policy_state)


@pytest.fixture
def small_pair(tmp_path):
    """(fixed, moving) NIfTI files in ``tmp_path``: 24x20x18 blob images at 2 mm, moving shifted a voxel."""
    grid = make_grid((24, 20, 18), (2.0, 2.0, 2.0), (-20.0, 10.0, 5.0))
    fixed = image_on_grid(blob_array(grid.shape, seed=3), grid)
    moving = image_on_grid(np.roll(blob_array(grid.shape, seed=3), 1, axis=1), grid)
    paths = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz"
    for image, path in zip((fixed, moving), paths):
        sitk.WriteImage(image, str(path))
    return paths


@pytest.fixture
def restore_policy_registry():
    """Models registered by a test point into its tmp folder: forget them afterwards."""
    from RLRegistrationLib.policies import registry

    saved = dict(registry._entries())  # the models folder discovered first: it is part of what is restored
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)


@pytest.fixture
def fresh_registry(monkeypatch):
    """The policy registry holding ``tto`` alone, for a test to register models into (restored afterwards)."""
    from RLRegistrationLib.policies import registry

    monkeypatch.setattr(registry, "_REGISTRY", {"tto": registry._REGISTRY["tto"]})
    monkeypatch.setattr(registry, "_DISCOVERED", [True])
    return registry


@pytest.fixture(scope="module")
def module():
    """``RLRegistration.py`` imported on the started Slicer core (as Slicer's module loader does); tests
    that use it skip themselves where the core is unavailable (``slicer_runtime.unavailable_reason``)."""
    import slicer_runtime

    slicer_runtime.start()
    sys.path.insert(0, str(slicer_runtime.ROOT / "RLRegistration"))
    import RLRegistration

    return RLRegistration


@pytest.fixture
def scene(module):
    """Slicer's scene, cleared before and after the test."""
    import slicer

    slicer.mrmlScene.Clear(0)
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(0)


@pytest.fixture
def learned_models(fresh_registry):
    """The registry with ``tto``, the shipped models of ``models/`` and the retired ones of ``recipes/`` (as
    ``RLREG_MODELS_DIR=recipes`` gives them to a user): the learned policies' real cards and weights."""
    for folder in ("models", "recipes"):
        fresh_registry.discover_models(Path(__file__).resolve().parents[1] / folder)
    return fresh_registry


@pytest.fixture(autouse=True)
def _collect_slicer_garbage(request):
    """After each test that used Slicer's core, collect garbage at once: cycles holding VTK/MRML objects
    (scene, slice logics, render windows) that were collected later, inside an unrelated test, crashed the
    interpreter (segmentation fault in the garbage collector) in a full run."""
    yield
    if "slicer" in sys.modules:
        import gc

        gc.collect()


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def oblique_grid() -> Grid:
    """Small rotated, anisotropic grid with an offset origin (no index axis along a world axis)."""
    return make_grid((12, 10, 8), (1.5, 0.8, 2.2), (-31.2, 14.7, 52.3), rotation_matrix(20, -15, 35))


@pytest.fixture
def shared_dir(tmp_path) -> Path:
    """A stand-in for ../shared/data: synthseg/training_seg_01..05.nii.gz phantoms (1 mm, 40^3)."""
    from RLRegistrationLib.training.data import phantom_label_map

    folder = tmp_path / "shared" / "synthseg"
    folder.mkdir(parents=True)
    for subject in range(1, 6):
        image = sitk.GetImageFromArray(phantom_label_map((40, 40, 40), seed=subject).astype(np.float32))
        sitk.WriteImage(image, str(folder / f"training_seg_{subject:02d}.nii.gz"))
    return tmp_path / "shared"


@pytest.fixture
def torchrun_train(tmp_path, shared_dir):
    """``torchrun --nproc_per_node 2 -m RLRegistrationLib train --config <config> ...`` on 2 CPU
    processes (gloo) with the phantom ``shared_dir``; returns (CompletedProcess, model folder)."""
    lib_parent = str(Path(RLRegistrationLib.__file__).resolve().parents[1])

    def run(config: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
        out = tmp_path / "model-ddp"
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (lib_parent, env.get("PYTHONPATH")) if p)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        command += ["-m", "RLRegistrationLib", "train", "--config", str(config), "--quiet"]
        command += [
            "--shared-dir",
            str(shared_dir),
            "--out",
            str(out),
            "--run-dir",
            str(tmp_path / "run-ddp"),
        ]
        command += ["--device", "cpu", *extra]
        result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
        return result, out

    return run


@pytest.fixture
def run_isolated():
    """Run Python code in a fresh interpreter (for behaviour that may crash the process).

    Returns the ``subprocess.CompletedProcess`` (text mode). The library's source tree is on the path.
    """
    lib_parent = str(Path(RLRegistrationLib.__file__).resolve().parents[1])

    def run(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (lib_parent, env.get("PYTHONPATH")) if p)
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
        )

    return run


@pytest.fixture(autouse=True)
def _signals_as_a_shell_leaves_them():
    """Before each test: Python's own SIGINT handler and SIGINT, SIGTERM and SIGHUP unblocked, as a shell
    starts a command. A library loaded into this long test process (a Dask cluster, Slicer's core, a
    browser driver) may take them over at the C level, which ``signal.getsignal`` does not show; the tests
    that send signals, in this process or to a command it starts (which inherits an ignored or blocked
    signal), then saw nothing arrive."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    yield
