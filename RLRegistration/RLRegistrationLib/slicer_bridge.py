"""What the Slicer panel needs from the library, in plain Python (numpy, SimpleITK, torch, threading).

Nothing here imports ``slicer``, ``qt`` or ``vtk``: the module ``RLRegistration.py`` only moves arrays in and
out of MRML nodes on the main thread. Here live:

* geometry between Slicer (RAS, 4x4 matrices, numpy (k, j, i) arrays) and SimpleITK (LPS images):
  :func:`image_from_slicer_arrays`, :func:`initial_transform_from_parents`, :func:`transform_points_ras`
  (a numpy copy of ``vtkOrientedGridTransform``'s linear lookup, used to check the RAS arrays);
* the per-step display data (:class:`StepFrame`, working grid, cheap) and the final full-resolution
  outputs (:class:`FinalOutputs`);
* :class:`RegistrationWorker`: runs a :class:`~RLRegistrationLib.session.RegistrationSession` on a thread
  and posts :class:`WorkerMessage` objects to a ``queue.Queue`` that the GUI drains with a timer;
* the choices the panel offers (policies with their model cards, devices).

Directions (DESIGN.md §3): every transform here maps a *fixed* point to the corresponding *moving* point
(resampling direction, Slicer's "transform from parent"). Slicer's parent transforms are given as 4x4 RAS
matrices "to world" (``GetMatrixTransformToWorld``: local coordinates of the node -> world coordinates).
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .devices import describe_device, is_out_of_memory
from .errors import InputError
from .export import SlicerGridArrays, slicer_grid_arrays
from .geometry import (
    Grid,
    affine_from_matrix,
    affine_to_matrix,
    ijk_to_ras_matrix,
    lps_vectors_to_ras,
    ras_grid_from_lps,
    voxel_to_physical,
)
from .imaging import intensity_window
from .policies import DEFAULT_STEPS
from .session import RegistrationResult, RegistrationSession, StepReport

_FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])

# ---------------------------------------------------------------------------------------------- geometry


def ras_matrix_to_lps(matrix_ras: np.ndarray) -> np.ndarray:
    """A 4x4 point map in RAS coordinates expressed in LPS coordinates (``F M F`` with F = diag(-1,-1,1,1))."""
    matrix_ras = np.asarray(matrix_ras, dtype=np.float64)
    if matrix_ras.shape != (4, 4):
        raise InputError(f"a 4x4 matrix is required, got shape {matrix_ras.shape}")
    return _FLIP4 @ matrix_ras @ _FLIP4


def initial_transform_from_parents(
    moving_to_world_ras: np.ndarray | None = None, fixed_to_world_ras: np.ndarray | None = None
) -> sitk.AffineTransform | None:
    """The alignment the user sees in Slicer, as an initial transform for the session.

    ``moving_to_world_ras`` / ``fixed_to_world_ras``: the volumes' parent transforms as 4x4 RAS matrices
    *to world* (what ``vtkMRMLTransformNode.GetMatrixTransformToWorld`` returns; ``None`` = not transformed).
    A fixed voxel at local point ``x`` is shown at world ``G_f x``; the moving voxel shown there is at moving
    local point ``G_m^-1 G_f x``. So the transform fixed -> moving is ``G_m^-1 G_f`` in RAS, returned in LPS
    (SimpleITK) as an AffineTransform, or ``None`` when it is the identity.

    To pass a "transform from parent" matrix ``P`` of a single linear transform instead, use ``inv(P)``.
    """
    g_m = np.eye(4) if moving_to_world_ras is None else np.asarray(moving_to_world_ras, dtype=np.float64)
    g_f = np.eye(4) if fixed_to_world_ras is None else np.asarray(fixed_to_world_ras, dtype=np.float64)
    for name, m in (("moving", g_m), ("fixed", g_f)):
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise InputError(f"{name} parent transform: a finite 4x4 matrix is required")
        if abs(np.linalg.det(m[:3, :3])) < 1e-12 or np.any(np.abs(m[3] - [0, 0, 0, 1]) > 1e-9):
            raise InputError(f"{name} parent transform: the matrix is not an invertible affine transform")
    relative_ras = np.linalg.solve(g_m, g_f)  # G_m^-1 G_f
    if np.allclose(relative_ras, np.eye(4), atol=1e-12):
        return None
    return affine_from_matrix(ras_matrix_to_lps(relative_ras))


def image_from_slicer_arrays(array_kji: np.ndarray, ijk_to_ras: np.ndarray) -> sitk.Image:
    """A SimpleITK (LPS) image from a Slicer volume's voxel array (k, j, i) and its IJK-to-RAS matrix.

    The inverse of :func:`RLRegistrationLib.export.slicer_volume_arrays` (voxels are copied).
    """
    array_kji = np.asarray(array_kji)
    if array_kji.ndim != 3:
        raise InputError(f"a 3D scalar volume is required, the voxel array has shape {array_kji.shape}")
    ijk_to_lps = _FLIP4 @ np.asarray(ijk_to_ras, dtype=np.float64)
    columns = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(columns)):
        raise InputError("volume geometry: the IJK-to-RAS matrix has a zero or invalid axis")
    direction = columns / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in ijk_to_lps[:3, 3]))
    image.SetDirection(tuple(float(d) for d in direction.ravel()))
    return image


def labels_on_image_grid(labels: sitk.Image, image: sitk.Image) -> sitk.Image:
    """``labels`` as an integer image on ``image``'s grid (nearest neighbour when the grids differ)."""
    same = (
        labels.GetSize() == image.GetSize()
        and np.allclose(labels.GetSpacing(), image.GetSpacing(), atol=1e-6)
        and np.allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-4)
        and np.allclose(labels.GetDirection(), image.GetDirection(), atol=1e-6)
    )
    if same:
        labels = sitk.Image(labels)
        labels.CopyInformation(image)
        return labels
    return sitk.Resample(labels, image, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0)


