"""Learned policies: SPAC models shipped as ``models/<id>/`` folders, and chaining with test-time optimization.

A model folder holds ``card.json`` (id, family "spac", description, modality, architecture, working grid,
training provenance, validation metrics, weights file name and its sha256) and the weights (a state dict
of ``networks.SPACNetwork``). ``load_model`` checks all of it and raises ``PolicyError`` with the path and
the problem (missing folder/card, bad card, checksum mismatch, unreadable weights, architecture mismatch).

Every folder found by ``discover_models`` is registered in ``policies`` under its card id (e.g.
``spac-brain-synth``) and as ``<id>+tto`` (the learned steps, then test-time optimization continuing from
the learned field with the learned lambda as its fixed weight map). The models folder is
``$RLREG_MODELS_DIR``, else ``RLRegistrationLib/models`` (installed extension), else ``<repo>/models``.

Grids: the network is fully convolutional (plan from adaptive pooling), so it runs on any grid whose
dimensions are multiples of 16. To show it anatomy at the voxel size it was trained on, ``SPACPolicy``
resamples the session's working-grid images to the card's spacing (dimensions rounded to multiples of 16),
runs there, and resizes the step field back (``spatial.resize_displacement``, vectors rescaled). The
session passes its working spacing to ``reset``; ``input_spacing_mm`` is the fallback (default 2 mm, the
session's default).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .devices import resolve_device
from .errors import PolicyError
from .networks import SPACArchitecture, SPACNetwork
from .policies import (
    Policy,
    PolicyState,
    PolicyStep,
    TestTimeOptimizationPolicy,
    make_tto_policy,
    register_policy,
)
from .spatial import resize_displacement

CARD_NAME = "card.json"
DEFAULT_SESSION_SPACING_MM = 2.0  # SessionOptions.working_spacing_mm
_CARD_FIELDS = ("id", "family", "architecture", "working_grid", "weights", "sha256")


# ---------------------------------------------------------------------------------------------- loading


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_card(folder: str | Path) -> dict:
    """The checked ``card.json`` of a model folder; ``PolicyError`` naming the path otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PolicyError(f"model folder '{folder}' not found")
    path = folder / CARD_NAME
    if not path.is_file():
        raise PolicyError(f"model card '{path}' not found (a model folder needs {CARD_NAME} and its weights)")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PolicyError(f"model card '{path}' is not readable JSON ({error})") from None
    if not isinstance(card, dict):
        raise PolicyError(f"model card '{path}' is not a JSON object")
    missing = [key for key in _CARD_FIELDS if key not in card]
    if missing:
        raise PolicyError(f"model card '{path}' lacks {', '.join(missing)}")
    if card["family"] != "spac":
        raise PolicyError(
            f"model card '{path}': family '{card['family']}' is not supported (expected 'spac')"
        )
    return card


def card_architecture(card: dict, path: Path) -> SPACArchitecture:
    """Architecture of a card, checked against what the policy feeds it (2 channels, a grid divisible by
    the network's down-sampling)."""
    try:
        arch = SPACArchitecture.from_dict(dict(card["architecture"]))
    except (TypeError, ValueError) as error:
        raise PolicyError(f"model card '{path}': bad architecture ({error})") from None
    if arch.in_channels != 2:
        raise PolicyError(
            f"model card '{path}': in_channels {arch.in_channels}, but SPAC policies see 2 channels "
            "(fixed, warped)"
        )
    grid = card["working_grid"] if isinstance(card["working_grid"], dict) else {}
    shape, spacing = grid.get("shape"), grid.get("spacing_mm")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or any(not isinstance(n, int) or n <= 0 or n % arch.divisor for n in shape)
    ):
        raise PolicyError(
            f"model card '{path}': working grid shape {shape} must be 3 positive multiples of {arch.divisor}"
        )
    if not isinstance(spacing, (int, float)) or spacing <= 0:
        raise PolicyError(f"model card '{path}': working grid spacing_mm {spacing} must be a positive number")
    return arch


