"""Accuracy and speed benchmark on the SynthSeg validation pairs (subjects 11-14, 1 mm, 160x192x224).

Methods: identity, affine only (this project's SimpleITK affine), this project's default (rlreg tto), and,
when installed (``pip install .[bench]``), Greedy (picsl-greedy: affine then deformable NCC, the anchor the
time ratios refer to), ANTs SyN (antspyx), elastix (itk-elastix, default affine + B-spline maps) and
SimpleITK diffeomorphic demons (``peer_methods.py``); with ``--chain <id>+tto``, that learned chain at the fine schedule
(``rlreg-chain-fine``) and its learned steps alone (``rlreg-learned-alone``; ``rlreg-learned-alone-command``:
the same as the ``rlreg register`` command in a subprocess, timed whole). Each (method, pair) runs in a
fresh process so that peak RSS is its own; wall time covers the registration only (images in memory ->
transform).

    python benchmarks/accuracy.py                      # all methods, 4 pairs, table to stdout + results/
    python benchmarks/accuracy.py --methods rlreg,syn --pairs 11:12
    python benchmarks/accuracy.py --methods rlreg,syn --pairs vxm:11    # the real scan as the fixed image

Reads ``../shared/data`` (not shipped with the repo); says so and exits 2 when it is absent.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RLRegistration"))

from peer_methods import run_demons, run_elastix, run_greedy, run_greedy_nmi, run_syn  # noqa: E402

DEFAULT_PAIRS = ["11:12", "12:13", "13:14", "14:11"]
ALL_METHODS = [
    "identity",
    "affine-legacy",
    "affine",
    "rlreg",
    "rlreg-standard",
    "rlreg-fine",
    "greedy",
    "syn",
    "elastix",
    "demons",
]


def _threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def prepare_pairs(pairs: list[str], shared: Path, cache: Path, contrast_moving: str) -> list[dict]:
    """Write each validation pair once as NIfTI into ``cache`` and return their paths. A pair is
    ``fixed:moving`` of SynthSeg subjects, or with ``vxm`` on a side the real scan (``real_scan.py``)."""
    import SimpleITK as sitk
    from real_scan import real_scan_pair

    from RLRegistrationLib.synthesis.pairs import validation_pair

    out = []
    for pair in pairs:
        f, m = pair.split(":")
        folder = cache / f"{f.zfill(2)}_{m.zfill(2)}_{contrast_moving}"
        paths = {k: folder / f"{k}.nii.gz" for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
        if not all(p.exists() for p in paths.values()):
            folder.mkdir(parents=True, exist_ok=True)
            if "vxm" in (f, m):  # the real scan on one side (real_scan.py)
                seed = 100 * int(m if m != "vxm" else f if f != "vxm" else 0)
                images = real_scan_pair(f, m, shared, contrast_moving, seed)
            else:
                images = validation_pair(
                    int(f), int(m), shared, contrast_moving=contrast_moving, seed=int(f) * 100 + int(m)
                )
            for image, path in zip(images, paths.values()):
                sitk.WriteImage(image, str(path), useCompression=True)
        out.append({"pair": pair, **{k: str(v) for k, v in paths.items()}})
    return out


# ---------------------------------------------------------------------------- methods
def run_identity(fixed, moving, workdir, args):
    import SimpleITK as sitk

    return sitk.Transform(3, sitk.sitkIdentity), None


def run_affine(fixed, moving, workdir, args):
    """The session's default pre-alignment (``prealign``: rigid 8-4 mm, then affine 4-2-1 mm)."""
    from RLRegistrationLib.registration.prealign import prealign

    return prealign(fixed, moving, "affine", seed=0), None


def run_affine_gradient_filter(fixed, moving, workdir, args):
    """``prealign`` with ITK's gradient-image filter (its default; the session's is off)."""
    from RLRegistrationLib.registration.prealign import PrealignSchedule, prealign

    return prealign(
        fixed, moving, "affine", seed=0, schedule=PrealignSchedule(image_gradient_filter=True)
    ), None


