"""The kind of a pair decides what registering it may do: two scans of one session are aligned by the
scanner up to head motion (a linear transform), two visits of one patient differ by head position plus
small real changes, two subjects differ in anatomy.

The kind comes from the user (``--pair``), from DICOM headers (``io.dicom_tags``), or, for files without
them, from the images after the pre-alignment (``from_images``): the same anatomy when the two images'
structures match well (gradient alignment, ``harm_check``, at least ``SAME_ANATOMY_MATCH``: measured on
pairs of training subjects, synthetic follow-ups and the shared clinical patient by
``benchmarks/pair_kind.py``), one session when, besides, the pre-alignment moved the fixed foreground by
at most ``SAME_SESSION_MOTION_MM``.

What each kind runs (``deformable_allowed``): different subjects, the deformable refinement; one patient
at two visits, the follow-up schedule (stiffer) where the slices allow it, the linear result where they are
thick (``THICK_SLICES``: the data cannot tell a deformation along the thick axis from partial volume); one
session, the linear result. Steps the user asks for are always run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

KINDS = ("same-session", "same-patient", "different-subjects")
#: gradient alignment after the pre-alignment from which two images show the same anatomy
SAME_ANATOMY_MATCH = 0.5
#: at most this much motion (mm) of the fixed foreground under the pre-alignment: one session
SAME_SESSION_MOTION_MM = 4.0
#: voxels at least this many times thicker along one axis than along another are thick slices
THICK_SLICES = 2.0


@dataclass(frozen=True)
class PairKind:
    """A pair's kind and why it was chosen (one line for a user)."""

    kind: str  # one of KINDS
    reason: str
    from_images: bool = False


def from_images(match_after: float, moved_mm: float) -> PairKind:
    """The kind the images show after the pre-alignment (see the module's docstring)."""
    if np.isfinite(match_after) and match_after >= SAME_ANATOMY_MATCH:
        evidence = f"the structures match after the pre-alignment (gradient alignment {match_after:.2f})"
        if moved_mm <= SAME_SESSION_MOTION_MM:
            return PairKind("same-session", f"{evidence} and it moved them at most {moved_mm:.1f} mm", True)
        return PairKind("same-patient", f"{evidence}; it moved them up to {moved_mm:.0f} mm", True)
    return PairKind(
        "different-subjects",
        f"the structures differ after the pre-alignment (gradient alignment {match_after:.2f})",
        True,
    )


def thick_slices(*images: sitk.Image) -> bool:
    """True when any image's voxels are ``THICK_SLICES`` times thicker along one axis than another."""
    return any(max(image.GetSpacing()) >= THICK_SLICES * min(image.GetSpacing()) for image in images)


def deformable_allowed(kind: PairKind, thick: bool) -> tuple[bool, str]:
    """(whether the deformable refinement runs by default for this kind, the reason when it does not)."""
    if kind.kind == "same-session":
        return False, "two scans of one session differ by head motion: the linear result is kept"
    if kind.kind == "same-patient" and thick:
        return (
            False,
            "thick slices of one patient cannot tell a deformation from partial volume: the linear result is kept",
        )
    return True, ""