def match_segment_names(fixed_names: list[str], moving_names: list[str]) -> list[str]:
    """Segment names present in both segmentations, in the fixed segmentation's order.

    Exporting both segmentations with these names in this order gives the same label value (1, 2, ...) to
    the same structure, so Dice compares like with like.
    """
    moving = set(moving_names)
    seen: set[str] = set()
    common = []
    for name in fixed_names:
        if name in moving and name not in seen:
            common.append(name)
            seen.add(name)
    return common


def transform_points_ras(points_ras: np.ndarray, arrays: SlicerGridArrays) -> np.ndarray:
    """Move RAS points as ``vtkOrientedGridTransform`` (linear interpolation) does with these arrays.

    ``p -> p + d(index(p))`` with ``index = (D diag(s))^-1 (p - origin)`` and trilinear interpolation of the
    (k, j, i, 3) vectors; like ``vtkGridTransform``, indices outside the grid are clamped to its border.
    """
    points = np.atleast_2d(np.asarray(points_ras, dtype=np.float64))
    m = arrays.direction @ np.diag(arrays.spacing)
    index = (points - arrays.origin) @ np.linalg.inv(m).T  # (n, 3) continuous (i, j, k)
    vectors = np.asarray(arrays.vectors, dtype=np.float64)
    size = np.array([vectors.shape[2], vectors.shape[1], vectors.shape[0]])
    index = np.clip(index, 0.0, size - 1)
    base = np.minimum(np.floor(index).astype(int), np.maximum(size - 2, 0))
    frac = index - base
    out = np.zeros_like(points)
    for corner in range(8):
        offset = np.array([(corner >> 0) & 1, (corner >> 1) & 1, (corner >> 2) & 1])
        weight = np.prod(np.where(offset == 1, frac, 1.0 - frac), axis=1)
        idx = np.minimum(base + offset, size - 1)
        out += weight[:, None] * vectors[idx[:, 2], idx[:, 1], idx[:, 0]]
    return points + out


def grid_geometry_matches(
    dimensions_ijk,
    origin,
    spacing,
    direction: np.ndarray | None,
    arrays: SlicerGridArrays,
    atol: float = 1e-6,
) -> bool:
    """True when an existing displacement grid has the geometry of ``arrays`` (so it can be updated in place)."""
    vectors = arrays.vectors
    if tuple(int(d) for d in dimensions_ijk) != (vectors.shape[2], vectors.shape[1], vectors.shape[0]):
        return False
    if not np.allclose(origin, arrays.origin, atol=atol) or not np.allclose(
        spacing, arrays.spacing, atol=atol
    ):
        return False
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)[:3, :3]
    return bool(np.allclose(direction, arrays.direction, atol=atol))


