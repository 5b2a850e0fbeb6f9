"""The vocabulary of a run's options, shared by every floor and every front-end (no torch, no SimpleITK):
the values each choice may take and the range of each number, with their units.

``registration.run_spec.RunSpec`` checks a run against these; the CLI's choices and the panels' controls
(ranges, combo boxes) are made from them, so that a limit is written once.
"""

from __future__ import annotations

INITIALIZATIONS = ("affine", "rigid", "none")  # linear pre-alignment (registration.prealign)
OUTPUT_GRIDS = ("auto", "fixed", "working")  # grid of the written displacement field (geometry.field_grid)
SIMILARITIES = ("ncc", "mind", "mse")  # ncc: same contrast; mind: across modalities
INTENSITY_MAPPINGS = ("auto", "on", "off")  # tto: map the moving contrast to the fixed one (T1 vs T2)
DEVICES = ("auto", "cpu", "cuda")  # "cuda:N" names one GPU
#: what the pair is (registration.pair_kind); "auto": from DICOM headers, else from the images
PAIR_KINDS = ("auto", "same-session", "same-patient", "different-subjects")

#: inclusive (low, high) of every numeric option; units: steps and iterations are counts, regularization
#: a weight, spacing in mm, memory in GiB, temperature a factor on the latent standard deviation
RANGES: dict[str, tuple[float, float]] = {
    "steps": (0, 500),
    "iterations": (1, 500),
    "regularization": (0.0, 100.0),
    "spacing_mm": (0.25, 20.0),
    "max_memory_gib": (0.25, 4096.0),
    "samples": (1, 16),
    "temperature": (0.0, 10.0),
    "seed": (0, 2**31 - 1),
}
INTEGER_OPTIONS = ("steps", "iterations", "samples", "seed")
