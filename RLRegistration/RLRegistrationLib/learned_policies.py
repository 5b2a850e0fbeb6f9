"""Learned policies: SPAC and MorphSeek models shipped as ``models/<id>/`` folders, and chaining with
test-time optimization.

A model folder holds ``card.json`` (id, family "spac" or "morphseek", description, modality, architecture,
working grid, training provenance, validation metrics, weights file name and its sha256) and the weights (a
state dict of the family's network: ``networks.SPACNetwork`` or ``morphseek.MorphSeekNetwork``).
``load_model`` checks all of it and raises ``PolicyError`` with the path and the problem (missing
folder/card, bad card, unknown family, checksum mismatch, unreadable weights, architecture mismatch).

Every folder found by ``discover_models`` is registered in ``policies`` under its card id (e.g.
``spac-brain-synth``) and as ``<id>+tto`` (the learned steps, then test-time optimization continuing from
the learned field with the learned lambda as its fixed weight map; the card's ``inference.chain`` says how
many steps of each and which TTO options, see ``ChainSettings``). The models folder is
``$RLREG_MODELS_DIR``, else ``RLRegistrationLib/models`` (installed extension), else ``<repo>/models``.

Grids: the networks are fully convolutional, so they run on any grid whose dimensions are multiples of 16.
To show them anatomy at the voxel size they were trained on, ``NetworkPolicy`` (the base of ``SPACPolicy``
and ``MorphSeekPolicy``) resamples the session's working-grid images to the card's spacing (dimensions
rounded to multiples of 16), runs there, and resizes the step field back (``spatial.resize_displacement``,
vectors rescaled). The session passes its working spacing to ``reset``; ``input_spacing_mm`` is the
fallback (default 2 mm, the session's default).

Steps: with the card's ``inference.diffeomorphic_steps`` (or the policy option of that name) the network's
step output is read as a stationary velocity field and the policy returns exp(output) (scaling and
squaring on the network grid, ``inference.integration_steps`` squarings, default 7), as TTO does with its
own steps, so a learned step cannot fold the field; without it (cards written before the option) the raw
output is the step. ``benchmarks/policy_safety.py`` measures both.

MorphSeek with ``samples`` K > 1 keeps K trajectories on the network grid, each with its own total field,
warped image and latent samples; the session's total field follows their mean (``spatial.step_to_reach``)
and each step reports the per-voxel spread of the K total displacements in mm (the uncertainty map).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .devices import resolve_device
from .errors import PolicyError
from .morphseek import MorphSeekArchitecture, MorphSeekNetwork
from .networks import BackboneArchitecture, SPACArchitecture, SPACNetwork
from .policies import (
    Policy,
    PolicyState,
    PolicyStep,
    TestTimeOptimizationConfig,
    TestTimeOptimizationPolicy,
    make_tto_policy,
    register_policy,
    tto_option_defaults,
)
from .spatial import (
    compose_displacements,
    integrate_velocity,
    resize_displacement,
    step_to_reach,
    warp,
)

CARD_NAME = "card.json"
DEFAULT_SESSION_SPACING_MM = 2.0  # SessionOptions.working_spacing_mm
INTEGRATION_STEPS = 7  # squarings of a diffeomorphic learned step (as TTO's ``integrate_velocity``)
_CARD_FIELDS = ("id", "family", "architecture", "working_grid", "weights", "sha256")
# family of a model card -> (architecture class, network class)
FAMILIES: dict[str, tuple[type[BackboneArchitecture], type[torch.nn.Module]]] = {
    "spac": (SPACArchitecture, SPACNetwork),
    "morphseek": (MorphSeekArchitecture, MorphSeekNetwork),
}


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
    if card["family"] not in FAMILIES:
        raise PolicyError(
            f"model card '{path}': family '{card['family']}' is not supported (expected one of "
            f"{', '.join(repr(f) for f in sorted(FAMILIES))})"
        )
    inference_step_options(card, path)
    return card


def inference_step_options(card: dict, path: Path | str = CARD_NAME) -> tuple[bool, int]:
    """(diffeomorphic_steps, integration_steps) of a card's ``inference``: whether each learned step is
    read as a stationary velocity field and integrated (scaling and squaring, ``integration_steps``
    squarings) before it is composed, so that it is a diffeomorphism like a TTO step. Absent: (False, 7),
    the raw step of the cards written before the option. ``PolicyError`` naming the card otherwise."""
    inference = card.get("inference") if isinstance(card.get("inference"), dict) else {}
    diffeomorphic = inference.get("diffeomorphic_steps", False)
    squarings = inference.get("integration_steps", INTEGRATION_STEPS)
    if not isinstance(diffeomorphic, bool):
        raise PolicyError(
            f"model card '{path}': inference.diffeomorphic_steps must be true or false, got {diffeomorphic!r}"
        )
    if isinstance(squarings, bool) or not isinstance(squarings, int) or not 1 <= squarings <= 12:
        raise PolicyError(
            f"model card '{path}': inference.integration_steps must be an integer from 1 to 12, got "
            f"{squarings!r}"
        )
    return diffeomorphic, squarings


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


@dataclass(frozen=True)
class ChainSettings:
    """How ``<id>+tto`` hands over from the learned steps to test-time optimization (card
    ``inference.chain``): ``learned_steps`` learned steps, then ``then_steps`` TTO steps (the default
    length of a run is their sum) with ``tto`` options (``TestTimeOptimizationConfig`` fields, e.g. the
    pyramid schedule and the regularization weight for the learned lambda map); ``tto_by_similarity``
    maps a similarity name to options that replace those of ``tto`` when the run uses that similarity
    (e.g. a weight chosen for MIND-SSC)."""

    learned_steps: int
    then_steps: int = 3
    tto: dict = field(default_factory=lambda: {"pyramid": (1,)})
    tto_by_similarity: dict = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.learned_steps + self.then_steps

    def tto_options(self, similarity: str | None = None) -> dict:
        """The TTO options of a run with ``similarity`` (None: the TTO default's)."""
        return {**self.tto, **self.tto_by_similarity.get(similarity or "", {})}


def _tto_options(options: object, where: str) -> tuple[dict | None, str | None]:
    """(options with lists as tuples, None) or (None, the problem) for a card's TTO options object."""
    if not isinstance(options, dict):
        return None, f"{where} must be an object of TTO options"
    unknown = [k for k in options if k not in TestTimeOptimizationConfig.__dataclass_fields__]
    if unknown:
        return None, f"{where} has unknown option '{unknown[0]}'"
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}, None


