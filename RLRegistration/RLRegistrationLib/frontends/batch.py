"""Many pairs on a Dask cluster: ``register_many`` (and ``rlreg batch`` over it).

Each pair (``BatchPair``: an id, its files, its ``RunSpec``) is the run of ``rlreg register`` with that
spec, written to ``<out>/<id>/`` all or nothing (``io.outputs``): ``config.json``, ``transform.h5``,
``warped.nii.gz``, ``qc.png`` and, last, ``report.json`` (the per-step numbers and the pair's summary).

* **Nothing done twice:** a pair whose five files are all there, with ``report.json`` written last (its
  modification time not older than the others': a replacement cut short is never taken for a result),
  from the same inputs and settings, is skipped (status ``skipped``, its summary read back); ``force``
  redoes it. A folder holding the results of other inputs or settings fails that pair, untouched.
* **Nothing lost:** the pair runs in a worker process (``run_pair``, a small pure task that returns the
  pair's summary record); an expected error (unreadable file, no overlap, over the memory cap) becomes a
  failed record with the one line ``rlreg register`` prints, anything unexpected one too, and neither
  stops the others. A worker that dies mid-pair (killed, over its memory limit) has that pair run again,
  up to ``retries`` more times, then recorded as failed; only as many pairs as the cluster has slots are
  handed out at a time, so a dying worker never takes a waiting pair with it. A run cut short (Ctrl-C)
  leaves no partial output (hidden partial files are cleared when the pair runs again); a re-run does the
  rest.
* **The summary:** ``<out>/summary.csv`` and ``<out>/report.html`` (``batch_report``), worst pairs first.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..registration.run_spec import RunSpec
from .batch_pair import (  # noqa: F401 - the batch's public names, importable from here too
    GIB,
    ID_PATTERN,
    PAIR_FILES,
    STATUSES,
    SUMMARY_COLUMNS,
    BatchPair,
    empty_record,
    pair_state,
    remove_partial_files,
    run_estimate,
    run_pair,
)

# ----------------------------------------------------------------------------------------------------
# the client: hand the pairs out, retry the ones whose worker died, collect the records


def _is_worker_death(error: BaseException) -> bool:
    from distributed import KilledWorker

    with contextlib.suppress(ImportError):
        from distributed.comm.core import CommClosedError

        if isinstance(error, CommClosedError):
            return True
    return isinstance(error, KilledWorker)


def _capacity(client, gpu: bool) -> tuple[int, int, bool]:
    """(workers, slots, on GPUs): how many pairs the cluster runs at once now, its task threads, or its
    GPUs (workers offering the resource ``GPU``) when the pairs may use one and there are any."""
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    workers = list(info.get("workers", {}).values())
    gpus = int(sum(w.get("resources", {}).get("GPU", 0) for w in workers)) if gpu else 0
    slots = gpus if gpus else int(sum(w.get("nthreads", 0) for w in workers))
    return len(workers), slots, gpus > 0


def _takes_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _wants_gpu(spec: RunSpec) -> bool:
    return str(spec.device).lower() != "cpu"


class BatchProgress:
    """Counts of the batch (done, skipped, failed, running, workers) and, with ``show``, a tqdm bar of the
    pairs to run with its ETA, and a line on stderr for each pair that fails."""

    def __init__(self, total: int, show: bool):
        from tqdm import tqdm

        self.counts = dict.fromkeys(("done", "skipped", "failed"), 0)
        self.show, self.workers = show, 0
        self.bar = tqdm(total=total, disable=not show, unit="pair", dynamic_ncols=True, file=sys.stdout)

    def add(self, record: Mapping, running: int, ran: bool = True) -> None:
        """Count ``record``; ``ran``: a pair handed out in this batch (the bar and its ETA count those)."""
        self.counts[record["status"] if record["status"] in self.counts else "failed"] += 1
        if ran:
            self.bar.update(1)
        self.running(running)
        if record["status"] == "failed" and self.show:
            self.bar.write(f"rlreg: pair {record['id']} failed: {record['error']}", file=sys.stderr)

    def running(self, running: int, workers: int | None = None) -> None:
        self.workers = self.workers if workers is None else workers
        c = self.counts
        self.bar.set_postfix_str(
            f"done {c['done']}, skipped {c['skipped']}, failed {c['failed']}, running {running} on "
            f"{self.workers} worker{'s' if self.workers != 1 else ''}",
            refresh=True,
        )

    def close(self) -> None:
        self.bar.close()


def register_many(
    pairs: Iterable[BatchPair],
    out_dir: str | Path,
    client=None,
    *,
    force: bool = False,
    retries: int = 2,
    threads_per_pair: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    pair_task: Callable[..., dict] | None = None,
) -> list[dict[str, Any]]:
    """Register every pair into ``<out_dir>/<id>/`` on a Dask cluster and return their summary records
    (``SUMMARY_COLUMNS``), in the order of ``pairs``; ``summary.csv`` and ``report.html`` are written
    into ``out_dir``, also when the batch is stopped (Ctrl-C: the pairs not finished are "not run", and
    ``KeyboardInterrupt`` is raised again).

    ``client``: a ``distributed.Client`` to run on (its cluster is left as it is); None starts a local
    cluster sized to this machine and to the pairs' memory estimate (``batch_cluster.plan_local_cluster``,
    ``workers`` and ``threads_per_pair`` override its choice) and closes it at the end. ``force`` redoes
    pairs whose results are complete; ``retries``: how many more times a pair whose worker died is run.
    ``pair_task``: the function a worker runs for a pair (default ``run_pair``; tests wrap it).
    """
    pairs = [_absolute(pair) for pair in pairs]  # workers may start elsewhere
    check_ids(pairs)
    if not isinstance(retries, int) or retries < 0:
        raise InputError(f"--retries: must be an integer >= 0, got {retries!r}")
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}': is a file, a folder is needed")
    out.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    todo = []
    for pair in pairs:
        state, value = pair_state(pair, out, force)
        if state == "complete":
            records[pair.id] = {**empty_record(pair), **value, "status": "skipped", "attempts": 0}
        elif state == "conflict":
            records[pair.id] = empty_record(pair, "failed", value)
        else:
            todo.append(pair)
    bar = BatchProgress(len(todo), progress)
    for record in records.values():
        bar.add(record, 0, ran=False)
    cluster = None
    try:
        if todo:
            if client is None:
                from .batch_cluster import plan_local_cluster, start_local_cluster

                plan = plan_local_cluster(todo, workers=workers, threads_per_pair=threads_per_pair)
                if progress:
                    bar.bar.write(f"local cluster: {plan.describe()}")
                cluster, client = start_local_cluster(plan)
                threads_per_pair = plan.threads_per_pair
            _run_on(client, todo, out, retries, threads_per_pair, pair_task or run_pair, records, bar)
    finally:
        bar.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                client.close()
            with contextlib.suppress(Exception):
                cluster.close()
        for pair in pairs:
            if pair.id not in records:  # stopped: complete all the same when it ended as the batch stopped
                state, value = pair_state(pair, out)
                records[pair.id] = (
                    {**empty_record(pair), **value, "status": "done", "attempts": 1}
                    if state == "complete"
                    else empty_record(pair, "not run", "the batch was stopped before this pair ended")
                )
            if records[pair.id]["status"] != "skipped":
                remove_partial_files(out / pair.id)
        ordered = [records[p.id] for p in pairs]
        from .batch_report import write_report_html, write_summary_csv

        write_summary_csv(out / "summary.csv", ordered)
        write_report_html(out / "report.html", ordered)
    return ordered


def _absolute(pair: BatchPair) -> BatchPair:
    """``pair`` with absolute paths (relative ones from this process's folder)."""
    from dataclasses import replace

    if not isinstance(pair, BatchPair):
        raise InputError(f"register_many takes BatchPair items, got {type(pair).__name__}")
    files = {
        name: None if value is None else Path(value).expanduser().absolute()
        for name, value in vars(pair.files).items()
        if name != "prefix"
    }
    return replace(pair, files=replace(pair.files, **files))


def check_ids(pairs: list[BatchPair]) -> None:
    """Every pair a ``BatchPair`` with an id of its own (``InputError`` naming the first repeated one)."""
    seen: set[str] = set()
    for pair in pairs:
        if not isinstance(pair, BatchPair):
            raise InputError(f"register_many takes BatchPair items, got {type(pair).__name__}")
        key = pair.id.lower()  # one folder on case-insensitive file systems
        if key in seen:
            raise InputError(f"pair id '{pair.id}' is given twice (each pair needs a folder of its own)")
        seen.add(key)


def _run_on(client, todo, out: Path, retries: int, threads, task, records: dict, bar: BatchProgress) -> None:
    """Hand out the pairs, at most as many at a time as the cluster has slots, and collect the records;
    a pair whose worker died goes back to the front of the queue until its retries are spent. On any
    exception (Ctrl-C) the pairs handed out are cancelled before it goes on."""
    waiting = list(todo)
    waiting.reverse()  # pop() from the end: the pairs in their order
    finished: queue.Queue = queue.Queue()
    running: dict[str, tuple[Any, BatchPair]] = {}
    attempts: dict[str, int] = {}
    gpu = any(_wants_gpu(p.spec) for p in todo)
    sequence = 0
    last_slots, slots = 0.0, 1
    try:
        while waiting or running:
            now = time.monotonic()
            if now - last_slots > 1.0 or not running:
                workers, slots, has_gpus = _capacity(client, gpu)
                bar.running(len(running), workers)
                slots, last_slots = max(1, slots), now
            while waiting and len(running) < slots:
                pair = waiting.pop()
                attempts[pair.id] = attempts.get(pair.id, 0) + 1
                sequence += 1
                key = f"rlreg-pair-{sequence:07d}-{pair.id}"
                future = client.submit(
                    task,
                    pair,
                    str(out),
                    threads,
                    key=key,
                    pure=False,
                    resources={"GPU": 1} if has_gpus and _wants_gpu(pair.spec) else None,
                )
                running[key] = (future, pair)
                future.add_done_callback(finished.put)
            bar.running(len(running))
            try:
                future = finished.get(timeout=1.0)
            except queue.Empty:
                continue
            if future.key not in running:
                continue
            _, pair = running.pop(future.key)
            record = _collect(future, pair, attempts[pair.id], retries)
            if record is None:
                waiting.append(pair)  # its worker died: again, before the others
                continue
            records[pair.id] = record
            bar.add(record, len(running))
    finally:
        if running:
            with contextlib.suppress(Exception):
                client.cancel([f for f, _ in running.values()], force=True)


def _collect(future, pair: BatchPair, attempt: int, retries: int) -> dict | None:
    """The record of a finished future; None when its worker died and it may run again."""
    if future.status == "finished":
        record = future.result()
    else:
        error = future.exception() if future.status == "error" else None
        if error is not None and _is_worker_death(error) and attempt <= retries:
            return None
        if error is not None and _is_worker_death(error):
            worker = getattr(getattr(error, "last_worker", None), "address", None)
            message = (
                f"the worker running it died {attempt} time{'s' if attempt > 1 else ''} (killed, or over "
                f"its memory limit; see the worker's log{f' of {worker}' if worker else ''})"
            )
        elif error is not None:
            message = f"{type(error).__name__}: {' '.join(str(error).split())}"
        else:
            message = f"its task was {future.status}"
        record = empty_record(pair, "failed", message)
    record["attempts"] = attempt
    future.release()
    return record
