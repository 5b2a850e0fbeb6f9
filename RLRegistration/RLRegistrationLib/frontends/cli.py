"""Command line ``rlreg``: register, evaluate, demo, info, train, tune-weight-map, view.

Every expected problem (bad input, existing output, unknown policy, missing GPU) is reported as one line
``rlreg: error: ...`` with exit code 2 and nothing written; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import SimpleITK as sitk

from .. import __version__
from ..devices import describe_device, is_out_of_memory, resolve_device
from ..errors import DeviceError, InputError, InputWarning, RLRegistrationError
from ..fields.intensity_mapping import mapping_summary
from ..fields.metrics import evaluate_transform, evaluation_labels
from ..io.export import check_output_paths, check_transform_suffix, write_image, write_transform
from ..io.imaging import check_same_geometry, read_image, read_label_map
from ..io.masks import MaskWarning, conform_mask
from ..policies.registry import (
    available_policies,
    make_policy,
    policy_default_steps,
    policy_supports_sampling,
)
from ..policies.tto import INTENSITY_MAPPINGS
from ..registration.prealign import INITIALIZATIONS
from ..registration.quality import QUALITY_PRESETS
from ..registration.session import RegistrationResult, RegistrationSession, SessionOptions
from .allocator import reuse_freed_memory

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlreg", description="Step-wise deformable registration of 3D images."
    )
    parser.add_argument("--version", action="version", version=f"rlreg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)

    reg = commands.add_parser("register", help="register MOVING to FIXED and write the transform")
    reg.add_argument("fixed", help="fixed image (NIfTI, NRRD, MHA/MHD, or a DICOM series folder)")
    reg.add_argument("moving", help="moving image")
    reg.add_argument(
        "-o", "--output", required=True, help="output transform (.h5): fixed point -> moving point"
    )
    _add_run_options(reg)
    reg.add_argument("--warped", help="write the moving image resampled on the fixed grid")
    reg.add_argument("--displacement", help="write the displacement field (LPS mm, vector image)")
    reg.add_argument("--weight-map", help="write the regularization weight map (working grid)")
    reg.add_argument(
        "--uncertainty",
        help="write the uncertainty map: spread of the --samples trajectories' displacements (mm, on the "
        "output grid: the fixed image's by default); needs --samples K > 1",
    )
    reg.add_argument("--qc", help="write a QC picture (.png)")
    reg.add_argument("--report", help="write per-step numbers as JSON")
    reg.add_argument("--fixed-labels", help="fixed label map (enables Dice per step)")
    reg.add_argument("--moving-labels", help="moving label map")
    reg.add_argument(
        "--fixed-mask", help="label map (nonzero = inside) restricting the similarity to a fixed-image region"
    )
    reg.add_argument("--moving-mask", help="label map (nonzero = inside) of the moving image's region")
    reg.add_argument("--overwrite", action="store_true", help="replace existing output files")

    ev = commands.add_parser("evaluate", help="Dice/HD95/folding of a transform given label maps")
    ev.add_argument("--transform", required=True, help="transform file (.h5), fixed point -> moving point")
    ev.add_argument("--fixed-labels", required=True)
    ev.add_argument("--moving-labels", required=True)
    ev.add_argument("--labels", default="all", help="'all' (shared labels), '30' (FreeSurfer 30) or 2,3,4")
    ev.add_argument("--no-hd95", action="store_true", help="skip the (slower) HD95")

    demo = commands.add_parser(
        "demo", help="register the embedded sample pair and write results + QC picture"
    )
    demo.add_argument("--out-dir", default="rlreg_demo_output", help="folder for the results")
    _add_run_options(demo)
    demo.add_argument("--overwrite", action="store_true", help="replace existing results in --out-dir")

    commands.add_parser("info", help="version, device and available policies")

    view = commands.add_parser(
        "view",
        help="watch a registration in a browser (web panel on Slicer's rendering; needs the web extra)",
    )
    view.add_argument("fixed", nargs="?", help="fixed image (default: the embedded sample pair)")
    view.add_argument("moving", nargs="?", help="moving image")
    view.add_argument("--fixed-labels", help="fixed label map (Dice per step)")
    view.add_argument("--moving-labels", help="moving label map")
    view.add_argument(
        "--data-dir", help="folder whose images the page may pick from (nothing outside it is readable)"
    )
    view.add_argument(
        "--sample", action="store_true", help="with --data-dir: also offer and preselect the sample pair"
    )
    view.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    view.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)"
    )
    view.add_argument("--autorun", type=int, metavar="N", help="register N steps as soon as the page opens")
    view.add_argument("--policy", help="policy preselected in the panel (default tto)")
    view.add_argument("--steps", type=int, help="steps preselected in the panel (default: the policy's)")
    view.add_argument("--iterations", type=int, help="iterations per step preselected in the panel")
    view.add_argument("--regularization", type=float, help="regularization preselected in the panel")
    view.add_argument("--device", help="device preselected in the panel: auto, cpu or cuda")

    tr = commands.add_parser(
        "train", help="train a SPAC policy (also under torchrun: DistributedDataParallel, no change needed)"
    )
    tr.add_argument("--config", required=True, help="training config JSON (e.g. configs/spac_cpu_small.json)")
    tr.add_argument("--steps", type=int, help="total optimization steps (both stages scaled to this total)")
    tr.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    tr.add_argument("--out", help="model folder for weights.pt + card.json (default models/<id>)")
    tr.add_argument("--run-dir", help="checkpoints and logs (default runs/<id>)")
    tr.add_argument("--device", help="auto, cpu or cuda (default: the config's)")
    tr.add_argument("--shared-dir", help="shared data folder holding synthseg/ (default: the config's)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing model in --out")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")

    wm = commands.add_parser(
        "tune-weight-map",
        help="train a SPAC model's lambda head on where test-time optimization folds (training stage c)",
    )
    wm.add_argument("--model", required=True, help="SPAC model folder (weights.pt + card.json)")
    wm.add_argument("--config", required=True, help="config JSON (e.g. configs/spac_weight_map.json)")
    wm.add_argument("--out", required=True, help="folder for the tuned model (weights.pt + card.json)")
    wm.add_argument("--shared-dir", help="shared data folder holding synthseg/ (default: the config's)")
    wm.add_argument("--overwrite", action="store_true", help="replace an existing model in --out")
    wm.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="tto", help="policy name (see 'rlreg info'); default tto")
    parser.add_argument(
        "--steps",
        type=int,
        help="number of steps (default: the policy's, see 'rlreg info'; 6 for tto)",
    )
    parser.add_argument("--iterations", type=int, help="test-time optimization iterations per step")
    parser.add_argument(
        "--similarity", choices=["ncc", "mind", "mse"], help="ncc (same contrast), mind (multi-modal)"
    )
    parser.add_argument(
        "--intensity-mapping",
        choices=list(INTENSITY_MAPPINGS),
        help="tto: also compare the moving image mapped to the fixed contrast (T1 against T2); auto "
        "(default): when the pre-aligned images correlate below 0.3 (inside both heads)",
    )
    parser.add_argument(
        "--regularization", type=float, help="smoothness weight (default: the policy's; 2.0 for tto)"
    )
    parser.add_argument(
        "--quality",
        choices=list(QUALITY_PRESETS),
        default="standard",
        help="standard (2 mm working grid, at most 112^3 voxels), fine (tto only: 1 mm working grid without "
        "the cap, 4 steps at 4, 4, 2 and 1 mm; on 1 mm brain pairs more accurate than Greedy at 0.4x its "
        "time, up to ~3.4 GiB; ~4.1 GiB for T1 against T2) or followup (fine with regularization 6: two scans of one patient); "
        "benchmarks/RESULTS.md",
    )
    parser.add_argument(
        "--spacing", type=float, help="working grid spacing in mm (default: 2, or 1 with --quality fine)"
    )
    parser.add_argument(
        "--output-grid",
        choices=["fixed", "working"],
        default="fixed",
        help="grid of the written displacement field (default: the fixed image's)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument(
        "--initialization",
        choices=list(INITIALIZATIONS),
        help="linear pre-alignment: affine (rigid then affine, the default), rigid, or none",
    )
    parser.add_argument("--no-affine", action="store_true", help="no pre-alignment (= --initialization none)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (pre-alignment, sampling)")
    parser.add_argument(
        "--samples",
        type=int,
        default=1,
        help="sampled trajectories K (MorphSeek models): the result follows their mean and the uncertainty "
        "map is their spread (default 1: one trajectory)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        help="latent sampling temperature of MorphSeek models (default 0 = deterministic with --samples 1, "
        "1 with --samples K > 1)",
    )
    parser.add_argument(
        "--max-memory",
        type=float,
        metavar="GIB",
        help="refuse up front a registration estimated to need more memory than this "
        "(GiB; default 4, 8 with --quality fine)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _warning_printer(default):
    """``warnings.showwarning`` that prints input warnings as one line ``rlreg: warning: ...`` and hands
    other warnings to ``default``."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            print(f"rlreg: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def entry_point() -> int:
    """The ``rlreg`` command: ``main`` in a process of its own, whose allocator may keep freed memory
    (``allocator.reuse_freed_memory``: a 1 mm ``--quality fine`` run 25.3 -> 19.6 s on 2 CPU threads,
    ``benchmarks/fine_profile.py``)."""
    reuse_freed_memory()
    return main()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # restores warnings.showwarning when the command ends
        warnings.simplefilter("always", InputWarning)
        warnings.showwarning = _warning_printer(warnings.showwarning)
        return _run_command(args)


