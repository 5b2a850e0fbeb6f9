"""One pair of a batch, run in a worker process: ``BatchPair`` and ``run_pair``.

``run_pair`` is the run of ``rlreg register`` with the pair's ``RunSpec``, written to ``<out>/<id>/`` all or
nothing (``io.outputs``), and returns the pair's summary record (its columns: ``SUMMARY_COLUMNS``): a pair
already complete from the same inputs and settings is skipped, an expected error becomes a failed record
with the one line ``rlreg register`` prints. ``batch.register_many`` hands these tasks out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, InputWarning, RLRegistrationError
from ..registration.run_spec import RunSpec
from .pair_run import PairFiles

#: what a pair writes into its folder, in the order it is written (the report last: see the module doc)
PAIR_FILES = {
    "config": "config.json",
    "transform": "transform.h5",
    "warped": "warped.nii.gz",
    "qc": "qc.png",
    "report": "report.json",
}
#: the columns of summary.csv, in order
SUMMARY_COLUMNS = (
    "id",
    "status",
    "error",
    "dice_before",
    "dice",
    "folding_percent",
    "similarity_before",
    "similarity_after",
    "similarity_gain",
    "seconds",
    "peak_memory_gib",
    "estimated_memory_gib",
    "device",
    "attempts",
    "worker",
    "started",
    "finished",
    "warnings",
    "fixed",
    "moving",
)
#: record statuses: run now, complete from an earlier run, failed, not run (the batch was stopped)
STATUSES = ("done", "skipped", "failed", "not run")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: what a pair's peak takes in a Dask worker above ``rlreg register``'s for the same pair (measured on
#: the sample pair at 2 and 4 mm, one thread: 0 to 64 MiB in a fresh worker, up to 115 MiB after another
#: pair, whose freed memory the worker keeps for reuse as the CLI does, ``allocator.reuse_freed_memory``)
WORKER_OVERHEAD_BYTES = 150 << 20
_PARTIAL = re.compile(r"^\..*\.rlreg-\d+-(partial|previous)")
GIB = 1 << 30


@dataclass(frozen=True)
class BatchPair:
    """One pair of a batch: ``id`` names its folder (letters, digits, ``.``, ``_``, ``-``), ``files`` its
    inputs, ``spec`` how it is registered."""

    id: str
    files: PairFiles
    spec: RunSpec = field(default_factory=RunSpec)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not ID_PATTERN.match(self.id) or self.id in (".", ".."):
            raise InputError(
                f"pair id {self.id!r}: use letters, digits, '.', '_' and '-' (it names the pair's folder)"
            )

    def inputs(self) -> dict[str, str | None]:
        """The input files as written in a report (what a later run compares to skip this pair)."""
        return {
            key: None if path is None else str(path)
            for key, path in (
                ("fixed", self.files.fixed),
                ("moving", self.files.moving),
                ("fixed_labels", self.files.fixed_labels),
                ("moving_labels", self.files.moving_labels),
                ("fixed_mask", self.files.fixed_mask),
                ("moving_mask", self.files.moving_mask),
            )
        }


def empty_record(pair: BatchPair, status: str = "failed", error: str = "") -> dict[str, Any]:
    """A summary record of ``pair`` with nothing measured."""
    record: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    record.update(id=pair.id, status=status, error=error, fixed=str(pair.files.fixed))
    record.update(moving=str(pair.files.moving), attempts=0, warnings="")
    return record


# ----------------------------------------------------------------------------------------------------
# what is already there


def pair_state(pair: BatchPair, out_dir: str | Path, force: bool = False) -> tuple[str, Any]:
    """``("run", None)``, ``("complete", record)`` (its results are there: skip it) or ``("conflict",
    message)`` (its folder holds the results of other inputs or settings, kept as they are)."""
    folder = Path(out_dir) / pair.id
    if force or not folder.is_dir():
        return "run", None
    paths = {kind: folder / name for kind, name in PAIR_FILES.items()}
    try:
        times = {kind: path.stat().st_mtime_ns for kind, path in paths.items()}
    except OSError:
        return "run", None  # not all there: a run cut short
    if any(times["report"] < t for t in times.values()):
        return "run", None  # replaced in part (a forced re-run cut short between two renames)
    try:
        report = json.loads(paths["report"].read_text(encoding="utf-8"))
        config = json.loads(paths["config"].read_text(encoding="utf-8"))
        record, inputs = report["summary"], report["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return "run", None
    for what, there, now in (
        ("input files", inputs, pair.inputs()),
        ("run settings", config, pair.spec.to_dict()),
    ):
        if there != now:
            return (
                "conflict",
                f"{folder}: holds the results of other {what} ({_difference(there, now)}); --force replaces them",
            )
    return "complete", record


def _difference(before: Mapping, now: Mapping) -> str:
    key = next((k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)), "?")
    return f"{key}: {before.get(key)!r} there, {now.get(key)!r} now"


def remove_partial_files(folder: Path) -> None:
    """Remove what a run cut short (a killed worker) left hidden in a pair's folder: ``io.outputs``'s
    staged files or staging folders and the links it keeps of replaced files."""
    import shutil

    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            if _PARTIAL.match(path.name):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()


# ----------------------------------------------------------------------------------------------------
# the task: one pair in a worker


_PROCESS_READY = False


def _prepare_process(threads: int | None) -> int:
    """Torch and SimpleITK threads for this pair (``threads``, else ``_default_threads``), and the CLI's
    allocator setting (once per process); returns the threads."""
    global _PROCESS_READY
    import SimpleITK as sitk
    import torch

    if threads is None:
        threads = _default_threads()
    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if not _PROCESS_READY:
        from .allocator import reuse_freed_memory

        reuse_freed_memory()
        _PROCESS_READY = True
    return threads


def _default_threads() -> int:
    """A pair's threads where the batch did not say: the worker's ``OMP_NUM_THREADS`` (a Dask nanny sets
    it, 1 unless configured: one per task thread), else this process's cores over its task threads."""
    text = os.environ.get("OMP_NUM_THREADS", "")
    if text.isdigit() and int(text) > 0:
        return int(text)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // _worker_threads())


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError, AttributeError):
        return f"pid {os.getpid()}"


