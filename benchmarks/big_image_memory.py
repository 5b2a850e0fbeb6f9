"""Peak memory (RSS) of ``rlreg register`` on a synthetic CT-sized pair, measured on a real subprocess.

    python benchmarks/big_image_memory.py [--size 512 512 400] [--work-dir /tmp/rlreg_big] [-- extra rlreg args]

Writes a CT-like int16 pair (air -1000 HU, a body of soft tissue with noise, a bone ring, a few organs;
the moving body slightly shifted and scaled) as .nii.gz into ``--work-dir`` (kept for reruns), then runs
``python -m RLRegistrationLib register`` once per configuration (default output grid, and
``--output-grid working``) and prints exit code, wall time, peak RSS (from ``os.wait4``) and the last line
of its stderr. The memory model of ``RLRegistrationLib.memory`` is calibrated on these numbers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

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


def measure(command: list[str]) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS GiB, last stderr line) of one subprocess."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(LIB), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = stderr.strip().splitlines()
    return process.returncode, seconds, usage.ru_maxrss / 2**20, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.7, 0.7, 1.0])
    parser.add_argument("--work-dir", default="/tmp/rlreg_big")
    parser.add_argument("--configs", nargs="+", default=["default", "working"])
    parser.add_argument("extra", nargs="*", help="more rlreg register arguments (after --)")
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tag = "x".join(map(str, args.size))
    fixed, moving = work / f"fixed_{tag}.nii.gz", work / f"moving_{tag}.nii.gz"
    for path, scale, shift in ((fixed, 1.0, 0.0), (moving, 0.95, 6.0)):
        if not path.exists():
            sitk.WriteImage(ct_phantom(tuple(args.size), tuple(args.spacing), scale, shift), str(path), True)
    print(f"pair {tag} int16 at {args.spacing} mm in {work}")
    for config in args.configs:
        out = work / f"t_{tag}_{config}.h5"
        out.unlink(missing_ok=True)
        command = [sys.executable, "-m", "RLRegistrationLib", "register", str(fixed), str(moving)]
        command += ["-o", str(out), "--device", "cpu", "--quiet", *args.extra]
        if config == "working":
            command += ["--output-grid", "working"]
        code, seconds, rss, last = measure(command)
        print(f"{config:8s} exit {code}  {seconds:6.1f} s  peak RSS {rss:.2f} GiB  {last}")


if __name__ == "__main__":
    main()