def _run_command(args) -> int:
    try:
        commands = {
            "register": cmd_register,
            "evaluate": cmd_evaluate,
            "demo": cmd_demo,
            "info": cmd_info,
            "train": cmd_train,
            "tune-weight-map": cmd_tune_weight_map,
            "view": cmd_view,
        }
        return commands[args.command](args)
    except RLRegistrationError as error:
        if args.debug:
            raise
        print(f"rlreg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlreg: cancelled, nothing written", file=sys.stderr)
        return 130


def _sampling_options(args) -> dict:
    """``samples``/``temperature``/``seed`` for policies that sample trajectories; {} when not asked for.
    ``InputError`` for bad values and for policies that cannot sample."""
    samples, temperature = args.samples, args.temperature
    if samples < 1:
        raise InputError(f"--samples must be >= 1, got {samples}")
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"--temperature must be a number >= 0, got {temperature}")
    if samples == 1 and temperature is None:
        return {}
    if args.policy in available_policies() and not policy_supports_sampling(args.policy):
        option = "--samples" if samples != 1 else "--temperature"
        raise InputError(
            f"{option}: policy '{args.policy}' does not sample trajectories (MorphSeek models do; see "
            "'rlreg info')"
        )
    return {"samples": samples, "temperature": temperature, "seed": args.seed}


