"""``rlreg register`` and ``rlreg demo``: a command line walked once, from the options to the written files.

1. the options become a ``RunSpec`` and an ``OutputSet``, both checked before any image is read;
2. the policy and its options are checked (the registry, no image);
3. the inputs are read and checked (``io.imaging``), the session is built from the spec
   (``registration.run_spec.build_session``: labels, masks and the memory estimate are checked there);
4. the steps run with a progress bar; 5. every output is written, all or nothing (a signal that arrives
   while they are put in place is held until all of them are: ``written_then_interrupted`` says so).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import InputError
from ..io.outputs import OutputSet, write_json
from ..io.sample_pair import SAMPLE_DIR
from ..registration.run_spec import build_session, check_policy
from .cli_parser import spec_from_args
from .pair_run import OUTPUT_OPTIONS, PairFiles, report_dict, result_writers

DEMO_FILES = {
    "transform": "transform.h5",
    "warped": "warped.nii.gz",
    "displacement": "displacement.nii.gz",
    "weight_map": "weight_map.nii.gz",
    "qc": "qc.png",
    "report": "report.json",
}


def run_with_progress(session, steps: int, quiet: bool = False):
    """Run ``steps`` steps with a progress bar and one line per step; returns the result. CUDA out of
    memory becomes a one-line ``DeviceError``."""
    from tqdm import tqdm

    from ..devices import describe_device, is_out_of_memory
    from ..errors import DeviceError
    from ..fields.intensity_mapping import mapping_summary

    try:
        initial = session.prepare()
        if not quiet:
            dice = f"  dice {initial.dice:.4f}" if initial.dice is not None else ""
            print(
                f"prepared in {initial.step_seconds:.1f} s on {describe_device(session.device)}; working grid "
                f"{'x'.join(map(str, session.grid.size))} at {session.grid.spacing[0]:.2f} mm; "
                f"after {session.initialization}: ncc {initial.similarity:.4f}{dice}"
            )
            for note in session.decisions.notes:
                print(note)
        if session.decisions.deformable_blocked:
            steps = 0  # the session keeps the linear result (its note said why): no bar of steps to come
        with tqdm(
            total=steps, disable=quiet or not steps, unit="step", dynamic_ncols=True, file=sys.stdout
        ) as bar:
            for report in session.run(steps):
                bar.update(1)
                if quiet:
                    continue
                mapping = mapping_summary(report.diagnostics) if report.index == 1 else None
                if mapping:
                    bar.write(f"{mapping}; --intensity-mapping off compares the images as they are")
                bar.write(step_line(report, session.step_count - report.index + steps))
        result, verdicts = session.final_result()  # do no harm: a stage that did not help is dropped
    except RuntimeError as error:
        if is_out_of_memory(error):
            raise DeviceError(
                f"out of GPU memory on {session.device} ({'x'.join(map(str, session.grid.size))} working grid); "
                "use --device cpu or a coarser --spacing"
            ) from None
        raise
    if not quiet:
        for verdict in verdicts[len(session.decisions.verdicts) :]:  # the deformable one
            print(verdict.summary())
    return result


def written_then_interrupted(outputs: OutputSet, interrupt: KeyboardInterrupt) -> KeyboardInterrupt:
    """``interrupt``, marked with the outputs already in place (the CLI's message then says so)."""
    if outputs.written:
        interrupt.written = list(outputs.written)
    return interrupt


def step_line(report, total: int) -> str:
    """One progress line: step, local NCC, Dice, time per step, largest displacement (, uncertainty)."""
    dice = f"  dice {report.dice:.4f}" if report.dice is not None else ""
    spread = (
        f"  uncertainty {report.uncertainty_mean_mm:.2f} mm (mean)"
        if report.uncertainty_mean_mm is not None
        else ""
    )
    return (
        f"step {report.index:3d}/{total}  ncc {report.similarity:.4f}{dice}  "
        f"{1000 * report.step_seconds:.0f} ms/step  max |u| {report.max_displacement_mm:.1f} mm{spread}"
    )


def cmd_register(args) -> int:
    """``rlreg register FIXED MOVING -o T.h5 [...]``."""
    spec = spec_from_args(args)
    files = PairFiles(
        args.fixed, args.moving, args.fixed_labels, args.moving_labels, args.fixed_mask, args.moving_mask
    )
    files.check()
    outputs = OutputSet(
        {
            "transform": args.output,
            "warped": args.warped,
            "displacement": args.displacement,
            "jacobian": getattr(args, "jacobian", None),
            "weight_map": args.weight_map,
            "uncertainty": args.uncertainty,
            "qc": args.qc,
            "report": args.report,
            "config": args.save_config,
        },
        args.overwrite,
        files.roles(),
        OUTPUT_OPTIONS,
    )
    outputs.check()
    if args.uncertainty and spec.samples < 2:
        raise InputError(
            "--uncertainty needs --samples K > 1 (the map is the spread of K sampled trajectories)"
        )
    check_policy(spec)
    inputs = files.read()
    session, plan = build_session(spec, **inputs, keep_steps=False)
    if not args.quiet:
        print("\n".join(plan.notes))
    start = time.perf_counter()
    result = run_with_progress(session, plan.steps, args.quiet)
    title = f"{spec.policy}: {Path(args.moving).name}"
    writers = result_writers(
        result, inputs["fixed"], inputs["moving"], outputs, spec, title, report_dict(result)
    )
    try:
        outputs.write(writers)
        if not args.quiet:
            print(f"done in {time.perf_counter() - start:.1f} s; transform written to {args.output}")
    except KeyboardInterrupt as interrupt:
        raise written_then_interrupted(outputs, interrupt) from None
    return 0


def cmd_demo(args) -> int:
    """``rlreg demo``: the embedded sample pair, every output in ``--out-dir``."""
    import json

    import SimpleITK as sitk

    from ..fields.metrics import evaluate_transform, evaluation_labels

    spec = spec_from_args(args)
    labels = tuple(v for v in evaluation_labels() if v not in (31, 63))  # absent in SynthSeg maps
    spec = spec.replace(dice_labels=labels)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out-dir '{out}' is a file")
    names = dict(DEMO_FILES, **({"uncertainty": "uncertainty.nii.gz"} if spec.samples > 1 else {}))
    files = PairFiles(
        SAMPLE_DIR / "fixed.nii.gz",
        SAMPLE_DIR / "moving.nii.gz",
        SAMPLE_DIR / "fixed_labels.nii.gz",
        SAMPLE_DIR / "moving_labels.nii.gz",
        prefix="sample ",
    )
    check_policy(spec)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        outputs = OutputSet(
            {k: out / v for k, v in names.items()},
            args.overwrite,
            files.roles(),
            {k: f"--out-dir {v}" for k, v in names.items()},
        )
        outputs.check()
        inputs = files.read()
        if not args.quiet:
            print(f"sample pair: {SAMPLE_DIR} (synthetic T1-like brains of two SynthSeg subjects, 2 mm)")
        session, plan = build_session(spec, **inputs)
        start = time.perf_counter()
        result = run_with_progress(session, plan.steps, args.quiet)
        summary = {}

        def report(path: Path) -> None:
            # the written .h5 (complete, not yet in place), read back, must give the Dice the session reported
            written = sitk.ReadTransform(str(outputs.staged_path("transform")))
            check = evaluate_transform(
                inputs["fixed_labels"],
                inputs["moving_labels"],
                written,
                list(labels),
                with_hd95=True,
                displacement=result.displacement,
            )
            summary.update(
                dice_after_affine=result.reports[0].dice,
                dice_final_session=result.reports[-1].dice,
                dice_final_from_h5=check["dice"],
                hd95_mm=check["hd95_mm"],
                folding_percent=check["folding_percent"],
                sdlogj=check["sdlogj"],
                seconds=time.perf_counter() - start,
            )
            write_json({**report_dict(result), "summary": summary})(path)

        title = f"rlreg demo ({spec.policy})"
        writers = result_writers(result, inputs["fixed"], inputs["moving"], outputs, spec, title, {})
        try:
            outputs.write({**writers, "report": report})
        except KeyboardInterrupt as interrupt:
            raise written_then_interrupted(outputs, interrupt) from None
    except BaseException:
        if created:
            try:
                out.rmdir()  # only when still empty
            except OSError:
                pass
        raise
    if not args.quiet:
        print(json.dumps(summary, indent=2))
        print(f"results in {out}/: {', '.join(names.values())}")
    return 0