def vtk_displacement_grid(arrays: SlicerGridArrays):
    """``vtkImageData`` holding the displacement grid of ``arrays`` for ``SetDisplacementGridData``.

    The vectors are point-data *scalars* with 3 components in (k, j, i) memory order (i fastest), origin and
    spacing set; the direction goes separately to ``vtkOrientedGridTransform.SetGridDirectionMatrix``
    (use :func:`homogeneous`). vtk is imported here only (it ships with Slicer; the library does not need it).
    """
    import vtk  # optional dependency, present in Slicer
    from vtk.util import numpy_support

    vectors = np.ascontiguousarray(arrays.vectors)
    if vectors.ndim != 4 or vectors.shape[3] != 3:
        raise InputError(f"displacement vectors must be (k, j, i, 3), got {vectors.shape}")
    image = vtk.vtkImageData()
    image.SetDimensions(int(vectors.shape[2]), int(vectors.shape[1]), int(vectors.shape[0]))
    image.SetOrigin(*(float(v) for v in arrays.origin))
    image.SetSpacing(*(float(v) for v in arrays.spacing))
    scalars = numpy_support.numpy_to_vtk(vectors.reshape(-1, 3), deep=True)
    scalars.SetName("displacement")
    image.GetPointData().SetScalars(scalars)
    return image


def homogeneous(matrix3: np.ndarray, translation: np.ndarray | None = None) -> np.ndarray:
    """4x4 matrix with ``matrix3`` as its upper-left 3x3 block (e.g. a grid direction for VTK) and
    ``translation`` (default 0) as its last column."""
    out = np.eye(4)
    out[:3, :3] = np.asarray(matrix3, dtype=np.float64)
    if translation is not None:
        out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


# ---------------------------------------------------------------------------------------------- display data


@dataclass
class StepFrame:
    """Everything the slice views show for one step, on the working grid (cheap to compute and to copy).

    ``field``: the deformable refinement ``u`` alone as RAS arrays for a Slicer grid transform (from parent);
    ``affine_ras``: the pre-alignment ``A`` as a 4x4 RAS matrix (from parent). The whole transform is
    ``T(x) = A(x + u(x))``: in Slicer the grid node is the parent of the linear node (see
    ``RLRegistrationMRML.scene_logic``). ``warped``: the moving image through the transform, in its original
    intensities (clipped to the normalization window). ``magnitude``: length of the deformation in mm.
    ``uncertainty``: spread of the sampled trajectories in mm (policies sampling K > 1 trajectories).
    """

    index: int
    ijk_to_ras: np.ndarray  # 4x4 of the working grid
    field: SlicerGridArrays  # deformation u, RAS, on the working grid
    affine_ras: np.ndarray  # 4x4 RAS matrix of the pre-alignment A (fixed point -> moving point)
    warped: np.ndarray  # (k, j, i) float32
    magnitude: np.ndarray  # (k, j, i) float32, mm
    weight_map: np.ndarray | None  # (k, j, i) float32 in (0, 1]
    uncertainty: np.ndarray | None = None  # (k, j, i) float32, mm


@dataclass
class FinalOutputs:
    """Full-resolution result of a step on the output grid (the fixed image's grid by default)."""

    index: int
    result: RegistrationResult
    ijk_to_ras: np.ndarray  # 4x4 of the output grid
    field: SlicerGridArrays  # deformation u, RAS, on the output grid
    affine_ras: np.ndarray  # 4x4 RAS matrix of the pre-alignment A (fixed point -> moving point)
    warped: np.ndarray | None  # (k, j, i) moving image resampled through the transform
    magnitude: np.ndarray  # (k, j, i) float32, deformation length in mm
    weight_map: np.ndarray | None  # (k, j, i) float32 on the working grid
    weight_map_ijk_to_ras: np.ndarray  # 4x4 of the working grid
    uncertainty: np.ndarray | None = None  # (k, j, i) float32, mm, on the output grid (``ijk_to_ras``)


