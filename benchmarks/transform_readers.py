"""Size of the ``.h5`` of a 1 mm brain pair and the same points through three readers of it.

    python benchmarks/transform_readers.py [--work-dir /tmp/rlreg_head] [--points 1000]

Registers the 1 mm whole-head follow-up pair of ``big_image_memory.py --case head`` (SynthSeg subject 11;
written into ``--work-dir`` when absent) with ``rlreg register``'s defaults, as a subprocess, then maps
``--points`` random points inside the fixed image through the written ``.h5`` with:

* SimpleITK (``sitk.ReadTransform``), the reference;
* ANTs (``ants.apply_transforms_to_points``, antspyx; skipped, and said, when it is not installed);
* Slicer's core (``vtkMRMLTransformStorageNode`` into a transform node, linear grid interpolation as the
  module's loader sets it, and Slicer's default cubic interpolation for information).

Prints the file's size and the largest distance of each reader's points from SimpleITK's, in mm, and writes
``results/transform_readers.{json,md}``. Reads ``../shared/data`` (not in the repo): says so and exits 2
when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
LIB = HERE.parent / "RLRegistration"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "Testing"))

from big_image_memory import whole_head_pair  # noqa: E402
from common import shared_data_missing  # noqa: E402


def points_inside(image: sitk.Image, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random LPS points (mm) in the central 80 % of ``image``."""
    rng = np.random.default_rng(seed)
    size = np.asarray(image.GetSize(), dtype=np.float64)
    index = rng.uniform(0.1, 0.9, (n, 3)) * (size - 1)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])


def through_ants(path: Path, points: np.ndarray) -> np.ndarray | None:
    """The points mapped by ANTs with the ``.h5`` (None without antspyx). ANTs maps points with the
    transform as given (fixed -> moving for a resampling transform), in LPS."""
    try:
        import ants
        import pandas as pd
    except ImportError:
        return None
    frame = pd.DataFrame(points, columns=["x", "y", "z"])
    mapped = ants.apply_transforms_to_points(3, frame, [str(path)])
    return mapped[["x", "y", "z"]].to_numpy(dtype=np.float64)


def through_slicer(path: Path, points: np.ndarray) -> dict[str, np.ndarray] | None:
    """The points mapped by Slicer's core reading the ``.h5`` (linear and cubic grid interpolation)."""
    import slicer_runtime

    if slicer_runtime.unavailable_reason():
        return None
    slicer_runtime.start()
    import slicer

    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise RuntimeError(f"Slicer's core could not read {path}")
    ras = points * np.array([-1.0, -1.0, 1.0])
    mapped = {}
    for mode in ("linear", "cubic"):
        transform = node.GetTransformFromParent()
        _set_interpolation(transform, mode)
        transform.Update()
        mapped[mode] = np.array([transform.TransformPoint(tuple(p)) for p in ras]) * np.array(
            [-1.0, -1.0, 1.0]
        )
    return mapped


def _set_interpolation(transform, mode: str) -> None:
    """Set every grid transform inside ``transform`` (a general transform's concatenation) to ``mode``."""
    import vtk

    setter = {"linear": "SetInterpolationModeToLinear", "cubic": "SetInterpolationModeToCubic"}[mode]
    parts = [transform]
    if hasattr(transform, "GetNumberOfConcatenatedTransforms"):
        parts = [
            transform.GetConcatenatedTransform(i)
            for i in range(transform.GetNumberOfConcatenatedTransforms())
        ]
    for part in parts:
        if isinstance(part, vtk.vtkAbstractTransform) and hasattr(part, setter):
            getattr(part, setter)()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared-dir", default=str(HERE.parents[1] / "shared" / "data"))
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "rlreg_head"))
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    if shared_data_missing(args.shared_dir, "transform_readers.py"):
        return 2
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    fixed_path, moving_path = whole_head_pair(work, Path(args.shared_dir), (256, 256, 170))
    h5 = work / "readers.h5"
    start = time.perf_counter()
    command = [sys.executable, "-m", "RLRegistrationLib", "register", str(fixed_path), str(moving_path)]
    subprocess.run(
        [*command, "-o", str(h5), "--overwrite", "--quiet"],
        check=True,
        env={**os.environ, "PYTHONPATH": str(LIB)},
    )
    seconds = time.perf_counter() - start
    fixed = sitk.ReadImage(str(fixed_path))
    points = points_inside(fixed, args.points)
    reference = sitk.ReadTransform(str(h5))
    expected = np.array([reference.TransformPoint(tuple(p)) for p in points])
    moved = np.linalg.norm(expected - points, axis=1)
    row = {
        "pair": "SynthSeg 11 whole-head follow-up, 256x256x170 at 1 mm",
        "register_seconds": round(seconds, 1),
        "h5_mb": round(h5.stat().st_size / 1e6, 2),
        "points": args.points,
        "points_moved_mm_max": round(float(moved.max()), 3),
    }
    ants_points = through_ants(h5, points)
    row["ants_max_mm"] = (
        None if ants_points is None else float(np.linalg.norm(ants_points - expected, axis=1).max())
    )
    slicer_points = through_slicer(h5, points)
    for mode in ("linear", "cubic"):
        value = (
            None if slicer_points is None else np.linalg.norm(slicer_points[mode] - expected, axis=1).max()
        )
        row[f"slicer_{mode}_max_mm"] = None if value is None else float(value)
    print(json.dumps(row, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transform_readers.json").write_text(json.dumps(row, indent=1) + "\n")
    lines = ["| reader | max distance from SimpleITK's points (mm) |", "|---|---|"]
    for key, name in (
        ("ants_max_mm", "ANTs (antspyx apply_transforms_to_points)"),
        ("slicer_linear_max_mm", "Slicer core storage node, linear (the module's loader)"),
        ("slicer_cubic_max_mm", "Slicer core storage node, cubic (Slicer's default)"),
    ):
        value = row[key]
        lines.append(f"| {name} | {'not installed' if value is None else f'{value:.2e}'} |")
    header = f".h5 {row['h5_mb']} MB; {args.points} points, moved up to {row['points_moved_mm_max']} mm\n\n"
    (out / "transform_readers.md").write_text(header + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
