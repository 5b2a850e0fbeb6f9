"""Small helpers the panels share to label what they show: value ranges and segment names."""

from __future__ import annotations

import math

import numpy as np


def match_segment_names(fixed_names: list[str], moving_names: list[str]) -> list[str]:
    """Segment names present in both segmentations, in the fixed segmentation's order.

    Exporting both segmentations with these names in this order gives the same label value (1, 2, ...) to
    the same structure, so Dice compares like with like.
    """
    moving = set(moving_names)
    seen: set[str] = set()
    common = []
    for name in fixed_names:
        if name in moving and name not in seen:
            common.append(name)
            seen.add(name)
    return common


def value_range(array: np.ndarray | None) -> tuple[float, float] | None:
    """(min, max) of the finite values of an array, or None."""
    if array is None:
        return None
    finite = np.asarray(array)[np.isfinite(array)]
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


def format_range(array: np.ndarray | None, digits: int = 3) -> str:
    """'min – max' of an array for a label, or '—'."""
    r = value_range(array)
    if r is None:
        return "—"
    lo, hi = r
    return f"{lo:.{digits}g} – {hi:.{digits}g}" if math.isfinite(lo) else "—"