def chain_settings(card: dict, path: Path | str = CARD_NAME) -> ChainSettings:
    """The card's ``inference.chain`` (``PolicyError`` naming the card when malformed); without one, the
    card's ``inference.steps`` learned steps then 3 fine TTO steps."""
    inference = card.get("inference") if isinstance(card.get("inference"), dict) else {}
    chain = inference.get("chain")
    if chain is None:
        return ChainSettings(int(inference.get("steps", 5)))
    if not isinstance(chain, dict):
        raise PolicyError(
            f"model card '{path}': inference.chain must be an object with learned_steps, then_steps and tto "
            "options"
        )
    steps = (chain.get("learned_steps"), chain.get("then_steps", 3))
    problem = None
    if any(not isinstance(n, int) or n < 0 for n in steps) or steps[0] + steps[1] < 1:
        problem = f"learned_steps {steps[0]} and then_steps {steps[1]} must be integers >= 0 (sum >= 1)"
    tto, by_similarity = ChainSettings(0).tto, {}
    if problem is None and "tto" in chain:
        tto, problem = _tto_options(chain["tto"], "tto")
    extra = chain.get("tto_by_similarity", {})
    if problem is None and not isinstance(extra, dict):
        problem = "tto_by_similarity must be an object {similarity: TTO options}"
    for name, options in extra.items() if problem is None else ():
        by_similarity[name], problem = _tto_options(options, f"tto_by_similarity.{name}")
        if problem:
            break
    if problem:
        raise PolicyError(f"model card '{path}': inference.chain {problem}")
    return ChainSettings(steps[0], steps[1], tto, by_similarity)


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