def _architecture_mismatch(network: SPACNetwork, state: dict) -> str | None:
    """None when ``state`` fits ``network`` exactly, else a one-line summary of the differences."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} from the card"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensors differ in shape (e.g. {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(parts)


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[SPACNetwork, dict]:
    """(network in eval mode on ``device``, card) of a model folder, after checking card, checksum,
    readability and architecture. ``DeviceError`` when CUDA is asked for without a GPU."""
    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    folder = Path(folder)
    card = read_card(folder)
    card_path = folder / CARD_NAME
    arch = card_architecture(card, card_path)
    weights = folder / str(card["weights"])
    if not weights.is_file():
        raise PolicyError(f"weights '{weights}' not found (named by '{card_path}')")
    digest = sha256_of(weights)
    if digest != str(card["sha256"]).lower():
        raise PolicyError(
            f"weights '{weights}': sha256 {digest[:16]}... does not match the card's {str(card['sha256'])[:16]}...: "
            "weights corrupted or modified"
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle errors, ...: all mean "unreadable"
        raise PolicyError(
            f"weights '{weights}' cannot be loaded ({type(error).__name__}): truncated or not a PyTorch "
            "state dict"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PolicyError(f"weights '{weights}' are not a state dict of tensors")
    network = SPACNetwork(arch)
    mismatch = _architecture_mismatch(network, state)
    if mismatch:
        raise PolicyError(
            f"weights '{weights}' do not match the architecture in '{card_path}' (channels "
            f"{list(arch.channels)}, plan_dim {arch.plan_dim}): {mismatch}"
        )
    network.load_state_dict(state)
    return network.to(device).eval(), card


# ----------------------------------------------------------------------------------------------- policy


def network_shape(shape: tuple[int, ...], factor: float, divisor: int = 16) -> tuple[int, int, int]:
    """Grid of the network: ``shape * factor`` rounded to multiples of ``divisor`` (at least one)."""
    return tuple(max(divisor, int(round(n * factor / divisor)) * divisor) for n in shape)


def resize_image(image: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Corner-aligned trilinear resize (like ``resize_displacement``); a 3^3 box blur first when
    shrinking by more than 1.25x (anti-aliasing)."""
    if tuple(image.shape[2:]) == tuple(shape):
        return image
    if any(n > 1.25 * m for n, m in zip(image.shape[2:], shape)):
        image = F.avg_pool3d(image, 3, stride=1, padding=1, count_include_pad=False)
    return F.interpolate(image, size=tuple(shape), mode="trilinear", align_corners=True)


