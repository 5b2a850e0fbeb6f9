"""The Dask cluster a batch runs on: a local one sized to this machine and to the pairs' memory estimate,
an existing one (a scheduler's address), or one started through dask-jobqueue (SLURM, PBS, SGE, LSF).

A local cluster has ``workers`` processes (Dask nannies; one task thread each, so a worker registers one
pair at a time) and gives each pair ``threads_per_pair`` torch and SimpleITK threads, with ``workers x
threads_per_pair`` never above the cores this process may use. Each worker's memory limit is the largest
pair's own estimate (``batch.run_estimate``: for each distinct run setting, of its largest pair by the
images' headers) plus what a Dask worker adds, with a margin; there are no more workers than the
available memory holds at that limit (no estimate: the memory shared among the workers, as Dask does).
Where the pairs may use a GPU (``--device auto`` or ``cuda``) and GPUs are present, there is one worker
per GPU, which sees only its own (``CUDA_VISIBLE_DEVICES``) and offers it as the resource ``GPU``.

Worker death is the batch's business (``batch.register_many`` runs the pair again), so the schedulers
started here hand a task whose worker died straight back (``allowed-failures`` 0), and the workers neither
spill nor pause (a pair holds no Dask data; the nanny still ends a worker above 95% of its limit).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .batch_pair import BatchPair

GIB = 1 << 30
#: worker memory limit = margin x the pair's estimate in a worker (``batch_pair.run_estimate``); the nanny ends a worker above 95% of it
MEMORY_MARGIN = 1.25
#: headers read to find the largest pairs for the memory estimate (evenly spread over the pairs)
ESTIMATE_SAMPLE = 500
#: the Dask settings of the clusters started here (see the module doc)
CLUSTER_CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
    "distributed.worker.memory.terminate": 0.95,
}
#: --cluster choice -> dask-jobqueue class
JOBQUEUE_CLUSTERS = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
}


@dataclass(frozen=True)
class ClusterPlan:
    """A local cluster: ``workers`` processes, ``threads_per_pair`` threads per pair, ``memory_limit``
    bytes per worker, ``gpus`` the GPU each worker sees (empty: CPU workers); ``estimate``: the largest
    pair's estimated peak memory (bytes; None when no header could be read)."""

    workers: int
    threads_per_pair: int
    memory_limit: int
    gpus: tuple[str, ...] = ()
    estimate: int | None = None
    cores: int = 1

    def describe(self) -> str:
        gpu = f", one GPU each ({', '.join(self.gpus)})" if self.gpus else ""
        estimate = f"; largest pair estimated at {self.estimate / GIB:.2f} GiB" if self.estimate else ""
        return (
            f"{self.workers} worker{'s' if self.workers > 1 else ''} x {self.threads_per_pair} "
            f"thread{'s' if self.threads_per_pair > 1 else ''} on {self.cores} cores{gpu}, memory limit "
            f"{self.memory_limit / GIB:.2f} GiB per worker{estimate}"
        )


