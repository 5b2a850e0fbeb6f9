"""``rlreg batch`` without a cluster: the pairs of a CSV table or a BIDS dataset, the local cluster's size,
what counts as complete, folding and memory numbers, one pair in this process, and the report's order.

The runs on a real Dask cluster are in ``test_batch_cluster.py``.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.frontends.batch_cluster import (
    GIB,
    largest_estimate,
    pair_estimate,
    plan_local_cluster,
    worker_specs,
)
from RLRegistrationLib.frontends.batch_pair import (
    PAIR_FILES,
    SUMMARY_COLUMNS,
    BatchPair,
    empty_record,
    folding_percent,
    pair_state,
    run_pair,
)
from RLRegistrationLib.frontends.batch_pairs import pairs_from_bids, pairs_from_csv
from RLRegistrationLib.frontends.batch_report import (
    read_summary_csv,
    worst_first,
    write_report_html,
    write_summary_csv,
)
from RLRegistrationLib.frontends.cli import main
from RLRegistrationLib.frontends.pair_run import PairFiles
from RLRegistrationLib.io.sample_pair import SAMPLE_FILES
from RLRegistrationLib.registration.run_spec import RunSpec

#: a quick run: one step on a 4 mm working grid, no pre-alignment
QUICK = RunSpec(device="cpu", steps=1, spacing_mm=4.0, initialization="none")


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


# ----------------------------------------------------------------------------------------------------
# the pairs of a CSV table


def test_csv_rows_become_pairs_with_their_own_options(tmp_path):
    table = _write_csv(
        tmp_path / "pairs.csv",
        [
            ["id", "fixed", "moving", "fixed_labels", "moving_labels", "steps", "spacing", "Regularization"],
            ["p1", "a/f.nii.gz", "a/m.nii.gz", "a/fl.nii.gz", "a/ml.nii.gz", "3", "", ""],
            ["", "/abs/f.nii.gz", "b/sub-02_T1w.nii.gz", "", "", "", "3", "1.5"],
            ["", "", "", "", "", "", "", ""],  # a blank row is skipped
        ],
    )
    pairs = pairs_from_csv(table, RunSpec(device="cpu", steps=2))
    assert [p.id for p in pairs] == ["p1", "sub-02_T1w"]
    assert pairs[0].files.fixed == tmp_path / "a/f.nii.gz"  # relative to the table's folder
    assert pairs[0].files.moving_labels == tmp_path / "a/ml.nii.gz"
    assert pairs[1].files.fixed == Path("/abs/f.nii.gz")
    assert pairs[0].spec == RunSpec(device="cpu", steps=3)
    assert pairs[1].spec == RunSpec(device="cpu", steps=2, spacing_mm=3.0, regularization=1.5)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["fixed", "moving", "colour"], ["f", "m", "red"]], "unknown column 'colour' (known: id, fixed"),
        ([["fixed", "id"], ["f", "x"]], "the column 'moving' is required"),
        (
            [["fixed", "moving", "steps"], ["f", "m", "x"]],
            "line 2, column steps: must be an integer, got 'x'",
        ),
        (
            [["fixed", "moving", "steps"], ["f", "m", "2"], ["f", "m2", "9999"]],
            "line 3, column steps: must be an integer from 0 to 500, got 9999",
        ),
        ([["fixed", "moving", "quality"], ["f", "m", "best"]], "line 2, column quality: choose from"),
        ([["fixed", "moving", "fixed_labels"], ["f", "m", "fl"]], "line 2: labels: give both"),
        ([["id", "fixed", "moving"], ["a", "f", "m"], ["A", "f", "m2"]], "pair id 'A' is given twice"),
        (
            [["fixed", "moving"], ["f1", "x/m.nii"], ["f2", "y/m.nii.gz"]],
            "2 rows have the moving image name 'm'",
        ),
        ([["id", "fixed", "moving"], ["../up", "f", "m"]], "column id: '../up': use letters"),
        ([["fixed", "moving"], ["", "m"]], "line 2: the fixed image is empty"),
        ([["fixed", "moving"]], "holds no pairs"),
    ],
)
def test_csv_problems_are_one_line_before_any_work(tmp_path, rows, message):
    table = _write_csv(tmp_path / "pairs.csv", rows)
    with pytest.raises(InputError) as error:
        pairs_from_csv(table)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_csv_is_one_line(tmp_path):
    with pytest.raises(InputError, match="pairs '.*nope.csv': cannot be read"):
        pairs_from_csv(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------------------------------
# the pairs of a BIDS dataset


def _bids(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    files = [
        "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz",
        "sub-01/ses-02/anat/sub-01_ses-02_T1w.nii.gz",
        "sub-01/ses-10/anat/sub-01_ses-10_T1w.nii.gz",
        "sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz",
        "sub-02/ses-01/anat/sub-02_ses-01_T1w.nii.gz",  # one session: nothing to register
        "sub-03/ses-a/anat/sub-03_ses-a_run-1_T1w.nii.gz",
        "sub-03/ses-b/anat/sub-03_ses-b_run-1_T1w.nii.gz",
        "sub-03/ses-b/anat/sub-03_ses-b_run-2_T1w.nii.gz",
        "derivatives/x/sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz",
    ]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
    # sub-03's sessions in time: b before a
    (root / "sub-03/sub-03_sessions.tsv").write_text(
        "session_id\tacq_time\nses-a\t2021-05-01\nses-b\t2020-01-01\n"
    )
    return root


def test_bids_later_sessions_onto_the_first(tmp_path):
    root = _bids(tmp_path)
    with pytest.raises(InputError, match=r"--bids sub-03 ses-b: 2 T1w images .* --bids-filter"):
        pairs_from_bids(root)
    pairs, notes = pairs_from_bids(root, RunSpec(steps=3), filters=("run-1",))
    # sub-01 has no run-1 images: with the filter, its sessions have no image
    assert [p.id for p in pairs] == ["sub-03_ses-a"]
    assert pairs[0].files.fixed.name == "sub-03_ses-b_run-1_T1w.nii.gz"  # earlier acq_time
    (root / "sub-03/ses-b/anat/sub-03_ses-b_run-2_T1w.nii.gz").unlink()
    pairs, notes = pairs_from_bids(root)
    assert [p.id for p in pairs] == ["sub-01_ses-02", "sub-01_ses-10", "sub-03_ses-a"]  # ses-2 < ses-10
    assert all(p.files.fixed.name == "sub-01_ses-01_T1w.nii.gz" for p in pairs[:2])
    assert pairs[1].files.moving.name == "sub-01_ses-10_T1w.nii.gz"
    assert any("sub-02: 1 session with a T1w image" in n for n in notes)


def test_bids_every_subject_onto_a_template(tmp_path):
    root = _bids(tmp_path)
    template = tmp_path / "mni.nii.gz"
    template.write_bytes(b"")
    pairs, _ = pairs_from_bids(root, template=template, suffix="FLAIR")
    assert [(p.id, p.files.fixed, p.files.moving.name) for p in pairs] == [
        ("sub-01_ses-02", template, "sub-01_ses-02_FLAIR.nii.gz")
    ]
    with pytest.raises(InputError, match="no dataset_description.json"):
        pairs_from_bids(tmp_path)


# ----------------------------------------------------------------------------------------------------
# the local cluster


def _pairs(n: int, spec: RunSpec = QUICK) -> list[BatchPair]:
    return [BatchPair(f"p{i}", PairFiles("f.nii.gz", f"m{i}.nii.gz"), spec) for i in range(n)]


def test_local_cluster_never_oversubscribes_the_cores():
    plan = plan_local_cluster(_pairs(16), cores=2, memory=16 * GIB, gpus=(), estimate=1 * GIB)
    assert (plan.workers, plan.threads_per_pair) == (2, 1)
    assert plan.memory_limit == pytest.approx(1.25 * GIB, rel=1e-6)  # MEMORY_MARGIN x the estimate
    # few pairs on many cores: a worker per pair, the cores shared among them
    plan = plan_local_cluster(_pairs(3), cores=16, memory=64 * GIB, gpus=(), estimate=1 * GIB)
    assert (plan.workers, plan.threads_per_pair) == (3, 5)
    # memory for 3 workers only: 3 workers with 5 threads each
    plan = plan_local_cluster(
        _pairs(100), cores=16, memory=int(3.5 * 1.25 * 1.2 * GIB), gpus=(), estimate=GIB
    )
    assert (plan.workers, plan.threads_per_pair) == (3, 5)
    # the user's choice wins, the other number follows
    plan = plan_local_cluster(_pairs(100), workers=4, cores=16, memory=64 * GIB, gpus=(), estimate=GIB)
    assert (plan.workers, plan.threads_per_pair) == (4, 4)
    plan = plan_local_cluster(
        _pairs(100), threads_per_pair=4, cores=16, memory=64 * GIB, gpus=(), estimate=GIB
    )
    assert (plan.workers, plan.threads_per_pair) == (4, 4)
    for plan in (
        plan_local_cluster(_pairs(n), cores=c, memory=m * GIB, gpus=(), estimate=GIB)
        for n in (1, 2, 7, 50)
        for c in (1, 2, 3, 8, 64)
        for m in (1, 4, 100)
    ):
        assert plan.workers * plan.threads_per_pair <= max(plan.cores, plan.workers)


def test_one_gpu_per_worker():
    plan = plan_local_cluster(
        _pairs(10, RunSpec(device="cuda")), cores=16, memory=64 * GIB, gpus=("2", "5"), estimate=GIB
    )
    assert (plan.workers, plan.threads_per_pair, plan.gpus) == (2, 8, ("2", "5"))
    specs = worker_specs(plan)
    assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()] == ["2", "5"]
    assert all(s["options"]["resources"] == {"GPU": 1} for s in specs.values())
    assert all(
        s["options"]["nthreads"] == 1 and s["options"]["env"]["OMP_NUM_THREADS"] == "8"
        for s in specs.values()
    )
    cpu = worker_specs(plan_local_cluster(_pairs(4), cores=2, memory=8 * GIB, gpus=(), estimate=GIB))
    assert all(
        "resources" not in s["options"] and "CUDA_VISIBLE_DEVICES" not in s["options"]["env"]
        for s in cpu.values()
    )


def test_the_clusters_estimate_is_the_runs_own(small_pair, tmp_path):
    """The memory limit's estimate (the largest pair by header, for each run setting) is the estimate the
    pair's own run records."""
    small = BatchPair("small", PairFiles(**small_pair), QUICK)
    files = PairFiles(*(SAMPLE_FILES[k] for k in ("fixed", "moving", "fixed_labels", "moving_labels")))
    large = BatchPair("large", files, QUICK.replace(spacing_mm=None))
    estimate = largest_estimate([small, large])
    assert estimate == pair_estimate(large) > pair_estimate(small) > 0
    record = run_pair(large, tmp_path, threads=1)
    assert record["status"] == "done", record
    assert record["estimated_memory_gib"] == round(estimate / GIB, 4)
    # one estimate per run setting, of its largest pair; none when nothing can be read
    assert largest_estimate([small]) == pair_estimate(small)
    assert largest_estimate([BatchPair("x", PairFiles("/nope.nii.gz", files.moving), QUICK)]) is None
    plan = plan_local_cluster(
        [BatchPair("x", PairFiles("/nope.nii.gz", files.moving), QUICK)] * 1, cores=2, memory=8 * GIB, gpus=()
    )
    assert plan.estimate is None and plan.memory_limit == int(0.9 * 8 * GIB)


