"""What the session benchmarks (``policies.py``, ``morphseek.py``) share: their arguments, the check that
``../shared/data`` is there, reading a validation pair, running one session with Dice per step, and the
Markdown table / JSON files they write.

Heavy imports (torch, SimpleITK, the library) happen inside the functions, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RLRegistration"))
DEFAULT_SHARED = REPO.parent / "shared" / "data"


def shared_data_missing(shared_dir: str | Path, program: str = "benchmark") -> bool:
    """True (after saying so on stderr) when ``<shared_dir>/synthseg`` is absent: a user's clone has no
    ``../shared``, and the benchmarks need its SynthSeg label maps."""
    folder = Path(shared_dir) / "synthseg"
    if folder.is_dir():
        return False
    print(
        f"{program}: '{folder}' is absent: this needs the SynthSeg label maps (../shared/data beside the "
        "repository, or --shared-dir)",
        file=sys.stderr,
    )
    return True


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the benchmarks that run registration sessions on the validation pairs."""
    parser.add_argument("--shared-dir", default=str(DEFAULT_SHARED))
    parser.add_argument("--pairs", default="11:12,12:13,13:14,14:11", help="fixed:moving subject pairs")
    parser.add_argument("--tto-steps", type=int, default=6, help="steps of test-time optimization alone")
    parser.add_argument("--then-steps", type=int, default=3, help="fine TTO steps after the learned ones")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (SyN runs with the same)")
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "cache"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))


def load_model_card(model_dir: str | Path, threads: int) -> dict:
    """Set torch's thread count, register the model folder's policies (``<id>``, also for a model offered
    only as a chain, and ``<id>+tto`` with the card's settings, both sampling where the family can, also
    for a model whose card does not offer it to users; this folder's, whatever else holds a model of that
    id) and return its checked card."""
    import torch

    from RLRegistrationLib.policies.cards import read_card
    from RLRegistrationLib.policies.registry import register_model

    torch.set_num_threads(threads)
    register_model(model_dir, alone=True, sampling=True)
    return read_card(model_dir)


def model_folders_missing(program: str, shared_dir: str | Path, folders: list[Path]) -> bool:
    """True (after one line on stderr naming what) when ``shared_dir`` or a model folder (with its
    ``card.json``) is absent: the benchmark then exits 2."""
    if shared_data_missing(shared_dir, program):
        return True
    for folder in folders:
        if not (Path(folder) / "card.json").is_file():
            print(f"{program}: model folder '{folder}' (with card.json) is absent", file=sys.stderr)
            return True
    return False


def allocate_like_the_cli(method: str) -> None:
    """In a worker timing an rlreg method: the allocator setting the ``rlreg`` command makes
    (``cli.entry_point``); other tools' workers keep the default."""
    if method.startswith("rlreg"):
        from RLRegistrationLib.frontends.allocator import reuse_freed_memory

        reuse_freed_memory()


def read_pair(pair: dict) -> list:
    """[fixed, moving, fixed_labels, moving_labels] SimpleITK images of a prepared pair (``prepare_pairs``)."""
    import SimpleITK as sitk

    images = [sitk.ReadImage(pair[k], sitk.sitkFloat32) for k in ("fixed", "moving")]
    return images + [sitk.ReadImage(pair[k]) for k in ("fixed_labels", "moving_labels")]


def run_session(policy, pair_images, steps: int):
    """Run a session with labels; returns per-step Dice (index 0 = affine), wall seconds of the
    registration (prepare + steps, without the Dice bookkeeping) and the session."""
    from RLRegistrationLib.fields.metrics import evaluation_labels
    from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions

    fixed, moving, fixed_labels, moving_labels = pair_images
    labels = [v for v in evaluation_labels() if v not in (31, 63)]
    options = SessionOptions(device="cpu", seed=0, dice_labels=labels)
    session = RegistrationSession(fixed, moving, policy, options, fixed_labels, moving_labels)
    session.prepare()
    reports = list(session.run(steps))
    seconds = session.reports[0].step_seconds + sum(r.step_seconds for r in reports)
    return [session.reports[0].dice] + [r.dice for r in reports], seconds, session