def _policy_and_options(args) -> tuple:
    """The policy and session options of ``register``/``demo``; fills in ``args.steps`` (the policy's
    default when not given)."""
    preset = QUALITY_PRESETS[args.quality]
    if preset.tto_levels_mm and args.policy != "tto":
        raise InputError(f"--quality {args.quality} sets the tto schedule: use it with --policy tto")
    if args.steps is None:
        args.steps = preset.steps or policy_default_steps(args.policy)
    if args.steps < 0:
        raise InputError(f"--steps must be >= 0, got {args.steps}")
    spacing_from_preset = args.spacing is None
    if spacing_from_preset:
        args.spacing = preset.spacing_mm
    if args.max_memory is None:
        args.max_memory = preset.max_memory_gib
    if not (math.isfinite(args.max_memory) and args.max_memory > 0):
        raise InputError(f"--max-memory must be a number of GiB > 0, got {args.max_memory}")
    device = resolve_device(args.device)
    policy = make_policy(
        args.policy,
        iterations=args.iterations,
        similarity=args.similarity,
        intensity_mapping=args.intensity_mapping,
        regularization=args.regularization if args.regularization is not None else preset.regularization,
        **_sampling_options(args),
        **preset.tto_overrides(args.spacing),
    )
    options = SessionOptions(
        working_spacing_mm=args.spacing,
        max_working_voxels=preset.max_working_voxels,
        initialization=_initialization(args),
        device=str(device),
        seed=args.seed,
        output_grid=args.output_grid,
        max_memory_gib=args.max_memory,
    )
    args.spacing_follows_image = spacing_from_preset and preset.tto_levels_mm is not None
    return policy, options


def no_finer_than_the_image(args, policy, options: SessionOptions, fixed: sitk.Image) -> None:
    """A preset's fine working grid (``--quality fine`` without ``--spacing``) is never finer than the fixed
    image's own finest spacing (a 1 mm grid on a 2 mm image would cost 8x for nothing); its steps keep
    their resolution in mm (on a 2 mm image: the standard schedule)."""
    if getattr(args, "spacing_follows_image", False):
        preset = QUALITY_PRESETS[args.quality]
        options.working_spacing_mm = preset.working_spacing(fixed)
        policy.config.pyramid = preset.tto_overrides(options.working_spacing_mm)["pyramid"]