def run_affine_legacy(fixed, moving, workdir, args):
    """The earlier pre-alignment (``imaging.affine_prealign``: Mattes MI on 8 and 4 mm copies)."""
    from RLRegistrationLib.io.imaging import affine_prealign

    return affine_prealign(fixed, moving, seed=0), None


def run_rlreg_tuned(fixed, moving, workdir, args):
    """rlreg's default policy with the schedule of ``--tto`` (see ``tto_schedule.py``)."""
    return run_rlreg_standard(fixed, moving, workdir, args, tto=args.tto)


def run_rlreg(fixed, moving, workdir, args):
    """``rlreg register`` with its default options (the same ``RunSpec`` the command builds: quality auto,
    the pair's kind from the images, do no harm)."""
    from RLRegistrationLib.registration.run_spec import RunSpec, register

    similarity = None if args.similarity == "ncc" else args.similarity
    result = register(fixed, moving, RunSpec(similarity=similarity, device="cpu"), keep_steps=False)
    return result.transform, result.displacement


def run_rlreg_fine(fixed, moving, workdir, args, policy: str = "tto"):
    """``rlreg register --quality fine`` (``policy``: tto or a chain ``<id>+tto``)."""
    from RLRegistrationLib.registration.run_spec import RunSpec, register

    spec = RunSpec(policy=policy, quality="fine", similarity=args.similarity, device="cpu")
    result = register(fixed, moving, spec, keep_steps=False)
    return result.transform, result.displacement


def run_learned_alone(fixed, moving, workdir, args):
    """``rlreg register --policy <id>`` for the learned steps of ``--chain``'s model alone (registered here
    also when its card offers it only as a chain): quality auto, i.e. the network's own steps on the
    standard grid."""
    from RLRegistrationLib.policies.cards import models_dir
    from RLRegistrationLib.policies.registry import register_model
    from RLRegistrationLib.registration.run_spec import RunSpec, register

    model_id = args.chain.removesuffix("+tto")
    register_model(models_dir() / model_id, alone=True)
    result = register(fixed, moving, RunSpec(policy=model_id, device="cpu"), keep_steps=False)
    return result.transform, result.displacement


def run_learned_alone_command(fixed, moving, workdir, args):
    """``rlreg register <fixed> <moving> -o out.h5 --policy <id>`` as a subprocess, timed whole: the
    interpreter's start and imports, reading the NIfTI files, the registration and writing the transform
    (the images in memory are not used). The model must be offered alone (its card) in the models folder
    the command finds (``$RLREG_MODELS_DIR`` or ``models/``)."""
    import subprocess

    import SimpleITK as sitk

    out = Path(workdir) / "out.h5"
    command = [sys.executable, "-m", "RLRegistrationLib", "register", args.pair_files["fixed"]]
    command += [args.pair_files["moving"], "-o", str(out), "--quiet", "--device", "cpu"]
    command += ["--policy", args.chain.removesuffix("+tto")]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "RLRegistration")}
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    transform = sitk.ReadTransform(str(out))
    return transform, _displacement_of(transform)


def _displacement_of(transform):
    """The displacement field of the deformable part of a transform read from an ``.h5`` (None without)."""
    import SimpleITK as sitk

    composite = sitk.CompositeTransform(transform)
    for index in range(composite.GetNumberOfTransforms()):
        part = composite.GetNthTransform(index)
        if part.GetTransformEnum() == sitk.sitkDisplacementField:
            return sitk.DisplacementFieldTransform(part).GetDisplacementField()
    return None


def run_chain_fine(fixed, moving, workdir, args):
    """``rlreg register --policy <--chain> --quality fine``: a learned chain at the fine schedule."""
    return run_rlreg_fine(fixed, moving, workdir, args, args.chain)


