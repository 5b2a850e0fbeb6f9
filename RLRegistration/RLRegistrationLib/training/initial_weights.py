"""Reading the ``weights.pt`` of a training config's ``init.weights`` (a warm start), shared by the trainers of
both families; what each copies from it is the family's business."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError


def read_initial_weights(path: str | Path, missing_hint: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (on the CPU, tensors only). InputError naming the file when it is missing
    (``missing_hint`` says what to do, e.g. which config trains it), unreadable or not a state dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"init.weights '{path}': file not found ({missing_hint})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is an input error
        raise InputError(f"init.weights '{path}': cannot read the weights ({error})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"init.weights '{path}': not a weights file (a state dict of tensors)")
    return state
