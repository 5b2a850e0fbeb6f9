"""``rlreg batch`` on a real Dask cluster (2 worker processes, 1 thread each, 4 mm pairs): a worker killed
mid-pair, a corrupt input, a worker that keeps dying, Ctrl-C and the re-run, the transform equal to
``rlreg register``'s, and a dask-jobqueue cluster (its local test cluster; the SLURM job script)."""

from __future__ import annotations

import csv
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RLRegistrationLib.frontends.batch import PAIR_FILES, BatchPair, register_many, run_pair
from RLRegistrationLib.frontends.batch_cluster import (
    ClusterPlan,
    start_jobqueue_cluster,
    start_local_cluster,
)
from RLRegistrationLib.frontends.batch_report import read_summary_csv
from RLRegistrationLib.frontends.cli import main
from RLRegistrationLib.frontends.pair_run import PairFiles
from RLRegistrationLib.io.sample_pair import SAMPLE_FILES
from RLRegistrationLib.registration.run_spec import RunSpec

distributed = pytest.importorskip("distributed")

#: one step on a 4 mm working grid
QUICK = RunSpec(device="cpu", steps=1, spacing_mm=4.0, initialization="rigid")
QUICK_OPTIONS = ["--device", "cpu", "--steps", "1", "--spacing", "4", "--initialization", "rigid"]
GIB = 1 << 30


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """The sample pair at 4 mm, and moving images shifted by 2, 4, ... mm (distinct pairs)."""
    folder = tmp_path_factory.mktemp("images")
    files = {}
    for role in ("fixed", "moving"):
        image = sitk.ReadImage(str(SAMPLE_FILES[role]))
        size = [s // 2 for s in image.GetSize()]
        small = sitk.Resample(
            sitk.SmoothingRecursiveGaussian(image, 2.0),
            size,
            sitk.Transform(),
            sitk.sitkLinear,
            image.GetOrigin(),
            (4.0, 4.0, 4.0),
            image.GetDirection(),
        )
        labels = sitk.Resample(
            sitk.ReadImage(str(SAMPLE_FILES[f"{role}_labels"])),
            small,
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
        )
        files[role], files[f"{role}_labels"] = folder / f"{role}.nii.gz", folder / f"{role}_labels.nii.gz"
        sitk.WriteImage(small, str(files[role]))
        sitk.WriteImage(labels, str(files[f"{role}_labels"]))
        if role == "moving":
            for shift in range(1, 6):
                origin = tuple(o + 2.0 * shift * (i == 0) for i, o in enumerate(small.GetOrigin()))
                for name, volume in ((f"moving{shift}", small), (f"moving{shift}_labels", labels)):
                    moved = sitk.Image(volume)
                    moved.SetOrigin(origin)
                    files[name] = folder / f"{name}.nii.gz"
                    sitk.WriteImage(moved, str(files[name]))
    corrupt = folder / "corrupt.nii.gz"
    corrupt.write_bytes(files["moving"].read_bytes()[:2000])  # cut short
    files["corrupt"] = corrupt
    return files


def _pairs(images, n: int, labels: bool = False) -> list[BatchPair]:
    return [
        BatchPair(
            f"pair{i}",
            PairFiles(
                images["fixed"],
                images[f"moving{i}"],
                images["fixed_labels"] if labels else None,
                images[f"moving{i}_labels"] if labels else None,
            ),
            QUICK,
        )
        for i in range(1, n + 1)
    ]


@pytest.fixture(scope="module")
def client():
    """A real local cluster: 2 worker processes (nannies), 1 thread each."""
    cluster, client = start_local_cluster(
        ClusterPlan(workers=2, threads_per_pair=1, memory_limit=3 * GIB, cores=2)
    )
    yield client
    client.close()
    cluster.close()


def _files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def kill_own_worker_once(pair, out_dir, threads=None, *, victim: str, marker: str, always: bool = False):
    """The pair task, but the first attempt at ``victim`` kills its own worker process (SIGKILL, as the
    out-of-memory killer does) once every output is staged and none is in place yet."""
    if pair.id == victim and (always or not os.path.exists(marker)):
        Path(marker).touch()
        import RLRegistrationLib.io.outputs as outputs

        def die(staged, *args):
            assert all(item.temporary.exists() for item in staged)  # the partial files are there
            os.kill(os.getpid(), signal.SIGKILL)

        outputs.commit = die
    return run_pair(pair, out_dir, threads)


def test_a_worker_killed_mid_pair_has_its_pair_done_again(images, client, tmp_path):
    pairs = _pairs(images, 4, labels=True)
    task = functools.partial(kill_own_worker_once, victim="pair2", marker=str(tmp_path / "killed"))
    records = register_many(pairs, tmp_path / "out", client, pair_task=task)
    assert (tmp_path / "killed").exists()
    assert [r["status"] for r in records] == ["done"] * 4, records
    assert [r["attempts"] for r in records] == [1, 2, 1, 1]
    for pair in pairs:  # the five outputs, and no partial file left by the killed attempt
        assert _files_in(tmp_path / "out" / pair.id) == sorted(PAIR_FILES.values())
    rows = read_summary_csv(tmp_path / "out/summary.csv")
    assert [(r["id"], r["status"], r["attempts"]) for r in rows] == [
        ("pair1", "done", "1"),
        ("pair2", "done", "2"),
        ("pair3", "done", "1"),
        ("pair4", "done", "1"),
    ]
    for row in rows:
        assert 0 < float(row["dice_before"]) < float(row["dice"]) < 1
        assert float(row["similarity_after"]) > float(row["similarity_before"])
        # the worker's peak resident memory: within the pair's estimate in a worker (the local cluster's
        # memory limit is MEMORY_MARGIN times it)
        assert 0.3 < float(row["peak_memory_gib"]) <= float(row["estimated_memory_gib"])
        assert row["device"].startswith("cpu (1 thread")
    assert "pair2" in (tmp_path / "out/report.html").read_text()


def test_a_worker_that_keeps_dying_fails_its_pair_only(images, client, tmp_path):
    pairs = _pairs(images, 3)
    task = functools.partial(kill_own_worker_once, victim="pair1", marker=str(tmp_path / "k"), always=True)
    records = register_many(pairs, tmp_path / "out", client, retries=1, pair_task=task)
    assert [r["status"] for r in records] == ["failed", "done", "done"]
    assert records[0]["attempts"] == 2
    assert records[0]["error"].startswith(
        "the worker running it died 2 times (killed, or over its memory limit; see the worker's log of tcp://"
    )
    assert not (tmp_path / "out/pair1").exists() or not any((tmp_path / "out/pair1").iterdir())


def test_a_corrupt_input_fails_alone_with_registers_message(images, client, tmp_path, capsys):
    pairs = _pairs(images, 3)
    pairs[1] = BatchPair("broken", PairFiles(images["fixed"], images["corrupt"]), QUICK)
    records = register_many(pairs, tmp_path / "out", client)
    assert [r["status"] for r in records] == ["done", "failed", "done"]
    code = main(
        ["register", str(images["fixed"]), str(images["corrupt"]), "-o", str(tmp_path / "t.h5"), "--quiet"]
    )
    assert code == 2
    assert "rlreg: error: " + records[1]["error"] == capsys.readouterr().err.strip()
    assert "corrupt.nii.gz" in records[1]["error"]
    assert not (tmp_path / "out/broken").exists()


def test_the_transform_is_registers_own(images, client, tmp_path):
    """The .h5 of a batch pair and of ``rlreg register`` (same spec, same threads) map 1000 points alike."""
    import torch

    pair = _pairs(images, 1, labels=True)[0]
    (record,) = register_many([pair], tmp_path / "out", client)
    assert record["status"] == "done"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run
    try:
        code = main(
            [
                "register",
                str(pair.files.fixed),
                str(pair.files.moving),
                "-o",
                str(tmp_path / "r.h5"),
                "--quiet",
            ]
            + [
                "--fixed-labels",
                str(pair.files.fixed_labels),
                "--moving-labels",
                str(pair.files.moving_labels),
            ]
            + QUICK_OPTIONS
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    batch = sitk.ReadTransform(str(tmp_path / "out/pair1/transform.h5"))
    register = sitk.ReadTransform(str(tmp_path / "r.h5"))
    fixed = sitk.ReadImage(str(pair.files.fixed))
    rng = np.random.default_rng(0)
    corner = np.array(fixed.GetOrigin())
    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    points = corner + rng.random((1000, 3)) * extent  # direction is identity in the sample pair
    moved = np.array([batch.TransformPoint(tuple(p)) for p in points])
    expected = np.array([register.TransformPoint(tuple(p)) for p in points])
    assert np.abs(moved - points).max() > 1.0  # a real deformation
    assert np.abs(moved - expected).max() <= 1e-6


def _write_table(path: Path, pairs: list[BatchPair]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "fixed", "moving"])
        for pair in pairs:
            writer.writerow([pair.id, pair.files.fixed, pair.files.moving])
    return path


def test_ctrl_c_stops_cleanly_and_a_rerun_does_only_the_rest(images, client, tmp_path):
    pairs = _pairs(images, 5)
    table = _write_table(tmp_path / "pairs.csv", pairs)
    out = tmp_path / "out"
    package_root = str(Path(__file__).resolve().parents[1] / "RLRegistration")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "RLRegistrationLib",
        "batch",
        str(table),
        "--out",
        str(out),
        "--workers",
        "1",
    ]
    process = subprocess.Popen(
        command + ["--quiet"] + QUICK_OPTIONS,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches it and its workers
    )
    try:
        deadline = time.monotonic() + 240
        while not any((out / p.id / "report.json").exists() for p in pairs):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr
    assert "rlreg: cancelled; the pairs complete stay" in stderr
    complete = [p.id for p in pairs if (out / p.id / "report.json").exists()]
    assert 1 <= len(complete) < len(pairs)
    before = {i: (out / i / "transform.h5").stat().st_mtime_ns for i in complete}
    rows = {r["id"]: r["status"] for r in read_summary_csv(out / "summary.csv")}
    assert {i for i, s in rows.items() if s == "done"} == set(complete)
    assert {s for i, s in rows.items() if i not in complete} == {"not run"}
    for pair in pairs:  # nothing partial
        folder = out / pair.id
        assert not folder.exists() or _files_in(folder) in ([], sorted(PAIR_FILES.values()))
    records = register_many(pairs, out, client)
    assert {r["id"]: r["status"] for r in records} == {
        p.id: "skipped" if p.id in complete else "done" for p in pairs
    }
    assert {i: (out / i / "transform.h5").stat().st_mtime_ns for i in complete} == before  # not redone
    assert all(_files_in(out / p.id) == sorted(PAIR_FILES.values()) for p in pairs)