def _initialization(args) -> str:
    """``--initialization``, with ``--no-affine`` as an alias of ``none`` (default: affine)."""
    if args.no_affine:
        if args.initialization not in (None, "none"):
            raise InputError(f"--no-affine contradicts --initialization {args.initialization}")
        return "none"
    return args.initialization or "affine"


def _read_mask(path: str | None, image: sitk.Image, role: str) -> sitk.Image | None:
    """A mask file conformed to its image (``masks.conform_mask``); a resampling is said on stderr."""
    if not path:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MaskWarning)
        mask = conform_mask(read_label_map(path, role), image, f"{role} '{path}'")
    for warning in caught:
        print(f"rlreg: warning: {warning.message}", file=sys.stderr)
    return mask


def run_registration(session: RegistrationSession, steps: int, quiet: bool = False) -> RegistrationResult:
    """Run ``steps`` steps with a progress bar and one line per step; CUDA OOM becomes a clear error."""
    from tqdm import tqdm

    try:
        initial = session.prepare()
        if not quiet:
            dice = f"  dice {initial.dice:.4f}" if initial.dice is not None else ""
            print(
                f"prepared in {initial.step_seconds:.1f} s on {describe_device(session.device)}; working grid "
                f"{'x'.join(map(str, session.grid.size))} at {session.grid.spacing[0]:.2f} mm; "
                f"after affine: ncc {initial.similarity:.4f}{dice}"
            )
        with tqdm(total=steps, disable=quiet, unit="step", dynamic_ncols=True, file=sys.stdout) as bar:
            for report in session.run(steps):
                bar.update(1)
                if quiet:
                    continue
                dice = f"  dice {report.dice:.4f}" if report.dice is not None else ""
                spread = (
                    f"  uncertainty {report.uncertainty_mean_mm:.2f} mm (mean)"
                    if report.uncertainty_mean_mm is not None
                    else ""
                )
                mapping = mapping_summary(report.diagnostics) if report.index == 1 else None
                if mapping:
                    bar.write(f"{mapping}; --intensity-mapping off compares the images as they are")
                bar.write(
                    f"step {report.index:3d}/{steps}  ncc {report.similarity:.4f}{dice}  "
                    f"{1000 * report.step_seconds:.0f} ms/step  max |u| {report.max_displacement_mm:.1f} mm"
                    f"{spread}"
                )
    except RuntimeError as error:
        if is_out_of_memory(error):
            raise DeviceError(
                f"out of GPU memory on {session.device} ({'x'.join(map(str, session.grid.size))} working grid); "
                "use --device cpu or a coarser --spacing"
            ) from None
        raise
    return session.result()


def _write_outputs(result, moving, outputs: dict, overwrite: bool, fixed=None, title="") -> None:
    write_transform(result.transform, outputs["transform"], overwrite)
    if outputs.get("warped"):
        write_image(result.warp_image(moving), outputs["warped"], overwrite)
    if outputs.get("displacement"):
        write_image(
            sitk.Cast(result.displacement, sitk.sitkVectorFloat32), outputs["displacement"], overwrite
        )
    if outputs.get("weight_map") and result.weight_map is not None:
        write_image(result.weight_map, outputs["weight_map"], overwrite)
    if outputs.get("uncertainty") and result.uncertainty_map is not None:
        write_image(result.uncertainty_map, outputs["uncertainty"], overwrite)
    if outputs.get("qc"):
        from .qc import write_qc_picture

        write_qc_picture(outputs["qc"], fixed, moving, result, title=title)
    if outputs.get("report"):
        Path(outputs["report"]).write_text(json.dumps(_report_dict(result), indent=2))


def _report_dict(result: RegistrationResult) -> dict:
    return {
        "steps": [
            {
                "step": r.index,
                "similarity_ncc": r.similarity,
                "dice": r.dice,
                "step_seconds": r.step_seconds,
                "max_displacement_mm": r.max_displacement_mm,
                "uncertainty_mean_mm": r.uncertainty_mean_mm,
                "uncertainty_max_mm": r.uncertainty_max_mm,
            }
            for r in result.reports
        ]
    }


