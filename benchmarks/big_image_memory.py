"""Peak memory (RSS) of ``rlreg register`` on a synthetic CT-sized pair, measured on a real subprocess.

    python benchmarks/big_image_memory.py [--size 512 512 400] [--work-dir /tmp/rlreg_big] [-- extra rlreg args]

Writes a CT-like int16 pair (air -1000 HU, a body of soft tissue with noise, a bone ring, a few organs;
the moving body slightly shifted and scaled) as .nii.gz into ``--work-dir`` (kept for reruns), then runs
``python -m RLRegistrationLib register`` once per configuration (default options; ``working``: the field on
the working grid; or any options in quotes) and prints exit code, wall time, peak RSS (GNU time), the .h5's
size, what the command chose and the last line of its stderr. ``--case head``: a 256x256x170 whole-head
1 mm MRI follow-up pair (SynthSeg subject 11, air around the head). The memory model of
``RLRegistrationLib.registration.memory`` is calibrated on these numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from process_peak import run_measured

LIB = Path(__file__).resolve().parents[1] / "RLRegistration"


def ct_phantom(
    size: tuple[int, int, int], spacing: tuple[float, float, float], scale: float, shift_mm: float
):
    """int16 CT-like volume (i, j, k size), built slice by slice to keep the generator's memory small."""
    nx, ny, nz = size
    rng = np.random.default_rng(0 if scale == 1.0 else 1)
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float32)
    x = (x - nx / 2) * spacing[0] - shift_mm
    y = (y - ny / 2) * spacing[1]
    volume = np.empty((nz, ny, nx), np.int16)
    for k in range(nz):
        z = (k - nz / 2) * spacing[2]
        taper = np.sqrt(max(0.0, 1.0 - (z / (0.55 * nz * spacing[2])) ** 2))
        a, b = 0.42 * nx * spacing[0] * taper * scale, 0.30 * ny * spacing[1] * taper * scale
        r = np.sqrt((x / max(a, 1e-3)) ** 2 + (y / max(b, 1e-3)) ** 2)
        slice_ = np.full((ny, nx), -1000.0, np.float32)
        body = r < 1.0
        slice_[body] = 40.0
        slice_[(r > 0.85) & body] = 700.0  # bone ring
        for cx, cy, radius, value in (
            (-0.3, 0.1, 0.18, 120.0),
            (0.35, -0.05, 0.14, -80.0),
            (0.0, 0.4, 0.1, 300.0),
        ):
            organ = ((x / max(a, 1e-3) - cx) ** 2 + (y / max(b, 1e-3) - cy) ** 2) < radius**2
            slice_[organ & body] = value + 40 * np.sin(z / 15.0)
        slice_ += rng.normal(0, 20, slice_.shape).astype(np.float32)
        volume[k] = np.clip(slice_, -1024, 3000).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetOrigin((-nx / 2 * spacing[0], -ny / 2 * spacing[1], -nz / 2 * spacing[2]))
    return image


def measure(command: list[str]) -> tuple[int, float, float, str, str]:
    """(exit code, wall seconds, peak RSS GiB, last stderr line, stdout) of one subprocess; the peak from
    GNU time (a child forked from this process would inherit its high-water mark)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(LIB), os.environ.get("PYTHONPATH")])))
    done, seconds, rss = run_measured(command, env)
    lines = done.stderr.strip().splitlines()
    return done.returncode, seconds, rss, lines[-1] if lines else "", done.stdout


def whole_head_pair(work: Path, shared: Path, size: tuple[int, int, int]) -> tuple[Path, Path]:
    """A 1 mm whole-head follow-up pair of SynthSeg subject 11 (skull, scalp, neck; small motion and
    deformation, ``synthesis.followup``), on a ``size`` grid centred on the head (air around it)."""
    from RLRegistrationLib.synthesis.followup import follow_up_pair

    paths = work / "head_fixed.nii.gz", work / "head_moving.nii.gz"
    if not all(p.exists() for p in paths):
        pair = follow_up_pair(11, shared, seed=0, spacing_mm=1.0)
        for image, path in zip((pair.fixed, pair.moving), paths):
            grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
            grid.SetDirection(image.GetDirection())
            centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
            half = np.asarray(image.GetDirection()).reshape(3, 3) @ ((np.asarray(size) - 1) / 2.0)
            grid.SetOrigin(tuple(np.asarray(centre) - half))
            resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0)
            sitk.WriteImage(
                sitk.Cast(sitk.RescaleIntensity(resampled, 0, 1000), sitk.sitkInt16), str(path), True
            )
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case", choices=["ct", "head"], default="ct", help="CT-like phantom or whole-head MRI"
    )
    parser.add_argument("--shared-dir", default=str(LIB.parent.parent / "shared" / "data"))
    parser.add_argument(
        "--size", type=int, nargs=3, help="grid size (default 512 512 400 for ct, 256 256 170 for head)"
    )
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 1.0])
    parser.add_argument("--work-dir", default="/tmp/rlreg_big")
    parser.add_argument("--configs", nargs="+", default=["default", "working"])
    parser.add_argument("extra", nargs="*", help="more rlreg register arguments (after --)")
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    size = tuple(args.size or ((512, 512, 400) if args.case == "ct" else (256, 256, 170)))
    tag = "x".join(map(str, size))
    if args.case == "head":
        if not (Path(args.shared_dir) / "synthseg").is_dir():
            print(f"big_image_memory.py: the shared data is not here ({args.shared_dir})", file=sys.stderr)
            sys.exit(2)
        fixed, moving = whole_head_pair(work, Path(args.shared_dir), size)
        print(f"whole-head pair {tag} at 1 mm in {work}")
    else:
        fixed, moving = work / f"fixed_{tag}.nii.gz", work / f"moving_{tag}.nii.gz"
        for path, scale, shift in ((fixed, 1.0, 0.0), (moving, 0.95, 6.0)):
            if not path.exists():
                sitk.WriteImage(ct_phantom(size, tuple(args.spacing), scale, shift), str(path), True)
        print(f"pair {tag} int16 at {args.spacing} mm in {work}")
    for config in args.configs:
        out = work / f"t_{tag}_{config}.h5"
        out.unlink(missing_ok=True)
        command = [sys.executable, "-m", "RLRegistrationLib", "register", str(fixed), str(moving)]
        command += ["-o", str(out), "--device", "cpu", *args.extra]
        if config == "working":
            command += ["--output-grid", "working"]
        elif config != "default":
            command += config.split()
        code, seconds, rss, last, printed = measure(command)
        said = "; ".join(
            line for line in printed.splitlines() if line.startswith(("quality", "pair", "no deformable"))
        )
        size_mb = out.stat().st_size / 2**20 if out.exists() else float("nan")
        print(
            f"{config:8s} exit {code}  {seconds:6.1f} s  peak RSS {rss:.2f} GiB  .h5 {size_mb:.1f} MB  {said}  {last}"
        )


if __name__ == "__main__":
    main()
