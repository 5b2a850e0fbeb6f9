"""How a registration session runs (``SessionOptions``, made from a ``RunSpec`` by ``run_spec.plan_run``) and how
its messages name the inputs (``InputNames``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SessionOptions:
    """How a registration runs. Spacing in mm; ``max_working_voxels`` caps the working grid (CPU memory).

    ``initialization``: the linear pre-alignment, "affine" (rigid then affine, the default), "rigid" or
    "none" (the ``initial_transform`` as given, identity without one). Front-ends do not fill this in
    themselves: ``run_spec.plan_run`` makes it from a ``RunSpec``.
    """

    working_spacing_mm: float = 2.0
    max_working_voxels: int | None = 112 * 112 * 112
    initialization: str = "affine"
    device: str = "auto"
    seed: int = 0
    # grid of the result's displacement field (``geometry.field_grid``): "auto" (the working grid when it is
    # the smaller, else the fixed image's), "fixed" or "working" (then also the warped image's and Dice's)
    output_grid: str = "auto"
    dice_labels: list[int] | None = None  # labels to score (default: all shared non-zero labels)
    # refuse, before any work, a registration whose estimated peak memory exceeds this (GiB); None: no cap
    max_memory_gib: float | None = None
    # do no harm (``harm_check``): a pre-alignment that does not improve on the initial alignment is dropped
    # in ``prepare``; ``final_result`` drops deformable steps that do not improve on the pre-alignment
    harm_check: bool = True
    # the working grid covers the part of the fixed field of view where either image has something
    # (``region``), not the air around it
    crop_to_region: bool = True
    # the pair's kind (``pair_kind.KINDS``, with ``pair_reason``) or "auto": found from the images after
    # the pre-alignment (what ``RunSpec`` asks by default); it may keep the deformable refinement from
    # running unless ``steps_asked``
    pair: str = "different-subjects"
    pair_reason: str = ""
    steps_asked: bool = False
    # False: keep only the pre-alignment's field and the latest (the command line and batch runs need no
    # step back or replay; each kept field costs 12 bytes per working voxel)
    keep_steps: bool = True
    planned_steps: int = 6  # for the memory estimate (``run_spec.plan_run`` sets the plan's)


@dataclass(frozen=True)
class InputNames:
    """How messages name each input, e.g. ``fixed image 'f.nii.gz'`` or ``moving volume 'MRHead'``."""

    fixed: str = "fixed image"
    moving: str = "moving image"
    fixed_labels: str = "fixed labels"
    moving_labels: str = "moving labels"
    fixed_mask: str = "fixed mask"
    moving_mask: str = "moving mask"