# ----------------------------------------------------------------------------------------------------
# what one pair gives


def test_folding_in_slabs_counts_as_the_library_does():
    from RLRegistrationLib.fields.metrics import jacobian_of_field, jacobian_stats

    rng = np.random.default_rng(3)
    field = rng.normal(size=(3, 23, 19, 17)).cumsum(axis=1).cumsum(axis=2)  # smooth-ish, folds in places
    image = sitk.GetImageFromArray(np.moveaxis(field, 0, -1).astype(np.float64) * 0.4, isVector=True)
    image.SetSpacing((1.5, 2.0, 2.5))
    image.SetDirection((0, 1, 0, 0.8, 0, 0.6, 0.6, 0, -0.8))
    import RLRegistrationLib.frontends.batch_pair as batch

    expected = jacobian_stats(jacobian_of_field(image))["folding_percent"]
    assert 1 < expected < 99
    for slab in (1 << 18, 17 * 19 * 2, 17 * 19):  # whole, 2 planes, 1 plane per slab
        batch.FOLDING_SLAB_VOXELS, saved = slab, batch.FOLDING_SLAB_VOXELS
        try:
            assert folding_percent(image) == pytest.approx(expected, abs=1e-9)
        finally:
            batch.FOLDING_SLAB_VOXELS = saved