def disagreement_and_uncertainty(
    result, fixed_labels, moving_labels
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(voxelwise label disagreement after registration (bool), the result's uncertainty map (mm), both
    inside ``inside``; ``inside``) on the fixed grid (array order k, j, i), for a session's ``result()``:
    ``inside`` is the union of the fixed labels' and the registered moving labels' foregrounds (the moving
    labels through the result's transform, nearest neighbour; the uncertainty map linearly resampled)."""
    import SimpleITK as sitk

    from RLRegistrationLib.fields.metrics import resample_labels

    fixed = sitk.GetArrayFromImage(fixed_labels)
    moved = sitk.GetArrayFromImage(resample_labels(moving_labels, fixed_labels, result.transform))
    uncertainty = sitk.GetArrayFromImage(
        sitk.Resample(result.uncertainty_map, fixed_labels, sitk.Transform(), sitk.sitkLinear, 0.0)
    )
    inside = (fixed > 0) | (moved > 0)
    return (fixed != moved)[inside], uncertainty[inside].astype(np.float64), inside


def folding_percent(session) -> float:
    """% of voxels of the session's total field (fixed grid) with det J <= 0."""
    return folding_inside_and_out(session)["folding_percent"]


def folding_inside_and_out(session, fixed_labels=None) -> dict[str, float]:
    """% det J <= 0 of the session's total field (fixed grid) over all voxels, and, with the fixed label map,
    inside the brain (labels > 0) and outside it."""
    import SimpleITK as sitk

    from RLRegistrationLib.fields.metrics import jacobian_of_field, jacobian_stats

    det = jacobian_of_field(session.result().displacement)
    out = {"folding_percent": jacobian_stats(det)["folding_percent"]}
    if fixed_labels is not None:
        brain = sitk.GetArrayViewFromImage(fixed_labels) > 0
        out["folding_in_brain_percent"] = jacobian_stats(det, brain)["folding_percent"]
        out["folding_outside_brain_percent"] = jacobian_stats(det, ~brain)["folding_percent"]
    return out


def method_table(rows: list[dict]) -> str:
    """Markdown table of the rows' methods (in order of appearance): mean Dice per step over the pairs,
    final Dice, % det J <= 0 and wall seconds."""
    lines = [
        "| method | mean Dice per step (0 = affine) | final Dice | % det J ≤ 0 | wall s |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == name]
        curve = np.mean([r["dice_per_step"] for r in group], axis=0)
        lines.append(
            f"| {name} | {' → '.join(f'{d:.3f}' for d in curve)} | {curve[-1]:.4f} | "
            f"{np.mean([r['folding_percent'] for r in group]):.4f} | "
            f"{np.mean([r['seconds'] for r in group]):.1f} |"
        )
    return "\n".join(lines)


@contextmanager
def card_variants(model: Path, card: dict) -> Iterator[Callable[[dict], None]]:
    """A temporary models folder, ``$RLREG_MODELS_DIR`` for the runs' processes while it lasts, holding
    ``model``'s weights (a link) under ``card``'s id; yields ``write(card)``, which puts a variant of the
    card there before a run (the setting a benchmark compares)."""
    previous = os.environ.get("RLREG_MODELS_DIR")
    with tempfile.TemporaryDirectory() as models:
        folder = Path(models) / card["id"]
        folder.mkdir()
        (folder / card["weights"]).symlink_to(Path(model) / card["weights"])
        os.environ["RLREG_MODELS_DIR"] = models
        try:
            yield lambda variant: (folder / "card.json").write_text(json.dumps(variant))
        finally:
            if previous is None:
                os.environ.pop("RLREG_MODELS_DIR", None)
            else:
                os.environ["RLREG_MODELS_DIR"] = previous


def write_results(
    out: str | Path, stem: str, payload: dict, table: str, argv: list[str], script: str | None = None
) -> None:
    """``<out>/<stem>.json`` (all rows) and ``<out>/<stem>.md`` (the command line of ``benchmarks/<script>.py``,
    ``script`` defaulting to ``stem``, and the table)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{stem}.md").write_text(
        f"`python benchmarks/{script or stem}.py {shlex.join(argv)}`\n\n{table}\n"
    )