def cmd_register(args) -> int:
    outputs = {
        "transform": args.output,
        "warped": args.warped,
        "displacement": args.displacement,
        "weight_map": args.weight_map,
        "uncertainty": args.uncertainty,
        "qc": args.qc,
        "report": args.report,
    }
    if args.uncertainty and args.samples < 2:
        raise InputError(
            "--uncertainty needs --samples K > 1 (the map is the spread of K sampled trajectories)"
        )
    policy, options = _policy_and_options(args)
    inputs = {
        "fixed image": args.fixed,
        "moving image": args.moving,
        "fixed labels": args.fixed_labels,
        "moving labels": args.moving_labels,
        "fixed mask": args.fixed_mask,
        "moving mask": args.moving_mask,
    }
    check_transform_suffix(args.output)
    check_output_paths(outputs.values(), args.overwrite, inputs)
    fixed = read_image(args.fixed, "fixed image")
    no_finer_than_the_image(args, policy, options, fixed)
    moving = read_image(args.moving, "moving image")
    fixed_labels = moving_labels = None
    if bool(args.fixed_labels) != bool(args.moving_labels):
        raise InputError("labels: give both --fixed-labels and --moving-labels, or neither")
    if args.fixed_labels:
        fixed_labels = read_label_map(args.fixed_labels, "fixed labels")
        moving_labels = read_label_map(args.moving_labels, "moving labels")
        check_same_geometry(fixed, fixed_labels, f"fixed labels '{args.fixed_labels}'")
        check_same_geometry(moving, moving_labels, f"moving labels '{args.moving_labels}'")
    masks = {
        "fixed_mask": _read_mask(args.fixed_mask, fixed, "fixed mask"),
        "moving_mask": _read_mask(args.moving_mask, moving, "moving mask"),
    }
    names = (f"fixed image '{args.fixed}'", f"moving image '{args.moving}'")
    session = RegistrationSession(
        fixed, moving, policy, options, fixed_labels, moving_labels, names=names, **masks
    )
    start = time.perf_counter()
    result = run_registration(session, args.steps, args.quiet)
    _write_outputs(
        result, moving, outputs, args.overwrite, fixed, title=f"{args.policy}: {Path(args.moving).name}"
    )
    if not args.quiet:
        print(f"done in {time.perf_counter() - start:.1f} s; transform written to {args.output}")
    return 0


def _parse_labels(text: str) -> list[int] | None:
    if text == "all":
        return None
    if text == "30":
        return evaluation_labels()
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(
            f"--labels: expected 'all', '30' or comma-separated integers, got '{text}'"
        ) from None


def _read_transform(path: str) -> sitk.Transform:
    if not Path(path).exists():
        raise InputError(f"transform '{path}': file not found")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError:
        raise InputError(f"transform '{path}': not a readable ITK transform file") from None


def cmd_evaluate(args) -> int:
    transform = _read_transform(args.transform)
    fixed_labels = read_label_map(args.fixed_labels, "fixed labels")
    moving_labels = read_label_map(args.moving_labels, "moving labels")
    displacement = _flattened_displacement(transform, fixed_labels)
    report = evaluate_transform(
        fixed_labels,
        moving_labels,
        transform,
        _parse_labels(args.labels),
        displacement=displacement,
        with_hd95=not args.no_hd95,
    )
    report.pop("dice_per_label")
    print(json.dumps(report, indent=2))
    return 0


def _flattened_displacement(transform: sitk.Transform, reference: sitk.Image) -> sitk.Image:
    """``transform(x) - x`` on ``reference``'s grid (affine included: it shifts log det J by a constant)."""
    from ..fields.geometry import Grid
    from ..io.export import total_displacement

    return total_displacement(transform, Grid.from_image(reference)) if transform is not None else None