def _record_files(folder: Path, spec: RunSpec, pair: BatchPair) -> None:
    folder.mkdir(parents=True)
    for name in PAIR_FILES.values():
        (folder / name).write_text("x")
    (folder / "config.json").write_text(json.dumps(spec.to_dict()))
    record = {**empty_record(pair, "done"), "dice": 0.8}
    (folder / "report.json").write_text(json.dumps({"summary": record, "inputs": pair.inputs()}))


def test_complete_results_are_skipped_and_partial_ones_redone(tmp_path):
    pair = BatchPair("p", PairFiles("f.nii.gz", "m.nii.gz"), QUICK)
    assert pair_state(pair, tmp_path) == ("run", None)
    _record_files(tmp_path / "p", QUICK, pair)
    state, record = pair_state(pair, tmp_path)
    assert state == "complete" and record["dice"] == 0.8
    assert pair_state(pair, tmp_path, force=True) == ("run", None)
    # other settings or inputs: kept, and the pair fails saying so
    state, message = pair_state(BatchPair("p", pair.files, QUICK.replace(steps=2)), tmp_path)
    assert (
        state == "conflict" and "other run settings (steps: 1 there, 2 now); --force replaces them" in message
    )
    state, message = pair_state(BatchPair("p", PairFiles("f.nii.gz", "n.nii.gz"), QUICK), tmp_path)
    assert state == "conflict" and "other input files (moving: 'm.nii.gz' there, 'n.nii.gz' now)" in message
    # a replacement cut short between two renames: the transform newer than the report
    later = time.time() + 5
    os.utime(tmp_path / "p/transform.h5", (later, later))
    assert pair_state(pair, tmp_path) == ("run", None)
    # a file missing
    os.utime(tmp_path / "p/transform.h5", (later - 10, later - 10))
    assert pair_state(pair, tmp_path)[0] == "complete"
    (tmp_path / "p/qc.png").unlink()
    assert pair_state(pair, tmp_path) == ("run", None)


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory) -> dict[str, Path]:
    """The sample pair at 4 mm (fast to register) and its labels."""
    folder = tmp_path_factory.mktemp("small")
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
    return files