class PeakMemory:
    """This process's peak resident memory from ``reset`` on: Linux's high-water mark ``VmHWM``, reset
    through ``/proc/self/clear_refs``; elsewhere (or where that file is not writable) RSS sampled every
    20 ms by a thread (psutil). Process-wide: with several task threads in one worker it covers them all."""

    def __init__(self) -> None:
        self._sampler: Any = None
        self._peak = 0

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._read_hwm()
            return
        except (OSError, ValueError):
            pass
        import threading

        import psutil

        process, stop = psutil.Process(), threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                self._peak = max(self._peak, process.memory_info().rss)

        self._peak = process.memory_info().rss
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        self._sampler = stop

    @staticmethod
    def _read_hwm() -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise ValueError("no VmHWM")

    def peak_bytes(self) -> int:
        if self._sampler is None:
            return self._read_hwm()
        return self._peak

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.set()
            self._sampler = None


def release_freed_memory() -> None:
    """Give the memory a pair freed back to the system (glibc ``malloc_trim`` after a garbage collection).

    A worker keeps freed memory for reuse as the CLI does (``allocator.reuse_freed_memory``: the pair's
    own iterations get faster), but a worker lives for many pairs: without this its resident memory grew
    by 0.02-0.06 GiB with each 2 mm sample pair (0.86 -> 1.02 GiB peak over 6 pairs, 1.34 GiB after 8, at
    its memory limit); with it each pair starts again from about 0.58 GiB and peaks at 0.82-0.94 GiB
    (the pair's estimate: 0.98 GiB)."""
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_pair(pair: BatchPair, out_dir: str | Path, threads: int | None = None) -> dict[str, Any]:
    """Register one pair into ``<out_dir>/<id>/`` as ``rlreg register`` would, and return its summary
    record: ``status`` "done", or "failed" with ``error`` the one line ``rlreg register`` prints (any
    other exception too, as "unexpected ..."). Meant to run in a worker process; never raises for a bad
    pair. ``threads``: torch and SimpleITK threads (None: ``_default_threads``)."""
    record = empty_record(pair)
    record["started"] = _now()
    folder = Path(out_dir) / pair.id
    created = not folder.exists()
    start = time.perf_counter()
    peak = PeakMemory()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)

        def seen_warnings() -> str:
            return "; ".join(str(w.message) for w in caught if issubclass(w.category, InputWarning))

        try:
            threads = _prepare_process(threads)
            peak.reset()
            _register(pair, folder, record, start, peak, seen_warnings)
            record["status"] = "done"
        except RLRegistrationError as error:
            from .cli_parser import one_line

            record["error"] = one_line(error)
        except Exception as error:  # a bad pair never stops the others
            message = " ".join(str(error).split()) or type(error).__name__
            record["error"] = f"unexpected {type(error).__name__}: {message}"
            import logging
            import traceback

            logging.getLogger("RLRegistrationLib.batch").error(
                "pair %s: %s", pair.id, "".join(traceback.format_exc())
            )
        finally:
            peak.stop()
            release_freed_memory()
            remove_partial_files(folder)
            if created and record["status"] != "done":
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        record["warnings"] = seen_warnings()
    if record["seconds"] is None:
        record["seconds"] = round(time.perf_counter() - start, 3)
    record["worker"] = _worker_name()
    record["finished"] = _now()
    return record