def run_rlreg_standard(fixed, moving, workdir, args, tto: str = ""):
    """``rlreg register --quality standard`` (``--steps``, ``--spacing``), or with ``tto`` a TTO schedule
    beyond what a ``RunSpec`` holds (``--methods rlreg-tuned --tto '...'``: the schedule search's knobs)."""
    from RLRegistrationLib.policies.registry import make_policy
    from RLRegistrationLib.registration.run_spec import RunSpec, register
    from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

    if not tto:
        spec = RunSpec(
            quality="standard",
            steps=args.steps,
            spacing_mm=args.spacing,
            similarity=args.similarity,
            device="cpu",
        )
        result = register(fixed, moving, spec, keep_steps=False)
        return result.transform, result.displacement
    tto = parse_tto(tto)
    spacing = float(tto.pop("spacing", args.spacing))
    max_voxels = int(tto.pop("max_voxels", 112**3)) or None
    steps = int(tto.pop("steps", args.steps))
    policy = make_policy("tto", similarity=args.similarity, **tto)
    options = SessionOptions(device="cpu", seed=0, working_spacing_mm=spacing, max_working_voxels=max_voxels)
    session = RegistrationSession(fixed, moving, policy, options)
    for _ in session.run(steps):
        pass
    result = session.result()
    return result.transform, result.displacement


def parse_tto(text: str) -> dict:
    """``key:value;key:value`` (``--tto``) -> TTO options; ``spacing`` (mm), ``max_voxels`` (0 = no cap) and
    ``steps`` are session settings; tuples as ``4/2/1``."""
    out = {}
    for item in filter(None, text.split(";")):
        key, value = item.split(":")
        if "/" in value:
            out[key] = tuple(int(v) for v in value.split("/"))
        elif value.replace(".", "", 1).lstrip("-").isdigit():
            out[key] = float(value) if "." in value else int(value)
        else:
            out[key] = value  # a word, e.g. intensity_mapping:off
    return out


METHODS = {
    "identity": run_identity,
    "affine": run_affine,
    "affine-legacy": run_affine_legacy,
    "affine-gradient-filter": run_affine_gradient_filter,
    "rlreg": run_rlreg,
    "rlreg-standard": run_rlreg_standard,
    "rlreg-tuned": run_rlreg_tuned,
    "rlreg-fine": run_rlreg_fine,
    "rlreg-chain-fine": run_chain_fine,
    "rlreg-learned-alone": run_learned_alone,
    "rlreg-learned-alone-command": run_learned_alone_command,
    "syn": run_syn,
    "greedy": run_greedy,
    "greedy-nmi": run_greedy_nmi,
    "elastix": run_elastix,
    "demons": run_demons,
}
REQUIRES = {
    "syn": "ants",
    "greedy": "picsl_greedy",
    "greedy-nmi": "picsl_greedy",
    "elastix": "itk",
    "demons": None,
}


def available(method: str) -> bool:
    module = REQUIRES.get(method)
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _worker(method: str, pair: dict, args_dict: dict, queue) -> None:
    """One registration in its own process: time it, then evaluate (not timed)."""
    _threads(args_dict["threads"])
    import tempfile

    import torch

    torch.set_num_threads(args_dict["threads"])
    from common import allocate_like_the_cli, read_pair

    from RLRegistrationLib.fields.metrics import evaluate_transform, evaluation_labels

    args = argparse.Namespace(**args_dict, pair_files=pair)
    allocate_like_the_cli(method)
    fixed, moving, fixed_labels, moving_labels = read_pair(pair)
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # elastix/transformix write files into the working directory
        start = time.perf_counter()
        transform, displacement = METHODS[method](fixed, moving, workdir, args)
        seconds = time.perf_counter() - start
        if method == "rlreg" and args.profile:
            print(f"rlreg profile: {seconds:.1f} s", flush=True)
        peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        labels = [v for v in evaluation_labels() if v not in (31, 63)]  # 31/63 absent in SynthSeg maps
        report = evaluate_transform(fixed_labels, moving_labels, transform, labels, displacement=displacement)
    report.pop("dice_per_label")
    report.update({"method": method, "pair": pair["pair"], "seconds": seconds, "peak_rss_gib": peak_rss_gib})
    queue.put(report)


