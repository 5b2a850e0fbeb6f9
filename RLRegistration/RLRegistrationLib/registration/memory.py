"""How much memory a registration will take, estimated before any work, so a too-large one is refused up
front with the size it would need instead of being killed by the out-of-memory killer half-way.

The estimate adds what the session holds and the largest transient copies, per voxel of the image or grid
they scale with. The per-voxel costs were measured as peak RSS of ``rlreg register`` subprocesses on
synthetic CT-like volumes (``benchmarks/big_image_memory.py``); the estimate is meant to err on the high
side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..fields.geometry import Grid, field_grid

GIB = 1 << 30
# interpreter, torch and SimpleITK loaded (0.45 GiB measured)
RUNTIME_BYTES = 450 << 20
# what the session holds on the working grid besides the kept fields: the two normalized images, the
# step reports' transient warps
STATE_BYTES_PER_VOXEL = 8 + 16
# one kept total field (3 float32) and weight map (float32)
KEPT_STEP_BYTES_PER_VOXEL = 12 + 4
# the TTO's finest level: what it holds for the whole level (cropped images, the previous field's
# gradient, the step field, the weight map and their gradients) ...
LEVEL_BYTES_PER_VOXEL = 100
# ... and the graph of one iteration (local NCC, warp, diffusion, their gradients), for at most a slab of
# ``policies.tto_slabs.SLAB_VOXELS`` voxels at a time (a 6-step standard run at the 112^3 cap: 0.93 GiB
# above the runtime; the slabbed graph of a 1 mm level: ``Testing`` and ``benchmarks/big_image_memory.py``)
GRAPH_BYTES_PER_VOXEL = 450
# resampling a full image: a float32 copy, its Gaussian-smoothed copy and ITK's line buffers
RESAMPLE_BYTES_PER_VOXEL = 12
# the displacement field on the output grid: float32 tensor, float64 array and image (3 components), and
# the copy the composite transform takes when it is written or applied
FIELD_BYTES_PER_VOXEL = 3 * (4 + 8 + 8 + 8)
# label points (mapped through the affine, then per step through the field) on the fixed image's grid
LABEL_BYTES_PER_VOXEL = 3 * 4 * 4
# the QC picture (``frontends.qc``: matplotlib and its figure; the volumes are only resampled on three
# slices): rlreg register --qc peaked 0.14 GiB above the same run without it on the 2 mm sample pair
# (``benchmarks/qc_memory.py``); on a 1 mm pair 0.52 GiB (det J of the field), which the output-grid field
# part covers there (run + picture estimated 2.96 GiB, measured 2.67)
QC_PICTURE_BYTES = 160 << 20


@dataclass
class MemoryEstimate:
    """Estimated peak memory of a registration (bytes), and the parts it is made of."""

    parts: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def largest_part(self) -> tuple[str, int]:
        name = max(self.parts, key=self.parts.get)
        return name, self.parts[name]


def _voxels(image: sitk.Image) -> int:
    return int(np.prod(image.GetSize(), dtype=np.int64))


def _image_bytes(image: sitk.Image) -> int:
    return _voxels(image) * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()


def estimate_peak_memory(
    fixed: sitk.Image,
    moving: sitk.Image,
    options,
    labels: bool = False,
    steps: int | None = None,
    picture: bool = False,
) -> MemoryEstimate:
    """Peak memory of registering ``moving`` to ``fixed`` with ``options`` (a ``SessionOptions``) in
    ``steps`` steps (default 6): the runtime, the two images, one full-resolution resampling, the working
    grid (cropped to the images' content, ``registration.region``, with the pose the images have) with the
    fields the session keeps and the test-time optimization's finest level, and the displacement field
    (and label points) on the output grid (``geometry.field_grid``); with ``picture``, the QC picture."""
    from ..policies.tto_slabs import SLAB_VOXELS
    from .region import cropped_working_grid, registration_region

    steps = 6 if steps is None else int(steps)
    reference = Grid.from_image(fixed)
    region = registration_region(fixed, moving) if getattr(options, "crop_to_region", False) else None
    lattice, work = cropped_working_grid(
        reference, options.working_spacing_mm, region, max_voxels=options.max_working_voxels
    )
    working_voxels = int(np.prod(work.size, dtype=np.int64))
    output_voxels = int(np.prod(field_grid(reference, lattice, options.output_grid).size, dtype=np.int64))
    kept = steps + 1 if getattr(options, "keep_steps", True) else 2
    parts = {
        "the runtime": RUNTIME_BYTES,
        "the working grid's tensors": (STATE_BYTES_PER_VOXEL + kept * KEPT_STEP_BYTES_PER_VOXEL)
        * working_voxels,
        "the optimization's finest level": LEVEL_BYTES_PER_VOXEL * working_voxels
        + GRAPH_BYTES_PER_VOXEL * min(working_voxels, SLAB_VOXELS),
        "the two images": _image_bytes(fixed) + _image_bytes(moving),
        "resampling a full-resolution image": RESAMPLE_BYTES_PER_VOXEL * max(_voxels(fixed), _voxels(moving)),
        "the displacement field on the output grid": FIELD_BYTES_PER_VOXEL * output_voxels,
    }
    if labels:
        image_voxels = working_voxels if options.output_grid == "working" else _voxels(fixed)
        parts["the label maps and label points"] = LABEL_BYTES_PER_VOXEL * image_voxels + 4 * (
            _voxels(fixed) + _voxels(moving)
        )
    if picture:
        parts["the QC picture"] = QC_PICTURE_BYTES
    return MemoryEstimate(parts)


def check_memory(estimate: MemoryEstimate, cap_gib: float, name: str) -> None:
    """Raise ``InputError`` (starting with ``name``) when ``estimate`` exceeds ``cap_gib`` GiB."""
    if estimate.total_bytes <= cap_gib * GIB:
        return
    part, size = estimate.largest_part
    raise InputError(
        f"{name}: registering it would need about {estimate.total_bytes / GIB:.1f} GiB of memory, above the "
        f"{cap_gib:g} GiB cap ({part}: {size / GIB:.1f} GiB); write the field on the working grid "
        "(--output-grid working) or raise the cap (--max-memory)"
    )