def test_one_pair_in_this_process(small_pair, tmp_path):
    pair = BatchPair("one", PairFiles(**small_pair), QUICK)
    record = run_pair(pair, tmp_path, threads=1)
    assert record["status"] == "done", record
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(PAIR_FILES.values())
    assert set(record) == set(SUMMARY_COLUMNS)
    assert 0 < record["dice_before"] < record["dice"] < 1
    assert record["similarity_gain"] == pytest.approx(
        record["similarity_after"] - record["similarity_before"], abs=2e-5
    )
    assert 0 <= record["folding_percent"] < 1
    assert record["peak_memory_gib"] > 0 and record["estimated_memory_gib"] > 0.4  # the runtime alone: 0.4
    assert record["device"].startswith("cpu (1 thread")
    report = json.loads((tmp_path / "one/report.json").read_text())
    assert report["summary"]["dice"] == record["dice"] and len(report["steps"]) == 2
    assert json.loads((tmp_path / "one/config.json").read_text()) == QUICK.to_dict()
    assert pair_state(pair, tmp_path)[0] == "complete"


def test_a_bad_pair_fails_with_registers_own_line(small_pair, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(small_pair["moving"].read_bytes()[:3000])  # cut short
    far = sitk.ReadImage(str(small_pair["moving"]))
    far.SetOrigin(tuple(o + 900.0 for o in far.GetOrigin()))
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    for moving in (corrupt, tmp_path / "far.nii.gz", tmp_path / "absent.nii.gz"):
        pair = BatchPair("bad", PairFiles(small_pair["fixed"], moving), QUICK)
        record = run_pair(pair, tmp_path / "out", threads=1)
        code = main(
            [
                "register",
                str(small_pair["fixed"]),
                str(moving),
                "-o",
                str(tmp_path / "t.h5"),
                "--quiet",
                "--device",
                "cpu",
                "--steps",
                "1",
                "--spacing",
                "4",
                "--initialization",
                "none",
            ]
        )
        expected = capsys.readouterr().err.strip()
        assert code == 2 and expected.startswith("rlreg: error: ")
        assert record["status"] == "failed"
        assert record["error"] == expected[len("rlreg: error: ") :]
        assert not (tmp_path / "out/bad").exists()  # nothing left behind


# ----------------------------------------------------------------------------------------------------
# the summary and the report


def _done(ident: str, gain: float, folding: float, dice: float | None = None) -> dict:
    record = empty_record(BatchPair(ident, PairFiles("f", "m")), "done")
    record.update(
        similarity_before=0.2,
        similarity_after=0.2 + gain,
        similarity_gain=gain,
        folding_percent=folding,
        dice=dice,
    )
    return record


def test_the_pairs_that_need_a_look_come_first(tmp_path):
    records = [_done(f"ok{i}", 0.10 + 0.01 * i, 0.0) for i in range(20)]
    records += [_done("flat", 0.001, 0.0), _done("folded", 0.15, 2.5), _done("fine", 0.2, 0.0)]
    records.append(
        {
            **empty_record(
                BatchPair("broken", PairFiles("f", "m")), "failed", "moving image 'm<b>': file not found"
            )
        }
    )
    ordered = [(r["id"], why) for r, why in worst_first(records)]
    assert ordered[0] == ("broken", "failed")
    assert set(ordered[1:3]) == {("flat", "lowest similarity gain #1"), ("folded", "highest folding #1")}
    write_summary_csv(tmp_path / "summary.csv", records)
    rows = read_summary_csv(tmp_path / "summary.csv")
    assert list(rows[0]) == list(SUMMARY_COLUMNS) and len(rows) == len(records)
    assert rows[-1]["error"] == "moving image 'm<b>': file not found" and rows[-1]["dice"] is None
    write_report_html(tmp_path / "report.html", records)
    page = (tmp_path / "report.html").read_text()
    assert page.count("<tr class=") == len(records)
    assert page.index(">broken<") < page.index(">flat<") < page.index(">ok0<")
    assert 'src="flat/qc.png"' in page and 'src="broken/qc.png"' not in page
    assert "m&lt;b&gt;" in page and "m<b>" not in page


def test_cli_refusals_are_one_line(tmp_path, capsys):
    table = _write_csv(tmp_path / "p.csv", [["fixed", "moving"], ["f", "m"]])
    for argv, message in (
        (["batch", "--out", str(tmp_path / "o")], "give PAIRS.csv or --bids DIR"),
        (
            ["batch", str(table), "--bids", str(tmp_path), "--out", str(tmp_path / "o")],
            "give PAIRS.csv or --bids",
        ),
        (["batch", str(table), "--out", str(tmp_path / "o"), "--cluster", "slurm"], "give --workers N"),
        (
            [
                "batch",
                str(table),
                "--out",
                str(tmp_path / "o"),
                "--scheduler",
                "tcp://x:1",
                "--cluster",
                "pbs",
            ],
            "give one of them",
        ),
        (
            ["batch", str(table), "--out", str(tmp_path / "o"), "--steps", "-3"],
            "--steps: must be an integer from 0",
        ),
        (
            ["batch", str(table), "--out", str(tmp_path / "o"), "--policy", "nope"],
            "--policy: unknown policy 'nope'",
        ),
        (
            ["batch", str(table), "--out", str(tmp_path / "o"), "--cluster-options", "{}"],
            "goes with --cluster",
        ),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rlreg: error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()