def flattened_displacement(
    affine: sitk.Transform, deformation_lps: np.ndarray, grid: Grid, dtype=np.float64, chunk_slices: int = 32
) -> np.ndarray:
    """``A(x + u(x)) - x`` (LPS mm, (k, j, i, 3)) for the deformation ``u`` sampled on ``grid``'s voxels.

    Equal to ``export.total_displacement(A o (id + u), grid)`` at the voxel centres, computed in slabs so that
    large grids need no more than the output array.
    """
    matrix, translation = affine_to_matrix(affine)
    u = np.asarray(deformation_lps)
    out = np.empty(u.shape, dtype=dtype)
    m = grid.index_to_physical_matrix
    origin = np.asarray(grid.origin)
    nk, nj, ni = grid.shape
    jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
    for k0 in range(0, nk, chunk_slices):
        k1 = min(nk, k0 + chunk_slices)
        kk = np.arange(k0, k1)[:, None, None] * np.ones((1, nj, ni))
        index = np.stack([np.broadcast_to(ii, kk.shape), np.broadcast_to(jj, kk.shape), kk], axis=-1)
        x = index @ m.T + origin
        moved = (x + u[k0:k1]) @ matrix.T + translation
        out[k0:k1] = moved - x
    return out


def affine_ras_matrix(affine: sitk.Transform | None) -> np.ndarray:
    """4x4 RAS matrix of a linear LPS transform (fixed point -> moving point), for a linear transform node's
    "transform from parent"."""
    matrix, translation = affine_to_matrix(affine)
    return _FLIP4 @ homogeneous(matrix, translation) @ _FLIP4


def _ras_arrays(vectors_lps: np.ndarray, grid: Grid, dtype) -> SlicerGridArrays:
    origin, spacing, direction = ras_grid_from_lps(grid)
    vectors = lps_vectors_to_ras(vectors_lps).astype(dtype, copy=False)
    return SlicerGridArrays(origin, spacing, direction, np.ascontiguousarray(vectors))


def step_frame(
    session: RegistrationSession,
    step: int | None = None,
    moving_window: tuple[float, float] | None = None,
    dtype=np.float32,
) -> StepFrame:
    """Display data of ``step`` (default: the last) on the session's working grid."""
    index = session.step_count if step is None else int(step)
    grid = session.grid
    with torch.no_grad():
        u_mm = voxel_to_physical(session.field_at(index).double(), grid)[0].permute(1, 2, 3, 0).cpu().numpy()
    warped = session.warped_at(index).astype(np.float32, copy=False)
    if moving_window is not None:
        lo, hi = moving_window
        warped = (lo + warped * (hi - lo)).astype(np.float32)
    weight = session.weight_map_at(index)
    uncertainty = session.uncertainty_at(index)
    return StepFrame(
        index=index,
        ijk_to_ras=ijk_to_ras_matrix(grid),
        field=_ras_arrays(u_mm, grid, dtype),
        affine_ras=affine_ras_matrix(session.affine),
        warped=warped,
        magnitude=np.linalg.norm(u_mm, axis=-1).astype(np.float32),
        weight_map=None if weight is None else weight[0, 0].float().cpu().numpy(),
        uncertainty=None if uncertainty is None else uncertainty[0, 0].float().cpu().numpy(),
    )


def final_outputs(
    session: RegistrationSession,
    step: int | None = None,
    moving: sitk.Image | None = None,
    dtype=np.float32,
) -> FinalOutputs:
    """Full-resolution transform (and warped image when ``moving`` is given) of ``step`` (default: last)."""
    index = session.step_count if step is None else int(step)
    result = session.result(index)
    grid = result.output_grid
    u = sitk.GetArrayViewFromImage(result.displacement)
    warped = None
    if moving is not None:
        warped = sitk.GetArrayFromImage(result.warp_image(moving, default_value=background_value(moving)))
    weight = (
        None if result.weight_map is None else sitk.GetArrayFromImage(result.weight_map).astype(np.float32)
    )
    return FinalOutputs(
        index=index,
        result=result,
        ijk_to_ras=ijk_to_ras_matrix(grid),
        field=_ras_arrays(u, grid, dtype),
        affine_ras=affine_ras_matrix(result.affine),
        warped=warped,
        magnitude=np.linalg.norm(u, axis=-1).astype(np.float32),
        weight_map=weight,
        weight_map_ijk_to_ras=ijk_to_ras_matrix(session.grid),
        uncertainty=None
        if result.uncertainty_map is None
        else sitk.GetArrayFromImage(result.uncertainty_map).astype(np.float32),
    )


def background_value(image: sitk.Image) -> float:
    """Value for voxels mapped outside the moving image: its minimum (0 for most MR, -1024 for CT)."""
    return float(np.min(sitk.GetArrayViewFromImage(image)))