def run_one(method: str, pair: dict, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_worker, args=(method, pair, vars(args), queue))
    process.start()
    process.join()
    if process.exitcode != 0 or queue.empty():
        return {"method": method, "pair": pair["pair"], "error": f"exit code {process.exitcode}"}
    return queue.get()


def summarize(rows: list[dict], methods: list[str]) -> str:
    import numpy as np

    def mean(method, key):
        values = [r[key] for r in rows if r["method"] == method and key in r]
        return float(np.mean(values)) if values else float("nan")

    syn_time, greedy_time = mean("syn", "seconds"), mean("greedy", "seconds")
    lines = [
        "| method | mean Dice | HD95 (mm) | % det J ≤ 0 | SDlogJ | wall s | time / Greedy | time / SyN "
        "| peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        if not any(r["method"] == method and "dice" in r for r in rows):
            continue
        seconds = mean(method, "seconds")
        lines.append(
            f"| {method} | {mean(method, 'dice'):.4f} | {mean(method, 'hd95_mm'):.2f} | "
            f"{mean(method, 'folding_percent'):.4f} | {mean(method, 'sdlogj'):.3f} | "
            f"{seconds:.1f} | {seconds / greedy_time:.2f} | {seconds / syn_time:.2f} | "
            f"{mean(method, 'peak_rss_gib'):.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--pairs", default=",".join(DEFAULT_PAIRS), help="fixed:moving subject pairs")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--steps", type=int, default=6, help="rlreg-standard steps (default 6)")
    parser.add_argument("--spacing", type=float, default=2.0, help="rlreg-standard working grid spacing (mm)")
    parser.add_argument("--similarity", default="ncc", help="rlreg similarity (ncc or mind)")
    parser.add_argument(
        "--tto",
        default="",
        help="schedule of the rlreg-tuned method, e.g. 'spacing:1.0;max_voxels:0;pyramid:4/4/4/2/2/1' (see tto_schedule.py)",
    )
    parser.add_argument(
        "--chain",
        default="",
        help="policy of the rlreg-chain-fine method (rlreg-learned-alone: its learned steps alone), e.g. "
        "spac-brain-synth+tto",
    )
    parser.add_argument("--models", default="", help="models folder of the learned policies (e.g. recipes)")
    parser.add_argument("--contrast-moving", default="t1", help="t1 (same contrast) or t2 (cross-contrast)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--tag", default="", help="suffix of the result files (accuracy_t1_ncc_<tag>.json)")
    args = parser.parse_args(argv)
    chained = {"rlreg-chain-fine", "rlreg-learned-alone", "rlreg-learned-alone-command"}
    if not args.chain and chained & set(args.methods.split(",")):
        parser.error(f"the methods {', '.join(sorted(chained))} need --chain <id>+tto")
    if args.models:  # read by the registry of each worker process
        os.environ["RLREG_MODELS_DIR"] = str(Path(args.models).resolve())
    shared = Path(args.shared_dir)
    if not (shared / "synthseg").is_dir():
        print(
            f"benchmark: the shared data folder '{shared}/synthseg' is absent; this benchmark needs the "
            "SynthSeg label maps (../shared/data beside the repository, or --shared-dir)",
            file=sys.stderr,
        )
        return 2
    methods = []
    for method in args.methods.split(","):
        if method not in METHODS:
            parser.error(f"unknown method {method}")
        if available(method):
            methods.append(method)
        else:
            print(f"benchmark: skipping {method} (not installed: pip install .[bench])")
    pairs = prepare_pairs(args.pairs.split(","), shared, Path(args.cache), args.contrast_moving)
    rows = []
    for pair in pairs:
        for method in methods:
            row = run_one(method, pair, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = summarize(rows, methods)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"accuracy_{args.contrast_moving}_{args.similarity}" + (f"_{args.tag}" if args.tag else "")
    (out / f"{tag}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    (out / f"{tag}.md").write_text(
        f"`python benchmarks/accuracy.py {shlex.join(argv or sys.argv[1:])}`\n\n{table}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
