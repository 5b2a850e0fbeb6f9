"""A registration on a background thread, for the panels: ``RegistrationWorker`` runs a session and posts
``WorkerMessage`` objects (with the per-step display data ``StepFrame`` and the full-resolution
``FinalOutputs``) to a queue that the GUI drains with a timer. It never touches a GUI or MRML.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from ..devices import is_out_of_memory
from ..fields.geometry import (
    ijk_to_ras_matrix,
    voxel_to_physical,
)
from ..fields.spatial import resample_field_to_grid
from ..io.imaging import intensity_window
from ..io.slicer_arrays import SlicerGridArrays, affine_ras_matrix, ras_arrays
from .result import RegistrationResult
from .session import RegistrationSession
from .step_report import StepReport

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
        field=ras_arrays(u_mm, grid, dtype),
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
    """Full-resolution transform (and warped image when ``moving`` is given) of ``step`` (default: last).
    The display arrays are on the image grid (the fixed image's), where the warped image and the overlays
    are, whatever grid the result's field is written on."""
    index = session.step_count if step is None else int(step)
    result = session.result(index)
    grid = result.image_grid or result.output_grid
    if grid == result.output_grid:
        u = result.field_mm
    else:
        with torch.no_grad():
            u_mm = resample_field_to_grid(session.field_at(index).to(session.device), session.grid, grid)
        u = u_mm[0].permute(1, 2, 3, 0).double().cpu().numpy()
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
        field=ras_arrays(u, grid, dtype),
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