def cmd_demo(args) -> int:
    out = Path(args.out_dir)
    names = {
        "transform": "transform.h5",
        "warped": "warped.nii.gz",
        "displacement": "displacement.nii.gz",
        "weight_map": "weight_map.nii.gz",
        "qc": "qc.png",
        "report": "report.json",
    }
    if args.samples > 1:
        names["uncertainty"] = "uncertainty.nii.gz"
    outputs = {key: out / name for key, name in names.items()}
    policy, options = _policy_and_options(args)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out-dir '{out}' is a file")
    sample_inputs = {
        f"sample {name.replace('_', ' ')}": SAMPLE_DIR / f"{name}.nii.gz"
        for name in ("fixed", "moving", "fixed_labels", "moving_labels")
    }
    out.mkdir(parents=True, exist_ok=True)
    check_output_paths(outputs.values(), args.overwrite, sample_inputs)
    fixed = read_image(SAMPLE_DIR / "fixed.nii.gz", "sample fixed image")
    no_finer_than_the_image(args, policy, options, fixed)
    moving = read_image(SAMPLE_DIR / "moving.nii.gz", "sample moving image")
    fixed_labels = read_label_map(SAMPLE_DIR / "fixed_labels.nii.gz", "sample fixed labels")
    moving_labels = read_label_map(SAMPLE_DIR / "moving_labels.nii.gz", "sample moving labels")
    options.dice_labels = [v for v in evaluation_labels() if v not in (31, 63)]  # absent in SynthSeg maps
    if not args.quiet:
        print(f"sample pair: {SAMPLE_DIR} (synthetic T1-like brains of two SynthSeg subjects, 2 mm)")
    session = RegistrationSession(fixed, moving, policy, options, fixed_labels, moving_labels)
    start = time.perf_counter()
    result = run_registration(session, args.steps, args.quiet)
    _write_outputs(result, moving, outputs, args.overwrite, fixed, title=f"rlreg demo ({args.policy})")
    # the written .h5, read back, must give the Dice the session reported
    check = evaluate_transform(
        fixed_labels,
        moving_labels,
        sitk.ReadTransform(str(outputs["transform"])),
        options.dice_labels,
        displacement=result.displacement,
        with_hd95=True,
    )
    summary = {
        "dice_after_affine": result.reports[0].dice,
        "dice_final_session": result.reports[-1].dice,
        "dice_final_from_h5": check["dice"],
        "hd95_mm": check["hd95_mm"],
        "folding_percent": check["folding_percent"],
        "sdlogj": check["sdlogj"],
        "seconds": time.perf_counter() - start,
    }
    report = json.loads(outputs["report"].read_text())
    report["summary"] = summary
    outputs["report"].write_text(json.dumps(report, indent=2))
    if not args.quiet:
        print(json.dumps(summary, indent=2))
        print(f"results in {out}/: {', '.join(names.values())}")
    return 0


def cmd_info(args) -> int:
    import torch

    print(f"rlreg {__version__}")
    print(f"torch {torch.__version__}, SimpleITK {sitk.Version.VersionString()}")
    print(f"device (auto): {describe_device(resolve_device('auto'))}")
    print(f"CUDA available: {torch.cuda.is_available()}")
    print("policies:")
    for name, description in available_policies().items():
        sampling = (
            " [--samples K: sampled trajectories, uncertainty map]" if policy_supports_sampling(name) else ""
        )
        print(f"  {name:12s} {description} ({policy_default_steps(name)} steps by default){sampling}")
    return 0


def cmd_view(args) -> int:
    """``rlreg view``: the web app (imported here only: the library never needs the web extra)."""
    from RLRegistrationWeb.launcher import run

    return run(args)


def cmd_train(args) -> int:
    from ..training.config import TrainConfig
    from ..training.train import train

    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    config = TrainConfig.load(args.config)
    out = train(
        config,
        out_dir=args.out,
        run_dir=args.run_dir,
        steps=args.steps,
        resume=args.resume,
        device=args.device,
        shared_dir=args.shared_dir,
        overwrite=args.overwrite,
        progress=not args.quiet,
        command=" ".join(["rlreg", *sys.argv[1:]]),
    )
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(f"model written to {out}/ (weights.pt, card.json)")
    return 0


def cmd_tune_weight_map(args) -> int:
    from ..training.weight_map import WeightMapConfig, tune_weight_map

    out = tune_weight_map(
        args.model,
        args.out,
        WeightMapConfig.load(args.config),
        overwrite=args.overwrite,
        shared_dir=args.shared_dir,
        progress=not args.quiet,
        command=" ".join(["rlreg", *sys.argv[1:]]),
    )
    if not args.quiet:
        print(f"model written to {out}/ (weights.pt, card.json)")
    return 0


if __name__ == "__main__":
    sys.exit(entry_point())