def test_jobqueue_cluster_runs_pairs(images, tmp_path):
    """dask-jobqueue's own test cluster (its machinery, local processes for jobs)."""
    if importlib.util.find_spec("dask_jobqueue") is None:
        pytest.skip("dask-jobqueue is not installed")
    cluster, client = start_jobqueue_cluster(
        "local", {"cores": 1, "memory": "3GB", "processes": 1}, workers=1
    )
    try:
        records = register_many(_pairs(images, 2), tmp_path / "out", client)
    finally:
        client.close()
        cluster.close()
    assert [r["status"] for r in records] == ["done", "done"]


def test_slurm_job_script_from_cluster_options(monkeypatch):
    if importlib.util.find_spec("dask_jobqueue") is None:
        pytest.skip("dask-jobqueue is not installed")
    import RLRegistrationLib.frontends.batch_cluster as batch_cluster
    from RLRegistrationLib.errors import InputError
    from RLRegistrationLib.frontends.batch_cluster import cluster_options

    monkeypatch.setattr(batch_cluster.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="--cluster slurm: 'sbatch' is not found here"):
        start_jobqueue_cluster("slurm", {}, workers=1)
    monkeypatch.setattr(batch_cluster.shutil, "which", lambda name: f"/usr/bin/{name}")  # as on a login node

    options = cluster_options(
        '{"queue": "short", "account": "lab", "cores": 4, "processes": 4, "memory": "16GB", '
        '"walltime": "02:00:00", "job_extra_directives": ["--gres=gpu:1"], '
        '"worker_extra_args": ["--resources", "GPU=1"]}'
    )
    cluster, client = start_jobqueue_cluster("slurm", options, workers=0)
    try:
        script = cluster.job_script()
    finally:
        client.close()
        cluster.close()
    for line in (
        "#SBATCH -p short",
        "#SBATCH -A lab",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH -t 02:00:00",
        "#SBATCH --gres=gpu:1",
    ):
        assert line in script, script
    assert "--nworkers 4" in script and "--nthreads 1" in script and "--resources GPU=1" in script


