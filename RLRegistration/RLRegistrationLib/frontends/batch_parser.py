"""The ``batch`` subcommand's arguments (``rlreg batch``); ``batch_command.cmd_batch`` runs it.

Kept apart from ``batch_command`` so that ``cli_parser`` builds the whole parser without importing the
command, which itself uses ``cli_parser.spec_from_args`` (no import cycle).
"""

from __future__ import annotations

import argparse

CLUSTERS = ("slurm", "pbs", "sge", "lsf")


def add_batch_parser(commands, add_run_options) -> argparse.ArgumentParser:
    """The ``batch`` subcommand of ``rlreg`` (``add_run_options``: ``cli_parser``'s run options)."""
    batch = commands.add_parser(
        "batch",
        help="register many pairs (a CSV table or a BIDS dataset) on a Dask cluster; a re-run resumes",
        description="Register every pair of PAIRS.csv (or of a BIDS dataset) as 'rlreg register' does, each "
        "into OUT/<id>/ (config.json, transform.h5, warped.nii.gz, qc.png, report.json; all or nothing), "
        "on a local Dask cluster, an existing one or one started on SLURM/PBS/SGE/LSF; then OUT/summary.csv "
        "and OUT/report.html (worst pairs first). Pairs already complete are skipped.",
    )
    batch.add_argument(
        "pairs",
        nargs="?",
        metavar="PAIRS.csv",
        help="columns fixed, moving and optionally id, fixed_labels, moving_labels, fixed_mask, moving_mask "
        "and run options per pair (steps, regularization, quality, ...; empty = the batch's); relative paths "
        "are from the CSV's folder",
    )
    batch.add_argument(
        "--out", required=True, metavar="DIR", help="folder of the results (one folder per pair)"
    )
    batch.add_argument("--force", action="store_true", help="redo pairs whose results are complete")
    batch.add_argument(
        "--retries",
        type=int,
        default=2,
        help="times a pair runs again when its worker dies (killed, out of memory); default 2",
    )
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    bids = batch.add_argument_group("BIDS dataset (instead of PAIRS.csv)")
    bids.add_argument(
        "--bids",
        metavar="DIR",
        help="each subject's later sessions onto its first session (or onto --template)",
    )
    bids.add_argument("--template", help="register every subject's image (each session's) onto this image")
    bids.add_argument("--bids-suffix", default="T1w", help="the images' BIDS suffix (default T1w)")
    bids.add_argument(
        "--bids-filter",
        action="append",
        default=[],
        metavar="TEXT",
        help="keep only images whose file name holds TEXT (e.g. acq-mprage, run-1); repeatable",
    )
    where = batch.add_argument_group(
        "where the pairs run (default: a local Dask cluster sized to this machine)"
    )
    where.add_argument("--scheduler", metavar="ADDRESS", help="join a running Dask cluster (tcp://host:8786)")
    where.add_argument(
        "--cluster",
        choices=CLUSTERS,
        help="start workers as batch jobs through dask-jobqueue (needs --workers)",
    )
    where.add_argument(
        "--cluster-options",
        metavar="JSON",
        help='dask-jobqueue options as a JSON object or @file.json, e.g. \'{"queue": "short", "cores": 4, '
        '"processes": 4, "memory": "16GB", "walltime": "02:00:00"}\'',
    )
    where.add_argument(
        "--workers", type=int, help="worker processes (local: default one per core, as memory allows)"
    )
    where.add_argument(
        "--threads-per-pair",
        type=int,
        help="torch threads of each pair (local default: the cores over the workers; elsewhere: the "
        "workers' OMP_NUM_THREADS, which Dask sets to 1 unless configured)",
    )
    add_run_options(batch)
    return batch
