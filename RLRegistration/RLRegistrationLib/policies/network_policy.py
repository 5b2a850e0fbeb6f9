"""Learned policies that run a trained network: loading a checked model and the network grid (the base of
``spac_policy.SPACPolicy`` and ``morphseek_policy.MorphSeekPolicy``).

Grids: the networks are fully convolutional, so they run on any grid whose dimensions are multiples of 16.
To show them anatomy at the voxel size they were trained on, ``NetworkPolicy`` (the base of ``SPACPolicy``
and ``MorphSeekPolicy``) resamples the session's working-grid images to the card's spacing (dimensions
rounded to multiples of 16), runs there, and resizes the step field back (``spatial.resize_displacement``,
vectors rescaled). The session passes its working spacing to ``reset``.

Per step: with ``step_spacings_mm`` (the card's ``inference.step_spacings_mm``, for the policy alone) the
network grid's spacing follows the step index, e.g. two steps at the 3 mm the network was trained on,
then steps at 2 mm, where the same network refines finer detail (``benchmarks/learned_alone.py``).

Steps: with the card's ``inference.diffeomorphic_steps`` the network's step output is read as a stationary
velocity field and the policy returns exp(output) (scaling and squaring on the network grid), as TTO does
with its own steps, so a learned step cannot fold the field (``benchmarks/policy_safety.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..devices import network_bfloat16, resolve_device
from ..errors import PolicyError
from ..fields.spatial import (
    integrate_velocity,
    resize_displacement,
    resize_image,
)
from .base import Policy
from .cards import (
    CARD_NAME,
    DEFAULT_SESSION_SPACING_MM,
    inference_step_options,
    read_card,
    sha256_of,
)
from .morphseek_network import MorphSeekArchitecture, MorphSeekNetwork
from .networks import BackboneArchitecture, SPACArchitecture, SPACNetwork
from .trajectories import SampledTrajectories

# family of a model card -> (architecture class, network class)
FAMILIES: dict[str, tuple[type[BackboneArchitecture], type[torch.nn.Module]]] = {
    "spac": (SPACArchitecture, SPACNetwork),
    "morphseek": (MorphSeekArchitecture, MorphSeekNetwork),
}


def card_architecture(card: dict, path: Path) -> BackboneArchitecture:
    """Architecture of a card (the class of its family), checked against what the policy feeds it
    (2 channels, a grid divisible by the network's down-sampling)."""
    family = card["family"]
    if not isinstance(card["architecture"], dict):
        raise PolicyError(f"model card '{path}': architecture must be a JSON object")
    try:
        arch = FAMILIES[family][0].from_dict(dict(card["architecture"]))
    except (TypeError, ValueError) as error:
        raise PolicyError(f"model card '{path}': bad architecture ({error})") from None
    if getattr(arch, "family", family) != family:
        raise PolicyError(
            f"model card '{path}': the architecture is of family '{arch.family}' but the card says '{family}'"
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


def _architecture_mismatch(network: torch.nn.Module, state: dict) -> str | None:
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


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(network in eval mode on ``device``, card) of a model folder, after checking card, checksum,
    readability and architecture. The network's class follows the card's family (``FAMILIES``:
    ``SPACNetwork`` or ``MorphSeekNetwork``). ``DeviceError`` when CUDA is asked for without a GPU."""
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
    network = FAMILIES[card["family"]][1](arch)
    mismatch = _architecture_mismatch(network, state)
    if mismatch:
        plan = f", plan_dim {arch.plan_dim}" if hasattr(arch, "plan_dim") else ""
        raise PolicyError(
            f"weights '{weights}' do not match the architecture in '{card_path}' ({card['family']}, "
            f"channels {list(arch.channels)}{plan}): {mismatch}"
        )
    network.load_state_dict(state)
    return network.to(device).eval(), card


# ----------------------------------------------------------------------------------------------- policy


def network_shape(shape: tuple[int, ...], factor: float, divisor: int = 16) -> tuple[int, int, int]:
    """Grid of the network: ``shape * factor`` rounded to multiples of ``divisor`` (at least one)."""
    return tuple(max(divisor, int(round(n * factor / divisor)) * divisor) for n in shape)


class NetworkPolicy(Policy):
    """What the learned policy families share: the checked model (``load_model``), its name, description and
    modality from the card, the step bound, and the network grid.

    ``reset`` picks the network grid (the session's working grid resampled to the card's spacing, each
    dimension a multiple of the network's divisor) and resamples the fixed image to it once;
    ``to_network`` resamples an image there and ``to_working`` brings a step field and lambda back to the
    working grid. ``family`` names the card family a subclass runs ("" = any).
    """

    family = ""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        max_step: float | None = None,
        input_spacing_mm: float | None = None,
        diffeomorphic_steps: bool | None = None,
        step_spacings_mm: tuple[float, ...] | None = None,
        precision: str = "auto",
    ):
        self.network, self.card = load_model(model_dir, resolve_device(device))
        self.precision = precision
        self.bfloat16 = network_bfloat16(next(self.network.parameters()).device, precision)
        self.model_dir = Path(model_dir)
        if self.family and self.card["family"] != self.family:
            raise PolicyError(
                f"model '{self.model_dir}' is a '{self.card['family']}' model; {type(self).__name__} runs "
                f"'{self.family}' models"
            )
        self.name = str(self.card["id"])
        self.description = str(self.card.get("description", f"{self.card['family']} learned policy"))
        self.modality = str(self.card.get("modality", "not stated"))
        inference = self.card.get("inference", {}) if isinstance(self.card.get("inference"), dict) else {}
        card_step = inference.get("max_step", self.network.architecture.max_step)
        self.max_step = float(card_step if max_step is None else max_step)
        card_diffeomorphic, self.integration_steps = inference_step_options(
            self.card, self.model_dir / CARD_NAME
        )
        self.diffeomorphic_steps = (
            card_diffeomorphic if diffeomorphic_steps is None else bool(diffeomorphic_steps)
        )
        self.working_spacing_mm = float(self.card["working_grid"]["spacing_mm"])
        self.step_spacings_mm = tuple(float(v) for v in step_spacings_mm) if step_spacings_mm else None
        self.network_spacing_mm = self.working_spacing_mm  # of the current network grid
        self.input_spacing_mm = float(input_spacing_mm or DEFAULT_SESSION_SPACING_MM)
        self.shape: tuple[int, int, int] | None = None
        self._fixed: torch.Tensor | None = None
        self._working_fixed: torch.Tensor | None = None

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        """Follow the session's device; resample the fixed image to the network grid once.

        ``spacing_mm`` (the session's working spacing) overrides ``input_spacing_mm``."""
        if spacing_mm is not None:
            self.input_spacing_mm = float(spacing_mm)
        if next(self.network.parameters()).device != fixed.device:
            self.network.to(fixed.device)
        self._working_fixed = fixed
        self._set_network_grid(self.step_spacing(0))

    def init_sampling(
        self, samples: int, temperature: float | None, seed: int | None, fixed_point_iterations: int
    ) -> None:
        """K sampled trajectories (``trajectories.SampledTrajectories``) drawing at ``temperature`` (default
        0 with one trajectory: the mean; 1 with several), reproducibly from ``seed`` (0 when None)."""
        self.samples = samples
        self.temperature = float(temperature) if temperature is not None else (1.0 if samples > 1 else 0.0)
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._trajectories = SampledTrajectories(samples, fixed_point_iterations)

    def reset_sampling(self, moving: torch.Tensor) -> None:
        """A fresh generator (sampling repeats exactly after each ``reset``) and, with K > 1, trajectories
        starting at the identity on the network grid."""
        device = self._working_fixed.device
        self._generator = self.seeded_generator(device, self.seed) if self.temperature > 0 else None
        if self.samples > 1:
            self._trajectories.reset(moving, self.shape)

    def step_spacing(self, step_index: int) -> float:
        """Spacing (mm) of the network grid at step ``step_index`` (0 = the first step)."""
        if not self.step_spacings_mm:
            return self.working_spacing_mm
        return self.step_spacings_mm[min(step_index, len(self.step_spacings_mm) - 1)]

    def select_grid(self, step_index: int) -> None:
        """Put the network grid at the spacing of step ``step_index`` (a no-op when it is there)."""
        spacing = self.step_spacing(step_index)
        if spacing != self.network_spacing_mm:
            self._set_network_grid(spacing)

    def _set_network_grid(self, spacing_mm: float) -> None:
        factor = self.input_spacing_mm / spacing_mm
        shape = tuple(self._working_fixed.shape[2:])
        self.network_spacing_mm = spacing_mm
        self.shape = network_shape(shape, factor, self.network.architecture.divisor)
        self._fixed = resize_image(self._working_fixed, self.shape)

    def autocast(self) -> torch.autocast:
        """The precision of a network call: bfloat16 convolutions where ``devices.network_bfloat16`` says
        so (outputs are cast back to float32 by the caller), else float32."""
        return torch.autocast(self._working_fixed.device.type, torch.bfloat16, enabled=self.bfloat16)

    def finite_output(self, call):
        """``call()`` (the network on this step's input) under ``autocast``; when a bfloat16 pass gives a
        step or lambda that is not finite, the call again in float32, and float32 for the rest of the
        session (a bfloat16 kernel fault must cost time, never the registration)."""
        with self.autocast():
            out = call()
        if self.bfloat16 and not (torch.isfinite(out.step).all() and torch.isfinite(out.weight).all()):
            self.bfloat16 = False
            out = call()
        return out

    def to_network(self, image: torch.Tensor) -> torch.Tensor:
        """An image of the working grid on the network grid."""
        return resize_image(image, self.shape)

    def learned_step(self, output: torch.Tensor) -> torch.Tensor:
        """The step field (network-grid voxels) of the network's output (B, 3, ...): the output itself, or
        with ``diffeomorphic_steps`` the displacement of exp(output), the output read as a stationary
        velocity field (``spatial.integrate_velocity``, ``integration_steps`` squarings). exp(v) has a
        positive Jacobian determinant wherever v is smooth on the scale of a voxel / 2^squarings, whatever
        the size of v's gradient; where the raw output is small and smooth the two agree to first order.
        The integrated step may exceed ``max_step`` (it is the bound of the velocity)."""
        return integrate_velocity(output, self.integration_steps) if self.diffeomorphic_steps else output

    @staticmethod
    def to_working(
        step: torch.Tensor, weight: torch.Tensor, working_shape: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(step field in working-grid voxels, lambda clamped to [1e-6, 1]) on the working grid."""
        return resize_displacement(step, working_shape), NetworkPolicy.weight_to_working(
            weight, working_shape
        )

    @staticmethod
    def weight_to_working(weight: torch.Tensor, working_shape: tuple[int, int, int]) -> torch.Tensor:
        """lambda (1, 1, ...) of the network grid on the working grid, clamped to [1e-6, 1]."""
        weight = F.interpolate(weight, size=working_shape, mode="trilinear", align_corners=True)
        return weight.clamp(1e-6, 1.0)

    @staticmethod
    def seeded_generator(device: torch.device, seed: int | None) -> torch.Generator:
        """A generator on ``device`` seeded with ``seed`` (0 when None: sampling is reproducible)."""
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else int(seed))
        return generator