def task_seeing_gpus(pair, out_dir, threads=None):
    """The pair task, noting which GPU its worker was given."""
    record = run_pair(pair, out_dir, threads)
    record["device"] = f"{record['device']} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}"
    return record


def test_one_gpu_per_worker_is_a_resource_each_pair_takes(images, tmp_path):
    """The GPU wiring on CPUs: two workers told they hold GPUs 0 and 1 run the pairs (device auto: here the
    CPU) one pair per GPU at a time, each worker seeing only its own."""
    plan = ClusterPlan(workers=2, threads_per_pair=1, memory_limit=3 * GIB, gpus=("0", "1"), cores=2)
    cluster, client = start_local_cluster(plan)
    try:
        pairs = [BatchPair(p.id, p.files, QUICK.replace(device="auto")) for p in _pairs(images, 3)]
        records = register_many(pairs, tmp_path / "out", client, pair_task=task_seeing_gpus)
        resources = client.run(lambda dask_worker: dict(dask_worker.state.total_resources))
    finally:
        client.close()
        cluster.close()
    assert [r["status"] for r in records] == ["done"] * 3
    assert sorted(resources.values(), key=str) == [{"GPU": 1}, {"GPU": 1}]
    seen = {r["worker"]: r["device"].rsplit("=", 1)[1] for r in records}
    assert set(seen.values()) <= {"0", "1"} and len(set(seen.values())) == len(seen)


def test_importing_dask_jobqueue_leaves_ctrl_c_to_the_batch():
    """dask-jobqueue's ``runner`` turns SIGINT into ``sys.exit()`` for the whole process when imported; the
    batch imports it keeping its own handler (Ctrl-C: exit code 130, the cleanup done)."""
    import signal as signals

    from RLRegistrationLib.frontends.batch_cluster import _import_jobqueue

    if importlib.util.find_spec("dask_jobqueue") is None:
        pytest.skip("dask-jobqueue is not installed")
    before = signals.getsignal(signals.SIGINT)
    _import_jobqueue()
    import dask_jobqueue.runner  # noqa: F401 - already imported: its handler is not set again

    assert signals.getsignal(signals.SIGINT) is before