def displacement_arrays(displacement_lps: sitk.Image, dtype=np.float64) -> SlicerGridArrays:
    """RAS arrays of an LPS displacement image (``export.slicer_grid_arrays`` with a chosen dtype)."""
    arrays = slicer_grid_arrays(displacement_lps)
    arrays.vectors = np.ascontiguousarray(arrays.vectors.astype(dtype, copy=False))
    return arrays


# ---------------------------------------------------------------------------------------------- worker


@dataclass
class WorkerMessage:
    """One message from the worker thread. ``kind``: prepared, step, final, finished or error."""

    kind: str
    report: StepReport | None = None
    frame: StepFrame | None = None
    final: FinalOutputs | None = None
    cancelled: bool = False
    steps_done: int = 0
    error: str = ""
    out_of_memory: bool = False
    details: str = ""
    posted: float = field(default_factory=time.monotonic)  # when the worker posted it (monotonic s)


class RegistrationWorker:
    """Runs ``steps`` steps of a session on a background thread; the GUI polls :meth:`poll`.

    Messages, in order: ``prepared`` (only when the session was not prepared yet: report and frame of step
    0), one ``step`` per step (report and frame), ``final`` (full-resolution outputs; skipped when
    cancelled or ``finalize`` is False), then ``finished`` (``cancelled``, ``steps_done``) — or ``error``
    instead of the rest. ``cancel()`` (any thread) stops after the step in progress. The worker never touches
    the GUI or MRML: all display work happens where the messages are read.
    """

    def __init__(
        self,
        session: RegistrationSession,
        steps: int,
        moving: sitk.Image | None = None,
        finalize: bool = True,
        frames: bool = True,
        frame_dtype=np.float32,
    ):
        self.session = session
        self.steps = int(steps)
        self.moving = moving
        self.finalize = finalize
        self.frames = frames
        self.frame_dtype = frame_dtype
        self.messages: queue.Queue[WorkerMessage] = queue.Queue()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.moving_window: tuple[float, float] | None = None

    def start(self) -> RegistrationWorker:
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._thread = threading.Thread(target=self._run, name="RLRegistrationWorker", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop after the step in progress (thread-safe, idempotent)."""
        self._cancel.set()
        self.session.cancel()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.is_alive()

    def poll(self) -> list[WorkerMessage]:
        """All messages posted since the last call (non-blocking)."""
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def _frame(self, index: int) -> StepFrame | None:
        if not self.frames:
            return None
        return step_frame(self.session, index, self.moving_window, self.frame_dtype)

    def _run(self) -> None:
        session = self.session
        post = self.messages.put
        try:
            if not session.prepared:
                report = session.prepare()
                self.moving_window = intensity_window(session.moving)
                post(WorkerMessage("prepared", report=report, frame=self._frame(0)))
            else:
                self.moving_window = intensity_window(session.moving)
            if not self._cancel.is_set():
                for report in session.run(self.steps):
                    post(WorkerMessage("step", report=report, frame=self._frame(report.index)))
                    if self._cancel.is_set():
                        break
            cancelled = self._cancel.is_set() or session.cancelled
            if self.finalize and not cancelled and session.step_count > 0:
                post(
                    WorkerMessage("final", final=final_outputs(session, None, self.moving, self.frame_dtype))
                )
            post(WorkerMessage("finished", cancelled=cancelled, steps_done=session.step_count))
        except BaseException as error:  # noqa: BLE001 - everything must reach the GUI, never die silently
            post(
                WorkerMessage(
                    "error",
                    error=_one_line(error),
                    out_of_memory=is_out_of_memory(error),
                    details=traceback.format_exc(),
                    steps_done=session.step_count if session.prepared else 0,
                )
            )
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    message = text[-1] if text else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


# ---------------------------------------------------------------------------------------------- choices


@dataclass(frozen=True)
class PolicyChoice:
    """A policy the panel offers: registry name, one-line description, the modality it was trained for,
    whether it can sample several trajectories (the panel's Samples box; an uncertainty map), and its
    default number of steps and option values (the panel's Steps, Iterations and Regularization boxes
    follow them when the policy changes)."""

    name: str
    description: str
    modality: str
    card: Path | None = None
    supports_sampling: bool = False
    default_steps: int = DEFAULT_STEPS
    option_defaults: dict = field(default_factory=dict)  # e.g. iterations, regularization

    @property
    def label(self) -> str:
        return f"{self.name} — {self.modality}" if self.modality else self.name


_TTO_MODALITY = "any (no training; NCC for same contrast, MIND across modalities)"


def find_models_dir() -> Path | None:
    """The ``models/`` folder (``$RLREG_MODELS_DIR``, installed next to the library, or the checkout's)."""
    from .learned_policies import models_dir

    return models_dir()


def read_model_cards(models_dir: Path | None) -> dict[str, dict]:
    """``card.json`` of every ``models/<policy-id>/`` folder, by policy id (unreadable cards are skipped)."""
    cards: dict[str, dict] = {}
    if models_dir is None or not Path(models_dir).is_dir():
        return cards
    for path in sorted(Path(models_dir).glob("*/card.json")):
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(card, dict):
            card["_path"] = path
            cards[str(card.get("id") or card.get("name") or path.parent.name)] = card
    return cards


def policy_choices(
    registered: dict[str, str] | None = None, models_dir: Path | None = None
) -> list[PolicyChoice]:
    """Registered policies (``policies.available_policies()``) with the modality from their model card.

    The test-time-optimization policy ``tto`` comes first and is always offered.
    """
    from .policies import (
        available_policies,
        policy_default_steps,
        policy_option_defaults,
        policy_supports_sampling,
    )

    if registered is None:
        registered = available_policies()
    cards = read_model_cards(find_models_dir() if models_dir is None else models_dir)
    choices = []
    for name, description in registered.items():
        card = cards.get(name, {})
        modality = card.get("modality") or card.get("trained_for") or ("" if name != "tto" else _TTO_MODALITY)
        if isinstance(modality, (list, tuple)):
            modality = ", ".join(str(m) for m in modality)
        choices.append(
            PolicyChoice(
                name=name,
                description=str(card.get("description") or description or ""),
                modality=str(modality or "not stated"),
                card=card.get("_path"),
                supports_sampling=policy_supports_sampling(name) or card.get("family") == "morphseek",
                default_steps=policy_default_steps(name),
                option_defaults=policy_option_defaults(name),
            )
        )
    if not any(c.name == "tto" for c in choices):
        choices.append(PolicyChoice("tto", "Test-time optimization", _TTO_MODALITY))
    choices.sort(key=lambda c: (c.name != "tto", c.name))
    return choices


def device_choices() -> list[tuple[str, str, bool]]:
    """(value, label, available) for the device selector: auto, GPU (naming the GPU found) and CPU."""
    cpu_label = describe_device(torch.device("cpu"))
    if torch.cuda.is_available():
        gpu = describe_device(torch.device("cuda", 0))
        return [
            ("auto", f"Auto: {gpu}", True),
            ("cuda", f"GPU: {gpu}", True),
            ("cpu", f"CPU: {cpu_label}", True),
        ]
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only PyTorch build"
    return [
        ("auto", f"Auto: no GPU found, {cpu_label}", True),
        ("cuda", f"GPU: not available ({build})", False),
        ("cpu", f"CPU: {cpu_label}", True),
    ]


def value_range(array: np.ndarray | None) -> tuple[float, float] | None:
    """(min, max) of the finite values of an array, or None."""
    if array is None:
        return None
    finite = np.asarray(array)[np.isfinite(array)]
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


def format_range(array: np.ndarray | None, digits: int = 3) -> str:
    """'min – max' of an array for a label, or '—'."""
    r = value_range(array)
    if r is None:
        return "—"
    lo, hi = r
    return f"{lo:.{digits}g} – {hi:.{digits}g}" if math.isfinite(lo) else "—"


__all__ = [
    "FinalOutputs",
    "PolicyChoice",
    "RegistrationWorker",
    "StepFrame",
    "WorkerMessage",
    "affine_from_matrix",
    "device_choices",
    "displacement_arrays",
    "final_outputs",
    "find_models_dir",
    "flattened_displacement",
    "format_range",
    "grid_geometry_matches",
    "homogeneous",
    "image_from_slicer_arrays",
    "initial_transform_from_parents",
    "labels_on_image_grid",
    "match_segment_names",
    "policy_choices",
    "ras_matrix_to_lps",
    "read_model_cards",
    "step_frame",
    "transform_points_ras",
    "value_range",
    "vtk_displacement_grid",
]