def resize_image(image: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Corner-aligned trilinear resize (like ``resize_displacement``), without a pre-filter: the working
    images are already anti-aliased, and the networks were trained on unblurred images; an extra 3^3 box
    blur made the learned steps overshoot after the second step (``benchmarks/RESULTS.md``)."""
    if tuple(image.shape[2:]) == tuple(shape):
        return image
    return F.interpolate(image, size=tuple(shape), mode="trilinear", align_corners=True)


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
    ):
        self.network, self.card = load_model(model_dir, resolve_device(device))
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
        self.input_spacing_mm = float(input_spacing_mm or DEFAULT_SESSION_SPACING_MM)
        self.shape: tuple[int, int, int] | None = None
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


class SPACPolicy(NetworkPolicy):
    """A trained SPAC network as a step-wise policy.

    Per step: plan = mean of the planner (``stochastic=True``: a sample, reproducible with ``seed``),
    step field = actor(plan) bounded by ``max_step`` voxels *of the network grid* (default: the card's
    ``inference.max_step``, else the training bound),
    lambda = the weight-map head, both returned on the session's working grid.
    """

    family = "spac"

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        stochastic: bool = False,
        seed: int | None = None,
        max_step: float | None = None,
        input_spacing_mm: float | None = None,
        diffeomorphic_steps: bool | None = None,
    ):
        super().__init__(model_dir, device, max_step, input_spacing_mm, diffeomorphic_steps)
        self.stochastic = bool(stochastic)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        super().reset(fixed, moving, spacing_mm)
        self._generator = self.seeded_generator(fixed.device, self.seed) if self.stochastic else None

    @torch.no_grad()
    def propose(self, state: PolicyState) -> PolicyStep:
        if self._fixed is None:
            self.reset(state.fixed, state.moving)
        out = self.network(
            self._fixed,
            self.to_network(state.warped),
            deterministic=not self.stochastic,
            generator=self._generator,
            max_step=self.max_step,
        )
        step, weight = self.to_working(self.learned_step(out.step), out.weight, tuple(state.fixed.shape[2:]))
        return PolicyStep(
            step_field=step,
            weight_map=weight,
            diagnostics={
                "plan_norm": float(out.plan.norm()),
                "plan_sigma": float(out.log_std.exp().mean()),
                "max_step_vox": float(step.abs().max()),
                "lambda_mean": float(weight.mean()),
            },
        )


HISTORY_BYTES = 512 * 2**20  # trajectories kept for stepping back (CPU memory), oldest dropped first


class MorphSeekPolicy(NetworkPolicy):
    """A trained MorphSeek network as a step-wise policy, optionally sampling several trajectories.

    * ``samples`` K = 1 (default): one trajectory, the session's own. The latent is z = mu at
      ``temperature`` 0 (default: deterministic) or sampled with z = mu + tau sigma eps.
    * K > 1: the policy keeps K trajectories on the network grid, batched, each with its own total field
      phi_k (composed step by step like the session's), its own warped image (the moving image resampled
      once to the network grid, warped with phi_k) and its own latent sample at temperature tau
      (``temperature``, default 1). The session's total field follows the mean phi_bar = mean_k phi_k: the
      returned step solves ``a + phi_{t-1} o (id + a) = phi_bar_t`` (``spatial.step_to_reach``,
      ``fixed_point_iterations``). lambda is the mean of the K weight maps; ``uncertainty_map`` is
      sqrt(mean_k |phi_k - phi_bar|^2) in mm on the working grid.

    Sampling is reproducible: the noise comes from a generator seeded with ``seed`` (0 when None) at each
    ``reset``. The trajectories of past steps are kept (up to ``HISTORY_BYTES``) so that a session can step
    back and continue; when a needed state was dropped, the K trajectories restart from the session's field
    (diagnostic ``trajectories_restarted``).
    """

    family = "morphseek"
    supports_sampling = True

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        temperature: float | None = None,
        samples: int = 1,
        seed: int | None = None,
        max_step: float | None = None,
        input_spacing_mm: float | None = None,
        fixed_point_iterations: int = 5,
        diffeomorphic_steps: bool | None = None,
    ):
        samples = int(samples)
        if samples < 1:
            raise PolicyError(f"policy '{model_dir}': samples must be >= 1, got {samples}")
        if temperature is not None and not (math.isfinite(float(temperature)) and float(temperature) >= 0):
            raise PolicyError(f"policy '{model_dir}': temperature must be >= 0, got {temperature}")
        super().__init__(model_dir, device, max_step, input_spacing_mm, diffeomorphic_steps)
        self.samples = samples
        self.temperature = float(temperature) if temperature is not None else (1.0 if samples > 1 else 0.0)
        self.seed = seed
        self.fixed_point_iterations = int(fixed_point_iterations)
        self._generator: torch.Generator | None = None
        self._moving: torch.Tensor | None = None
        self._history: dict[int, torch.Tensor] = {}  # step index -> trajectories (K, 3, *shape), CPU

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        super().reset(fixed, moving, spacing_mm)
        self._generator = self.seeded_generator(fixed.device, self.seed) if self.temperature > 0 else None
        self._history = {}
        self._moving = None
        if self.samples > 1:
            self._moving = self.to_network(moving)
            self._history[0] = torch.zeros((self.samples, 3, *self.shape))

    @torch.no_grad()
    def propose(self, state: PolicyState) -> PolicyStep:
        if self._fixed is None:
            self.reset(state.fixed, state.moving)
        if self.samples > 1:
            return self._propose_trajectories(state)
        out = self.network(
            self._fixed,
            self.to_network(state.warped),
            temperature=self.temperature,
            generator=self._generator,
            max_step=self.max_step,
        )
        step, weight = self.to_working(self.learned_step(out.step), out.weight, tuple(state.fixed.shape[2:]))
        return PolicyStep(
            step_field=step, weight_map=weight, diagnostics=self._diagnostics(out, step, weight)
        )

    def _diagnostics(self, out, step: torch.Tensor, weight: torch.Tensor) -> dict[str, float]:
        return {
            "latent_sigma": float(out.log_std.exp().mean()),
            "max_step_vox": float(step.abs().max()),
            "lambda_mean": float(weight.mean()),
            "temperature": self.temperature,
            "samples": float(self.samples),
        }

    def _trajectories(self, state: PolicyState) -> tuple[torch.Tensor, bool]:
        """(K total fields on the network grid before step ``state.step_index``, restarted?)."""
        index = state.step_index
        for later in [i for i in self._history if i > index]:
            del self._history[later]  # the session stepped back: those steps are gone
        if index in self._history:
            return self._history[index].to(state.fixed.device), False
        start = resize_displacement(state.field, self.shape)
        return start.expand(self.samples, -1, -1, -1, -1).contiguous(), True

    def _remember(self, index: int, fields: torch.Tensor) -> None:
        self._history[index] = fields.cpu()
        size = fields.numel() * fields.element_size()
        while len(self._history) > 1 and size * len(self._history) > HISTORY_BYTES:
            del self._history[min(self._history)]

    def _propose_trajectories(self, state: PolicyState) -> PolicyStep:
        k = self.samples
        working_shape = tuple(state.fixed.shape[2:])
        fields, restarted = self._trajectories(state)
        warped = warp(self._moving.expand(k, -1, -1, -1, -1), fields)
        out = self.network(
            self._fixed.expand(k, -1, -1, -1, -1),
            warped,
            temperature=self.temperature,
            generator=self._generator,
            max_step=self.max_step,
        )
        fields = compose_displacements(
            self.learned_step(out.step), fields
        )  # phi_k,t = a_k + phi_k,t-1 o (id + a_k)
        mean = fields.mean(dim=0, keepdim=True)
        target = resize_displacement(mean, working_shape)
        step = step_to_reach(state.field, target, self.fixed_point_iterations)
        residual = compose_displacements(step, state.field) - target
        weight = self.weight_to_working(out.weight.mean(dim=0, keepdim=True), working_shape)
        uncertainty = self.spread_mm(fields, mean, working_shape)
        self._remember(state.step_index + 1, fields)
        diagnostics = self._diagnostics(out, step, weight)
        diagnostics.update(
            {
                "uncertainty_mean_mm": float(uncertainty.mean()),
                "uncertainty_max_mm": float(uncertainty.max()),
                "fixed_point_residual_vox": float(residual.abs().max()),
                "trajectories_restarted": float(restarted),
            }
        )
        return PolicyStep(
            step_field=step, weight_map=weight, diagnostics=diagnostics, uncertainty_map=uncertainty
        )

    def spread_mm(
        self, fields: torch.Tensor, mean: torch.Tensor, working_shape: tuple[int, int, int]
    ) -> torch.Tensor:
        """sqrt(mean_k |phi_k - phi_bar|^2) in mm, (1, 1, *working_shape).

        Network-grid voxels are converted to mm per axis (the network grid spans the working grid's extent,
        corner-aligned, so its voxel size along an axis is ``spacing * (n_working - 1) / (n_network - 1)``);
        the scalar map is then interpolated to the working grid."""
        spacing = self.input_spacing_mm
        mm = [
            spacing * (w - 1) / max(n - 1, 1) for w, n in zip(reversed(working_shape), reversed(self.shape))
        ]  # channels (i, j, k) <-> axes (W, H, D)
        scale = torch.tensor(mm, dtype=fields.dtype, device=fields.device).view(1, 3, 1, 1, 1)
        squared = ((fields - mean) * scale).pow(2).sum(dim=1, keepdim=True).mean(dim=0, keepdim=True)
        spread = squared.sqrt()
        if tuple(spread.shape[2:]) != tuple(working_shape):
            spread = F.interpolate(spread, size=working_shape, mode="trilinear", align_corners=True)
        return spread.clamp(min=0.0)


class ChainedPolicy(Policy):
    """``first`` for ``first_steps`` steps, then test-time optimization (``then``) continuing from the
    learned field (the session's total field) with the last learned lambda as its fixed weight map."""

    def __init__(self, first: Policy, first_steps: int, then: TestTimeOptimizationPolicy):
        self.first, self.first_steps, self.then = first, int(first_steps), then
        self.name = f"{first.name}+{then.name}"
        self.description = f"{first.description}; then test-time optimization"
        self.modality = first.modality
        self.supports_sampling = bool(getattr(first, "supports_sampling", False))
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
        sub_state = replace(state, step_index=state.step_index - self.first_steps)
        proposal = self.then.propose(sub_state)
        proposal.diagnostics["stage"] = 1.0
        return proposal


def chained_tto_policy(first: Policy, first_steps: int, tto: dict, name: str = "tto") -> ChainedPolicy:
    """``first`` for ``first_steps`` steps, then test-time optimization with the options ``tto``
    (``TestTimeOptimizationConfig`` fields) regularized by ``first``'s last lambda map."""
    return ChainedPolicy(first, first_steps, make_tto_policy(name, **tto))


class WeightMapOverride(Policy):
    """Wraps a policy and changes the lambda map it returns: times ``scale``; with ``uniform``, a uniform
    map of its mean times ``scale``; with ``value``, a uniform map of that value, or that map when it is a
    tensor (1, 1, D, H, W) of the working grid. The ablations of the spatially varying regularization
    (benchmarks) and the uniform-lambda chain runs of the weight-map training stage
    (``training.weight_map``)."""

    def __init__(
        self,
        inner: Policy,
        scale: float = 1.0,
        uniform: bool = False,
        value: float | torch.Tensor | None = None,
    ):
        self.inner, self.scale, self.uniform, self.value = inner, float(scale), bool(uniform), value
        self.name, self.description, self.modality = inner.name, inner.description, inner.modality

    def reset(self, fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float | None = None) -> None:
        self.inner.reset(fixed, moving, spacing_mm)

    def propose(self, state: PolicyState) -> PolicyStep:
        step = self.inner.propose(state)
        if step.weight_map is not None:
            weight = step.weight_map
            if isinstance(self.value, torch.Tensor):
                weight = self.value
            elif self.value is not None:
                weight = torch.full_like(weight, float(self.value))
            elif self.uniform:
                weight = torch.full_like(weight, float(weight.mean()))
            step.weight_map = weight * self.scale
        return step


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


_SPAC_OPTIONS = ("device", "stochastic", "seed", "max_step", "input_spacing_mm", "diffeomorphic_steps")
_MORPHSEEK_OPTIONS = (
    "device",
    "temperature",
    "samples",
    "seed",
    "max_step",
    "input_spacing_mm",
    "diffeomorphic_steps",
)
# family -> (policy class, its options)
_FAMILY_POLICIES: dict[str, tuple[type[NetworkPolicy], tuple[str, ...]]] = {
    "spac": (SPACPolicy, _SPAC_OPTIONS),
    "morphseek": (MorphSeekPolicy, _MORPHSEEK_OPTIONS),
}


def _split_options(name: str, options: dict, allowed: tuple[str, ...]) -> dict:
    """Options of a learned policy; ``PolicyError`` for any other option that is set (not None)."""
    extra = {k: v for k, v in options.items() if k not in allowed and v is not None}
    if extra:
        raise PolicyError(
            f"policy '{name}' has no option '{next(iter(extra))}' (a trained network; options: "
            f"{', '.join(allowed)})"
        )
    return {k: v for k, v in options.items() if k in allowed and v is not None}


def _learned_factory(folder: Path, name: str, family: str):
    cls, allowed = _FAMILY_POLICIES[family]

    def make(**options) -> NetworkPolicy:
        return cls(folder, **_split_options(name, options, allowed))

    return make


def _chained_factory(folder: Path, name: str, chain: ChainSettings, family: str = "spac"):
    cls, allowed = _FAMILY_POLICIES[family]

    def make(first_steps: int | None = None, **options) -> ChainedPolicy:
        learned = {k: options.pop(k) for k in allowed if k in options and options[k] is not None}
        tto = {
            **chain.tto_options(options.get("similarity")),
            **{k: v for k, v in options.items() if v is not None},
        }
        steps = chain.learned_steps if first_steps is None else first_steps
        return chained_tto_policy(cls(folder, **learned), steps, tto, name)

    return make


def register_model(folder: str | Path) -> str:
    """Register the model in ``folder`` (its ``card.json``; families 'spac' and 'morphseek') as the
    policies ``<id>`` and ``<id>+tto``, replacing any registered under that id; returns the id.
    MorphSeek policies are registered as sampling policies (``samples``, ``temperature``). Weights are only
    read when a policy is made. ``PolicyError`` naming the card when it is unreadable or malformed."""
    folder = Path(folder)
    card = read_card(folder)
    chain = chain_settings(card, folder / CARD_NAME)
    name, family = str(card["id"]), str(card["family"])
    description = str(card.get("description", f"{family} learned policy"))
    inference = card.get("inference") if isinstance(card.get("inference"), dict) else {}
    steps = int(inference.get("steps", 5))
    sampling = _FAMILY_POLICIES[family][0].supports_sampling
    register_policy(name, _learned_factory(folder, name, family), description, sampling, steps)
    register_policy(
        f"{name}+tto",
        _chained_factory(folder, f"{name}+tto", chain, family),
        f"{description}; {chain.learned_steps} learned steps, then test-time optimization",
        sampling,
        chain.total_steps,
        tto_option_defaults(chain.tto),
    )
    return name


def discover_models(directory: str | Path | None = None) -> dict[str, Path]:
    """Register every ``<directory>/<id>/card.json`` (``register_model``); returns {id: folder}. Unreadable
    cards are skipped with a warning (loading them later gives the full error); of two folders with the
    same id the later (by name) is used, with a warning."""
    directory = models_dir() if directory is None else Path(directory)
    found: dict[str, Path] = {}
    if directory is None or not directory.is_dir():
        return found
    for card_path in sorted(directory.glob(f"*/{CARD_NAME}")):
        try:
            name = register_model(card_path.parent)
        except PolicyError as error:
            warnings.warn(f"skipping model: {error}", stacklevel=2)
            continue
        if name in found:
            warnings.warn(
                f"model id '{name}' is in both {found[name]} and {card_path.parent}; using the latter",
                stacklevel=2,
            )
        found[name] = card_path.parent
    return found


try:
    discover_models()
except Exception as error:  # discovery must never break importing the library
    warnings.warn(f"model discovery failed: {error}", stacklevel=1)