class SPACPolicy(Policy):
    """A trained SPAC network as a step-wise policy.

    Per step: plan = mean of the planner (``stochastic=True``: a sample, reproducible with ``seed``),
    step field = actor(plan) bounded by ``max_step`` voxels *of the network grid* (default: the card's
    ``inference.max_step``, else the training bound),
    lambda = the weight-map head, both returned on the session's working grid.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        stochastic: bool = False,
        seed: int | None = None,
        max_step: float | None = None,
        input_spacing_mm: float | None = None,
    ):
        self.network, self.card = load_model(model_dir, resolve_device(device))
        self.model_dir = Path(model_dir)
        self.name = str(self.card["id"])
        self.description = str(self.card.get("description", "SPAC learned policy"))
        self.modality = str(self.card.get("modality", "not stated"))
        self.stochastic = bool(stochastic)
        self.seed = seed
        card_step = self.card.get("inference", {}).get("max_step", self.network.architecture.max_step)
        self.max_step = float(card_step if max_step is None else max_step)
        self.working_spacing_mm = float(self.card["working_grid"]["spacing_mm"])
        self.input_spacing_mm = float(input_spacing_mm or DEFAULT_SESSION_SPACING_MM)
        self._generator: torch.Generator | None = None
        self._fixed: torch.Tensor | None = None

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        """Follow the session's device; resample the fixed image to the network grid once.

        ``spacing_mm`` (the session's working spacing) overrides ``input_spacing_mm``."""
        if spacing_mm is not None:
            self.input_spacing_mm = float(spacing_mm)
        if next(self.network.parameters()).device != fixed.device:
            self.network.to(fixed.device)
        factor = self.input_spacing_mm / self.working_spacing_mm
        self.shape = network_shape(tuple(fixed.shape[2:]), factor, self.network.architecture.divisor)
        self._fixed = resize_image(fixed, self.shape)
        self._generator = None
        if self.stochastic:
            self._generator = torch.Generator(device=fixed.device)
            self._generator.manual_seed(0 if self.seed is None else int(self.seed))

    @torch.no_grad()
    def propose(self, state: PolicyState) -> PolicyStep:
        if self._fixed is None:
            self.reset(state.fixed, state.moving)
        working_shape = tuple(state.fixed.shape[2:])
        warped = resize_image(state.warped, self.shape)
        out = self.network(
            self._fixed,
            warped,
            deterministic=not self.stochastic,
            generator=self._generator,
            max_step=self.max_step,
        )
        step = resize_displacement(out.step, working_shape)
        weight = F.interpolate(out.weight, size=working_shape, mode="trilinear", align_corners=True)
        return PolicyStep(
            step_field=step,
            weight_map=weight.clamp(1e-6, 1.0),
            diagnostics={
                "plan_norm": float(out.plan.norm()),
                "plan_sigma": float(out.log_std.exp().mean()),
                "max_step_vox": float(step.abs().max()),
                "lambda_mean": float(weight.mean()),
            },
        )


class ChainedPolicy(Policy):
    """``first`` for ``first_steps`` steps, then test-time optimization (``then``) continuing from the
    learned field (the session's total field) with the last learned lambda as its fixed weight map."""

    def __init__(self, first: Policy, first_steps: int, then: TestTimeOptimizationPolicy):
        self.first, self.first_steps, self.then = first, int(first_steps), then
        self.name = f"{first.name}+{then.name}"
        self.description = f"{first.description}; then test-time optimization"
        self.modality = first.modality
        self._weights: dict[int, torch.Tensor | None] = {}

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        self._weights = {}
        self.first.reset(fixed, moving, spacing_mm)
        self.then.fixed_weight_map = None
        self.then.reset(fixed, moving, spacing_mm)

    def _learned_weight_map(self, step_index: int) -> torch.Tensor | None:
        for index in range(min(step_index, self.first_steps) - 1, -1, -1):
            if self._weights.get(index) is not None:
                return self._weights[index]
        return None

    def propose(self, state: PolicyState) -> PolicyStep:
        if state.step_index < self.first_steps:
            proposal = self.first.propose(state)
            self._weights[state.step_index] = proposal.weight_map
            proposal.diagnostics["stage"] = 0.0
            return proposal
        weight = self._learned_weight_map(state.step_index)
        if weight is not None and self.then.fixed_weight_map is not weight:
            self.then.fixed_weight_map = weight  # used as is (interpolated to each pyramid level)
            self.then.weight_logits = None
        sub_state = PolicyState(
            state.fixed, state.moving, state.warped, state.field, state.step_index - self.first_steps
        )
        proposal = self.then.propose(sub_state)
        proposal.diagnostics["stage"] = 1.0
        return proposal


# -------------------------------------------------------------------------------------------- discovery


def models_dir() -> Path | None:
    """``$RLREG_MODELS_DIR``, else ``RLRegistrationLib/models``, else ``<repo>/models``; None if absent."""
    env = os.environ.get("RLREG_MODELS_DIR")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = Path(__file__).resolve().parent
    for candidate in (here / "models", here.parent.parent / "models", here.parent / "Resources" / "models"):
        if candidate.is_dir():
            return candidate
    return None


_SPAC_OPTIONS = ("device", "stochastic", "seed", "max_step", "input_spacing_mm")


def _split_options(name: str, options: dict, allowed: tuple[str, ...]) -> dict:
    """Options of a learned policy; ``PolicyError`` for any other option that is set (not None)."""
    extra = {k: v for k, v in options.items() if k not in allowed and v is not None}
    if extra:
        raise PolicyError(
            f"policy '{name}' has no option '{next(iter(extra))}' (a trained network; options: "
            f"{', '.join(allowed)})"
        )
    return {k: v for k, v in options.items() if k in allowed and v is not None}


def _spac_factory(folder: Path, name: str):
    def make(**options) -> SPACPolicy:
        return SPACPolicy(folder, **_split_options(name, options, _SPAC_OPTIONS))

    return make


def _chained_factory(folder: Path, name: str, default_steps: int):
    def make(first_steps: int | None = None, **options) -> ChainedPolicy:
        spac = {k: options.pop(k) for k in _SPAC_OPTIONS if k in options and options[k] is not None}
        tto = {k: v for k, v in options.items() if v is not None}
        first = SPACPolicy(folder, **spac)
        return ChainedPolicy(
            first, default_steps if first_steps is None else first_steps, make_tto_policy(name, **tto)
        )

    return make


def discover_models(directory: str | Path | None = None) -> dict[str, Path]:
    """Register every ``<directory>/<id>/card.json`` of family 'spac' as policies ``<id>`` and
    ``<id>+tto``; returns {id: folder}. Unreadable cards are skipped with a warning (loading them later
    gives the full error). Weights are only read when a policy is made."""
    directory = models_dir() if directory is None else Path(directory)
    found: dict[str, Path] = {}
    if directory is None or not directory.is_dir():
        return found
    for card_path in sorted(directory.glob(f"*/{CARD_NAME}")):
        try:
            card = read_card(card_path.parent)
        except PolicyError as error:
            warnings.warn(f"skipping model: {error}", stacklevel=2)
            continue
        name = str(card["id"])
        description = str(card.get("description", "SPAC learned policy"))
        steps = int(card.get("inference", {}).get("steps", 5))
        register_policy(name, _spac_factory(card_path.parent, name), description)
        register_policy(
            f"{name}+tto",
            _chained_factory(card_path.parent, f"{name}+tto", steps),
            f"{description}; {steps} learned steps, then test-time optimization",
        )
        found[name] = card_path.parent
    return found


try:
    discover_models()
except Exception as error:  # discovery must never break importing the library
    warnings.warn(f"model discovery failed: {error}", stacklevel=1)
