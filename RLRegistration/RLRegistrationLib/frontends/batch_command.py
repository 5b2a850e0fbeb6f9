"""``rlreg batch``: many pairs (a CSV table or a BIDS dataset) on a Dask cluster, a thin layer over
``batch.register_many``.

    rlreg batch pairs.csv --out results/
    rlreg batch --bids /data/study --out results/ --cluster slurm --workers 20 \\
        --cluster-options '{"queue": "short", "cores": 4, "processes": 4, "memory": "16GB", "walltime": "02:00:00"}'

Exit codes: 0 every pair registered (or complete from an earlier run), 1 some pairs failed (their errors
in ``summary.csv``), 2 the batch was refused before any pair ran, 128 + the signal's number when stopped
(Ctrl-C: the pairs complete stay, a re-run does the rest).
"""

from __future__ import annotations

import sys

from ..errors import InputError


def read_pairs(args, base):
    """The pairs a command line names, and notes on what a BIDS dataset left out."""
    from .batch_pairs import pairs_from_bids, pairs_from_csv

    if bool(args.pairs) == bool(args.bids):
        raise InputError("give PAIRS.csv or --bids DIR (one of them)")
    if args.bids:
        return pairs_from_bids(
            args.bids, base, args.template, args.bids_suffix, tuple(args.bids_filter or ())
        )
    if args.template:
        raise InputError("--template goes with --bids")
    return pairs_from_csv(args.pairs, base), []


def cmd_batch(args) -> int:
    """``rlreg batch``: check everything that can be checked, then ``register_many``."""
    from ..registration.run_spec import check_policy
    from .batch import register_many
    from .batch_cluster import cluster_options, connect, start_jobqueue_cluster
    from .cli_parser import spec_from_args

    if args.scheduler and args.cluster:
        raise InputError("--scheduler and --cluster: give one of them")
    if args.cluster_options and not args.cluster:
        raise InputError("--cluster-options goes with --cluster")
    if args.cluster and not args.workers:
        raise InputError(f"--cluster {args.cluster}: give --workers N (how many worker processes to start)")
    for option in ("workers", "threads_per_pair"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise InputError(f"--{option.replace('_', '-')}: must be at least 1, got {value}")
    if args.retries < 0:
        raise InputError(f"--retries: must be 0 or more, got {args.retries}")
    base = spec_from_args(args)
    pairs, notes = read_pairs(args, base)
    for spec in {p.spec for p in pairs}:
        check_policy(spec)
    for note in notes[:10]:
        print(f"rlreg: note: {note}", file=sys.stderr)
    if len(notes) > 10:
        print(f"rlreg: note: ... and {len(notes) - 10} more left out", file=sys.stderr)
    options = cluster_options(args.cluster_options) if args.cluster else {}
    cluster = client = None
    try:
        if args.scheduler:
            client = connect(args.scheduler)
        elif args.cluster:
            cluster, client = start_jobqueue_cluster(args.cluster, options, args.workers)
        records = register_many(
            pairs,
            args.out,
            client,
            force=args.force,
            retries=args.retries,
            threads_per_pair=args.threads_per_pair,
            workers=None if client is not None else args.workers,
            progress=not args.quiet,
        )
    except KeyboardInterrupt as interrupt:
        import signal

        print(
            f"rlreg: cancelled; the pairs complete stay in {args.out}/ (summary.csv), a re-run does the rest",
            file=sys.stderr,
        )
        return 128 + int(getattr(interrupt, "signum", signal.SIGINT))
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    counts = {s: sum(1 for r in records if r["status"] == s) for s in ("done", "skipped", "failed")}
    failed = [r for r in records if r["status"] == "failed"]
    if args.quiet:  # the progress bar printed them as they came
        for record in failed[:10]:
            print(f"rlreg: pair {record['id']} failed: {record['error']}", file=sys.stderr)
        if len(failed) > 10:
            print(f"rlreg: ... and {len(failed) - 10} more failed pairs (summary.csv)", file=sys.stderr)
    else:
        print(
            f"{counts['done']} registered, {counts['skipped']} complete from an earlier run, {counts['failed']} "
            f"failed; summary: {args.out}/summary.csv, report: {args.out}/report.html"
        )
    return 1 if counts["failed"] else 0
