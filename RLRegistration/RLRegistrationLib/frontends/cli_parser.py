"""The ``rlreg`` command line: its subcommands and options, and the ``RunSpec`` a command line describes.

Every option of a run (``--policy``, ``--quality``, ``--steps``...) maps to one ``RunSpec`` field; its
default is None here, so that a ``--config run.json`` value holds unless the option is given. Rarely
needed options sit in an "advanced" group of ``rlreg register --help``. Parse errors are one line
(``rlreg: error: ...``), exit code 2, like every other refusal.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ..errors import InputError, RLRegistrationError
from ..options import INITIALIZATIONS, INTENSITY_MAPPINGS, OUTPUT_GRIDS, PAIR_KINDS, RANGES, SIMILARITIES
from ..registration.quality import QUALITIES
from ..registration.run_spec import OptionError, RunSpec

#: RunSpec field -> its command-line option
FLAGS = {
    "policy": "--policy",
    "quality": "--quality",
    "pair": "--pair",
    "steps": "--steps",
    "iterations": "--iterations",
    "regularization": "--regularization",
    "similarity": "--similarity",
    "intensity_mapping": "--intensity-mapping",
    "initialization": "--initialization",
    "spacing_mm": "--spacing",
    "output_grid": "--output-grid",
    "device": "--device",
    "max_memory_gib": "--max-memory",
    "seed": "--seed",
    "samples": "--samples",
    "temperature": "--temperature",
}


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line naming the command's ``--help`` (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"rlreg: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def _range(option: str) -> str:
    low, high = RANGES[option]
    return f"{low:g}-{high:g}"


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a registration run (each a ``RunSpec`` field; None = not given)."""
    how = parser.add_argument_group("how to register")
    how.add_argument("--policy", help="policy name (see 'rlreg info'); default tto")
    how.add_argument(
        "--quality",
        choices=["auto", *QUALITIES],
        help="auto (default: the fine schedule at 1 mm, else 1.5 mm, whose memory estimate fits the cap, else "
        "standard; followup for one patient), standard (2 mm working grid, at most 112^3 voxels), fine (tto: "
        "1 mm grid, 4 steps at 4, 4, 2 and 1 mm) or followup (fine with regularization 6: two scans of one "
        "patient); see benchmarks/RESULTS.md",
    )
    how.add_argument(
        "--pair",
        choices=PAIR_KINDS,
        help="auto (default: from DICOM headers, else from the images after the pre-alignment), same-session "
        "(the linear result unless --steps), same-patient (the follow-up schedule) or different-subjects",
    )
    how.add_argument(
        "--steps", type=int, help=f"number of steps ({_range('steps')}; default: the preset's or policy's)"
    )
    how.add_argument(
        "--initialization",
        choices=INITIALIZATIONS,
        help="linear pre-alignment: affine (rigid then affine, the default), rigid (same patient) or none",
    )
    how.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    how.add_argument(
        "--config", metavar="RUN.json", help="run settings saved by --save-config (options given here win)"
    )
    advanced = parser.add_argument_group("advanced (rarely needed)")
    advanced.add_argument(
        "--iterations", type=int, help=f"test-time optimization iterations per step ({_range('iterations')})"
    )
    advanced.add_argument(
        "--regularization",
        type=float,
        help=f"smoothness weight ({_range('regularization')}; default: the preset's or policy's, 2 for tto)",
    )
    advanced.add_argument(
        "--similarity", choices=SIMILARITIES, help="ncc (same contrast), mind (across modalities)"
    )
    advanced.add_argument(
        "--intensity-mapping",
        choices=INTENSITY_MAPPINGS,
        help="tto: also compare the moving image mapped to the fixed contrast (T1 against T2); auto (default): "
        "when the pre-aligned images correlate below 0.3 inside both heads",
    )
    advanced.add_argument(
        "--spacing",
        type=float,
        help=f"working grid spacing in mm ({_range('spacing_mm')}; default: the preset's)",
    )
    advanced.add_argument(
        "--output-grid", choices=OUTPUT_GRIDS, help="grid of the written field: fixed (default) or working"
    )
    advanced.add_argument(
        "--max-memory",
        type=float,
        metavar="GIB",
        help="refuse up front a run estimated to need more memory than this (GiB; default 4, 8 for fine)",
    )
    advanced.add_argument("--seed", type=int, help="random seed (pre-alignment, sampling); default 0")
    advanced.add_argument(
        "--samples",
        type=int,
        help=f"sampled trajectories K of a learned policy ({_range('samples')}); the result follows their mean",
    )
    advanced.add_argument(
        "--temperature",
        type=float,
        help="sampling temperature of a learned policy's plan or latent (default 0, 1 with K > 1)",
    )
    advanced.add_argument(
        "--no-harm-check",
        action="store_true",
        help="keep every stage, also one that did not improve the alignment (default: a pre-alignment or "
        "deformable refinement that does not improve the images' gradient alignment is dropped, and said)",
    )
    advanced.add_argument(
        "--no-affine", action="store_true", help="deprecated: the same as --initialization none"
    )


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The ``RunSpec`` of a command line: ``--config`` values, then the options given (``InputError``
    naming the option, e.g. ``--steps: must be an integer from 0 to 500, got 100000``)."""
    values = RunSpec.load(args.config).to_dict() if getattr(args, "config", None) else {}
    for field, flag in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            values[field] = value
    if getattr(args, "no_harm_check", False):
        values["harm_check"] = False
    if getattr(args, "no_affine", False):
        if values.get("initialization") not in (None, "none") and args.initialization is not None:
            raise InputError(f"--no-affine contradicts --initialization {args.initialization}")
        print("rlreg: warning: --no-affine is deprecated; use --initialization none", file=sys.stderr)
        values["initialization"] = "none"
    try:
        return RunSpec.from_dict(values, "command line")
    except OptionError as error:
        raise InputError(f"{FLAGS.get(error.option, error.option)}: {error.problem}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``rlreg`` parser: register, evaluate, demo, info, view, train, tune-weight-map."""
    from .. import __version__

    parser = OneLineParser(prog="rlreg", description="Step-wise deformable registration of 3D images.")
    parser.add_argument("--version", action="version", version=f"rlreg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)

    reg = commands.add_parser("register", help="register MOVING to FIXED and write the transform")
    reg.add_argument("fixed", help="fixed image (NIfTI, NRRD, MHA/MHD, or a DICOM series folder)")
    reg.add_argument("moving", help="moving image")
    reg.add_argument(
        "-o", "--output", required=True, help="output transform (.h5): fixed point -> moving point"
    )
    reg.add_argument("--quiet", action="store_true", help="no progress output")
    outputs = reg.add_argument_group("more outputs (written all or nothing, after the registration)")
    outputs.add_argument(
        "--warped", help="the moving image resampled on the fixed grid (.nii.gz, .nrrd, .mha)"
    )
    outputs.add_argument("--displacement", help="the displacement field (LPS mm, vector image)")
    outputs.add_argument(
        "--jacobian",
        help="the local volume change det J of the deformable refinement x + u(x) (1: none, < 1 shrinkage, "
        "> 1 growth, <= 0 folding; on the field's grid)",
    )
    outputs.add_argument("--weight-map", help="the regularization weight map (working grid)")
    outputs.add_argument(
        "--uncertainty",
        help="spread of the --samples trajectories' displacements (mm); needs --samples K > 1",
    )
    outputs.add_argument("--qc", help="a QC picture (.png)")
    outputs.add_argument("--report", help="per-step numbers as JSON")
    outputs.add_argument("--save-config", metavar="RUN.json", help="the run's settings, for --config")
    outputs.add_argument("--overwrite", action="store_true", help="replace existing output files")
    inputs = reg.add_argument_group("label maps and masks")
    inputs.add_argument("--fixed-labels", help="fixed label map (enables Dice per step)")
    inputs.add_argument("--moving-labels", help="moving label map")
    inputs.add_argument("--fixed-mask", help="label map (nonzero = inside) restricting the similarity")
    inputs.add_argument("--moving-mask", help="label map (nonzero = inside) of the moving image's region")
    add_run_options(reg)

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
    demo.add_argument("--overwrite", action="store_true", help="replace existing results in --out-dir")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    add_run_options(demo)

    commands.add_parser("info", help="version, device and available policies")

    view = commands.add_parser(
        "view",
        help="watch a registration in a browser (web panel on Slicer's rendering; needs the web extra)",
    )
    view.add_argument("fixed", nargs="?", help="fixed image (default: the embedded sample pair)")
    view.add_argument("moving", nargs="?", help="moving image")
    view.add_argument("--fixed-labels", help="fixed label map (Dice per step)")
    view.add_argument("--moving-labels", help="moving label map")
    view.add_argument("--data-dir", help="folder whose images the page may pick from (nothing outside it)")
    view.add_argument("--sample", action="store_true", help="with --data-dir: also offer the sample pair")
    view.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    view.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine)"
    )
    view.add_argument("--autorun", type=int, metavar="N", help="register N steps as soon as the page opens")
    view.add_argument("--policy", help="policy preselected in the panel (default tto)")
    view.add_argument(
        "--quality", choices=["auto", *QUALITIES], help="quality preselected in the panel (default auto)"
    )
    view.add_argument("--steps", type=int, help="steps preselected in the panel (default: the policy's)")
    view.add_argument("--iterations", type=int, help="iterations per step preselected in the panel")
    view.add_argument("--regularization", type=float, help="regularization preselected in the panel")
    view.add_argument("--device", help="device preselected in the panel: auto, cpu or cuda")

    tr = commands.add_parser(
        "train", help="train a SPAC or MorphSeek policy (also under torchrun: DistributedDataParallel)"
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

    from .batch_parser import add_batch_parser

    add_batch_parser(commands, add_run_options)
    return parser


def one_line(error: RLRegistrationError) -> str:
    """The message of an expected error, a run option named by its command-line flag."""
    if isinstance(error, OptionError):
        return f"{FLAGS.get(error.option, error.option)}: {error.problem}"
    return " ".join(str(error).split("\n"))