def _now() -> str:
    """The local time, ISO 8601 to the millisecond."""
    from datetime import datetime

    return datetime.now().isoformat(timespec="milliseconds")


def _register(pair: BatchPair, folder: Path, record: dict, start: float, peak: PeakMemory, seen) -> None:
    """``rlreg register``'s walk for one pair (``register_command.cmd_register``): outputs checked, policy
    checked, files read, session built and run, every output written all or nothing."""
    from ..io.outputs import OutputSet, write_json
    from ..registration.run_spec import build_session, check_policy
    from .pair_run import report_dict, result_writers
    from .register_command import run_with_progress

    spec, files = pair.spec, pair.files
    files.check()
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial_files(folder)
    outputs = OutputSet(
        {kind: folder / name for kind, name in PAIR_FILES.items()},
        overwrite=True,  # the folder is the batch's own, and this pair's results are not complete in it
        inputs=files.roles(),
        option_names={kind: f"{pair.id}/{name}" for kind, name in PAIR_FILES.items()},
    )
    outputs.check()
    check_policy(spec)
    inputs = files.read()
    session, plan = build_session(spec, **inputs)
    estimate = run_estimate(inputs, session.options)
    result = run_with_progress(session, plan.steps, quiet=True)
    record.update(pair_metrics(result), estimated_memory_gib=round(estimate / GIB, 4))
    from ..devices import describe_device

    record["device"] = describe_device(session.device)

    def report(path: Path) -> None:  # written last, when the other outputs are complete
        record.update(
            seconds=round(time.perf_counter() - start, 3),
            peak_memory_gib=round(peak.peak_bytes() / GIB, 4),
            warnings=seen(),
            finished=_now(),
        )
        summary = {k: record[k] for k in SUMMARY_COLUMNS if k not in ("attempts", "worker")}
        summary["status"] = "done"  # what this report says once it is in place
        write_json({**report_dict(result), "summary": summary, "inputs": pair.inputs()})(path)

    title = f"{pair.id} ({spec.policy})"
    writers = result_writers(result, inputs["fixed"], inputs["moving"], outputs, spec, title, {})
    outputs.write({**writers, "report": report})


