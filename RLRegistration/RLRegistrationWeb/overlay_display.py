"""The overlay part of the browser panel: the value range of the overlay shown and its colour bar.

A mixin of :class:`~RLRegistrationWeb.controller.WebPanel`, which owns the state it reads: ``params`` (the
parameter node), ``logic`` (the scene logic), ``overlay`` (the overlay shown: a key of
``OVERLAY_VOLUMES`` or "none"), ``overlay_range`` (the user's range, or None for the MRML layer's default)
and ``_fail`` (the page's error banner).
"""

from __future__ import annotations

import math

from RLRegistrationMRML.parameters import OVERLAY_VOLUMES

COLORBAR_STOPS = 32


class OverlayDisplay:
    """Value range and colour bar of the overlay shown (see the module docstring for the state it uses)."""

    def set_overlay_range(self, low: float, high: float) -> bool:
        """Window of the overlay shown (its colour bar's range)."""
        try:
            low, high = float(low), float(high)
        except (TypeError, ValueError):
            return self._fail("the value range needs two numbers")
        if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
            return self._fail(f"the value range needs low < high, got {low} – {high}")
        self.overlay_range = (low, high)
        self._apply_overlay_range()
        return True

    def overlay_node(self):
        spec = OVERLAY_VOLUMES.get(self.overlay)
        node = getattr(self.params, spec["attribute"]) if spec else None
        return node if node is not None and node.GetImageData() is not None else None

    def overlay_data_range(self) -> tuple[float, float] | None:
        node = self.overlay_node()
        if node is None:
            return None
        lo, hi = node.GetImageData().GetScalarRange()
        return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1e-3)

    def _apply_overlay_range(self) -> None:
        """The user's range of the overlay shown, again after a step replaced its default (the data's
        1st..99th percentile, set by the MRML layer at every step)."""
        if self.overlay_node() is None or self.overlay_range is None:
            return
        self.logic.setOverlayWindow(self.params, self.overlay, self.overlay_range)

    def overlay_window(self) -> tuple[float, float] | None:
        """The display range (low, high) of the overlay shown, in its unit."""
        if self.overlay_node() is None:
            return None
        return self.logic.overlayWindow(self.params, self.overlay)

    def overlay_colorbar_css(self) -> str:
        """A CSS gradient of the overlay's colour node over its range (det J's colours follow the range)."""
        node = self.overlay_node()
        display = node.GetDisplayNode() if node is not None else None
        color_node = display.GetColorNode() if display is not None else None
        if color_node is None or color_node.GetNumberOfColors() < 2:
            return ""
        count = color_node.GetNumberOfColors()
        stops = []
        for n in range(COLORBAR_STOPS):
            rgba = [0.0, 0.0, 0.0, 0.0]
            color_node.GetColor(round(n * (count - 1) / (COLORBAR_STOPS - 1)), rgba)
            r, g, b = (round(255 * c) for c in rgba[:3])
            stops.append(f"rgb({r},{g},{b}) {100 * n / (COLORBAR_STOPS - 1):.1f}%")
        return "linear-gradient(to right, " + ", ".join(stops) + ")"