def usable_cores() -> int:
    """The cores this process may run on (its affinity; the CPU count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def available_memory() -> int:
    """Bytes of memory available now (psutil)."""
    import psutil

    return int(psutil.virtual_memory().available)


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries (empty without CUDA)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [v.strip() for v in visible.split(",") if v.strip()]
        return tuple(entries[:count])
    return tuple(str(i) for i in range(count))


def header_voxels(path: str | Path) -> int | None:
    """Voxels of an image file from its header (None: a folder, or not readable)."""
    import SimpleITK as sitk

    if Path(path).is_dir():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return int(math.prod(reader.GetSize()))


def pair_estimate(pair: BatchPair) -> int | None:
    """The pair's own estimate of its peak memory (bytes), as its run makes it (``batch.run_estimate``:
    its images read, its session built); None when that fails (the pair's own run will say why)."""
    from ..registration.run_spec import build_session
    from .batch_pair import run_estimate

    try:
        inputs = pair.files.read()
        session, _ = build_session(pair.spec, **inputs)
        return run_estimate(inputs, session.options)
    except Exception:  # noqa: BLE001 (any refusal: no estimate from this pair)
        return None


def largest_estimate(pairs: list[BatchPair], sample: int = ESTIMATE_SAMPLE, tries: int = 2) -> int | None:
    """The largest pair estimate over the pairs' run settings: for each distinct ``RunSpec`` (at most 20),
    the estimate of its largest pair by the images' headers (of at most ``sample`` pairs, evenly spread),
    or of the next largest when that one cannot be estimated. None if no pair could be."""
    if len(pairs) > sample:
        pairs = [pairs[round(i * (len(pairs) - 1) / (sample - 1))] for i in range(sample)]
    groups: dict[Any, list[tuple[int, BatchPair]]] = {}
    for pair in pairs:
        sizes = [header_voxels(pair.files.fixed), header_voxels(pair.files.moving)]
        if None not in sizes:
            groups.setdefault(pair.spec, []).append((sum(sizes), pair))
    estimates = []
    for group in list(groups.values())[:20]:
        group.sort(key=lambda item: -item[0])
        estimate = next((e for _, p in group[:tries] if (e := pair_estimate(p)) is not None), None)
        if estimate is not None:
            estimates.append(estimate)
    return max(estimates) if estimates else None


def plan_local_cluster(
    pairs: list[BatchPair],
    workers: int | None = None,
    threads_per_pair: int | None = None,
    cores: int | None = None,
    memory: int | None = None,
    gpus: tuple[str, ...] | None = None,
    estimate: int | None = None,
) -> ClusterPlan:
    """The local cluster for ``pairs`` on this machine (``cores``, ``memory`` available, ``gpus``: this
    machine's unless given; ``estimate``: the largest pair's, read from headers unless given).

    On CPUs, one thread per pair and one worker per core, fewer when the memory holds fewer workers or
    there are fewer pairs, and then the cores shared among them; ``workers`` or ``threads_per_pair``
    given, the other one follows. On GPUs, one worker per GPU (at most one per pair), each with an equal
    share of the cores.
    """
    cores = cores or usable_cores()
    memory = memory if memory is not None else available_memory()
    if gpus is None:
        gpus = visible_gpus() if any(str(p.spec.device).lower() != "cpu" for p in pairs) else ()
    if estimate is None:
        estimate = largest_estimate(pairs)
    if workers is not None and workers < 1:
        raise InputError(f"--workers: must be at least 1, got {workers}")
    if threads_per_pair is not None and threads_per_pair < 1:
        raise InputError(f"--threads-per-pair: must be at least 1, got {threads_per_pair}")
    limit = None if estimate is None else int(math.ceil(MEMORY_MARGIN * estimate))
    fitting = max(1, int(0.9 * memory // limit)) if limit else len(pairs) or 1
    if gpus:
        count = workers or min(len(gpus), max(1, len(pairs)))
        gpus = tuple(gpus[i % len(gpus)] for i in range(count))
    elif workers is None:
        count = max(1, cores // (threads_per_pair or 1))
        count = max(1, min(count, fitting, len(pairs) or 1))
    else:
        count = workers
    threads = threads_per_pair or max(1, cores // count)
    if limit is None:  # no estimate: the memory shared among the workers, as Dask does by default
        limit = max(1 << 30, int(0.9 * memory // count))
    return ClusterPlan(count, threads, limit, tuple(gpus), estimate, cores)


def worker_specs(plan: ClusterPlan) -> dict[str, dict]:
    """The nanny of each worker of a ``SpecCluster`` (names ``cpu-0``... or ``gpu-0``...)."""
    from distributed import Nanny

    threads = str(plan.threads_per_pair)
    specs = {}
    for i in range(plan.workers):
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        options: dict[str, Any] = {
            "nthreads": 1,
            "memory_limit": plan.memory_limit,
            "host": "127.0.0.1",
            "dashboard": False,
            "silence_logs": logging.ERROR,
        }
        if plan.gpus:
            env["CUDA_VISIBLE_DEVICES"] = plan.gpus[i]
            options["resources"] = {"GPU": 1}
        options["env"] = env
        specs[f"{'gpu' if plan.gpus else 'cpu'}-{i}"] = {"cls": Nanny, "options": options}
    return specs


def start_local_cluster(plan: ClusterPlan):
    """``(cluster, client)``: the local cluster of ``plan`` (a ``distributed.SpecCluster``) and a client."""
    import dask
    from distributed import Client, Scheduler, SpecCluster

    specs = worker_specs(plan)
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False}}
    with dask.config.set(CLUSTER_CONFIG):
        cluster = SpecCluster(
            workers=specs,
            scheduler=scheduler,
            worker=next(iter(specs.values())),
            silence_logs=logging.ERROR,
            name="rlreg-batch",
        )
    try:
        client = Client(cluster)
        client.wait_for_workers(plan.workers, timeout=120)
    except BaseException:
        cluster.close()
        raise
    return cluster, client


def connect(address: str, timeout: float = 30):
    """A client of the scheduler at ``address`` (``InputError`` when it cannot be reached)."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"--scheduler {address}: cannot connect ({message})") from None


def cluster_options(text: str | None) -> dict:
    """``--cluster-options``: a JSON object, or ``@file.json`` holding one."""
    if not text:
        return {}
    source = "--cluster-options"
    if text.startswith("@"):
        source = f"--cluster-options file '{text[1:]}'"
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as error:
            raise InputError(f"{source}: cannot be read ({error.strerror or error})") from None
    try:
        values = json.loads(text)
    except ValueError as error:
        raise InputError(f"{source}: not a JSON object ({error})") from None
    if not isinstance(values, dict):
        raise InputError(f'{source}: a JSON object is required, e.g. {{"queue": "short", "cores": 4}}')
    return values


def start_jobqueue_cluster(kind: str, options: dict, workers: int):
    """``(cluster, client)``: a dask-jobqueue cluster of ``kind`` (slurm, pbs, sge, lsf; ``local``: its
    test cluster of local processes) with ``options`` (the class's keywords; the rest from dask-jobqueue's
    configuration), scaled to ``workers`` worker processes."""
    import dask

    try:
        dask_jobqueue = _import_jobqueue()
    except ImportError:
        raise InputError(
            f"--cluster {kind}: dask-jobqueue is not installed (pip install 'rlregistration[batch]')"
        ) from None
    if kind == "local":
        from dask_jobqueue.local import LocalCluster as cls
    elif kind in JOBQUEUE_CLUSTERS:
        cls = getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[kind])
    else:
        raise InputError(f"--cluster: choose from {', '.join(JOBQUEUE_CLUSTERS)}, got {kind!r}")
    submit = getattr(getattr(cls, "job_cls", None), "submit_command", None)
    if kind != "local" and submit and shutil.which(submit.split()[0]) is None:
        raise InputError(
            f"--cluster {kind}: '{submit.split()[0]}' is not found here (run rlreg batch where jobs are "
            "submitted, e.g. the cluster's login node)"
        )
    try:
        with dask.config.set(CLUSTER_CONFIG):
            cluster = cls(**options)
    except (TypeError, ValueError) as error:
        raise InputError(f"--cluster-options: {kind}: {' '.join(str(error).split())}") from None
    try:
        from distributed import Client

        cluster.scale(workers)
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    return cluster, client


def _import_jobqueue():
    """``dask_jobqueue``, imported without the SIGINT handler it installs for the whole process (its
    ``runner`` module makes Ctrl-C a ``sys.exit()``: exit code 0, the batch's cleanup skipped)."""
    import signal

    previous = signal.getsignal(signal.SIGINT)
    try:
        import dask_jobqueue
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return dask_jobqueue