def run_estimate(inputs: Mapping, options) -> int:
    """A batch pair's peak memory in its worker (bytes): the run's estimate
    (``registration.memory.estimate_peak_memory``, as the session checks it against its cap, with the QC
    picture every batch pair writes) for its images (``PairFiles.read``'s) and session options, plus what
    a Dask worker holds above ``rlreg register`` (``WORKER_OVERHEAD_BYTES``)."""
    import inspect

    from ..registration.memory import estimate_peak_memory

    extra = {}
    if "steps" in inspect.signature(estimate_peak_memory).parameters:  # the steps the session keeps
        extra["steps"] = getattr(options, "planned_steps", None)
    labels = inputs.get("fixed_labels") is not None
    run = estimate_peak_memory(
        inputs["fixed"], inputs["moving"], options, labels=labels, picture=True, **extra
    )
    return run.total_bytes + WORKER_OVERHEAD_BYTES


def pair_metrics(result) -> dict[str, Any]:
    """Dice (after the pre-alignment and at the end; None without labels), folding (``folding_percent``)
    and local NCC after the pre-alignment and at the end."""
    first, last = result.reports[0], result.reports[-1]

    def rounded(value, digits=5):
        return None if value is None else round(float(value), digits)

    return {
        "dice_before": rounded(first.dice),
        "dice": rounded(last.dice),
        "folding_percent": rounded(folding_percent(result.displacement), 4),
        "similarity_before": rounded(first.similarity),
        "similarity_after": rounded(last.similarity),
        "similarity_gain": rounded(last.similarity - first.similarity),
    }


#: voxels per slab of ``folding_percent`` (about 0.2 kB each while it is computed)
FOLDING_SLAB_VOXELS = 1 << 18


def folding_percent(displacement) -> float:
    """% of the field's voxels where the Jacobian determinant of ``x + u(x)`` is <= 0, as
    ``fields.metrics.jacobian_stats(jacobian_of_field(u))`` counts them (central differences inside,
    one-sided at the borders, along index axes converted with the grid's direction and spacing), with the
    3x3 determinants written out and the field taken in slabs of planes (each with its neighbours, so the
    differences are the same): about 50 MiB and a fifth of the time, where the library's general
    function holds 0.4 kB per voxel of the whole field (3 GiB on a 1 mm brain)."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from ..fields.geometry import Grid

    grid = Grid.from_image(displacement)
    inverse = torch.as_tensor(np.linalg.inv(grid.index_to_physical_matrix), dtype=torch.float64)
    array = sitk.GetArrayViewFromImage(displacement)  # (D, H, W, 3) LPS mm
    depth = array.shape[0]
    planes = max(1, FOLDING_SLAB_VOXELS // max(1, array.shape[1] * array.shape[2]))
    folded = 0
    for start in range(0, depth, planes):
        stop = min(depth, start + planes)
        low, high = max(0, start - 1), min(depth, stop + 1)
        # float32 first, as field_image_to_tensor gives the field to jacobian_of_field
        u = torch.from_numpy(np.asarray(array[low:high], dtype=np.float32)).double()  # (d, H, W, 3)
        if u.shape[0] > 1:
            d_k, d_j, d_i = torch.gradient(u, dim=(0, 1, 2))
        else:  # a single plane: no change along k
            d_j, d_i = torch.gradient(u, dim=(1, 2))
            d_k = torch.zeros_like(u)
        d_index = torch.stack([d_i, d_j, d_k], dim=-1)[start - low : stop - low]  # (.., 3 comps, 3 axes)
        j = d_index @ inverse + torch.eye(3, dtype=torch.float64)  # I + du/dx
        det = (
            j[..., 0, 0] * (j[..., 1, 1] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 1])
            - j[..., 0, 1] * (j[..., 1, 0] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 0])
            + j[..., 0, 2] * (j[..., 1, 0] * j[..., 2, 1] - j[..., 1, 1] * j[..., 2, 0])
        )
        folded += int((det <= 0).sum())
    return 100.0 * folded / float(array.shape[0] * array.shape[1] * array.shape[2])
