"""One registration run, described once.

``RunSpec`` holds what a user chose (policy and its options, quality preset, pre-alignment, working grid,
output grid, device, memory cap, seed, sampling), checked when it is made: before any image is read, with
one line naming the option, its range and what it got. ``plan_run`` turns a spec and the fixed image into
the policy and the session options (the preset's schedule and memory cap, a working grid never finer than
the image, the device's working-grid cap); ``build_session`` makes the session from them. The command
line, the MRML layer (Slicer panel and browser app), the batch runner and the benchmarks all go through
here: nothing else builds a policy from a user's choices, and nothing changes a policy once it is made.

This module imports neither torch nor SimpleITK when it is imported (the Slicer panel reads its ranges
before PyTorch is installed); ``plan_run`` and ``build_session`` import them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..options import (
    DEVICES,
    INITIALIZATIONS,
    INTEGER_OPTIONS,
    INTENSITY_MAPPINGS,
    OUTPUT_GRIDS,
    PAIR_KINDS,
    RANGES,
    SIMILARITIES,
)
from .quality import QUALITY_PRESETS

if TYPE_CHECKING:
    import SimpleITK as sitk

    from ..policies.base import Policy
    from .result import RegistrationResult
    from .session import RegistrationSession
    from .session_options import InputNames, SessionOptions

#: on a GPU the standard preset's working grid may hold this many voxels (CPU: the preset's own cap)
CUDA_MAX_WORKING_VOXELS = 160 * 192 * 224
#: ``quality="auto"`` runs the fine schedule at the first of these working spacings (mm) whose memory
#: estimate fits the cap (``AUTO_MEMORY_GIB`` unless the spec sets one), else the standard preset
AUTO_SPACINGS_MM = (1.0, 1.5)
AUTO_MEMORY_GIB = 4.0


class OptionError(InputError):
    """A run option outside its range or choices; ``option`` is the ``RunSpec`` field it concerns."""

    def __init__(self, option: str, problem: str):
        self.option, self.problem = option, problem
        super().__init__(f"{option}: {problem}")


@dataclass(frozen=True)
class RunSpec:
    """How to register one pair; every field is checked when the spec is made (``OptionError``).

    ``None`` means "the default": of the quality preset, else of the policy (``steps``, ``iterations``,
    ``regularization``, ``similarity``, ``intensity_mapping``), of the preset (``spacing_mm``: the
    working grid's spacing in mm; ``max_memory_gib``: refuse up front a run estimated to need more).
    ``samples`` > 1 or a ``temperature`` (policies that sample trajectories) and ``dice_labels`` (the
    labels a run scores; None: all shared non-zero labels) complete it. ``harm_check`` (do no harm,
    ``registration.harm_check``): a stage that does not improve the alignment is dropped.
    """

    policy: str = "tto"
    quality: str = "auto"
    pair: str = "auto"
    steps: int | None = None
    iterations: int | None = None
    regularization: float | None = None
    similarity: str | None = None
    intensity_mapping: str | None = None
    initialization: str = "affine"
    spacing_mm: float | None = None
    output_grid: str = "auto"
    device: str = "auto"
    max_memory_gib: float | None = None
    seed: int = 0
    samples: int = 1
    temperature: float | None = None
    dice_labels: tuple[int, ...] | None = None
    harm_check: bool = True

    def __post_init__(self) -> None:
        for name, (low, high) in RANGES.items():
            _check_number(name, getattr(self, name), low, high, integer=name in INTEGER_OPTIONS)
        for name, choices in (
            ("quality", ("auto", *QUALITY_PRESETS)),
            ("pair", PAIR_KINDS),
            ("initialization", INITIALIZATIONS),
            ("output_grid", OUTPUT_GRIDS),
            ("similarity", SIMILARITIES),
            ("intensity_mapping", INTENSITY_MAPPINGS),
        ):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise OptionError(name, f"choose from {', '.join(choices)}, got {value!r}")
        if not isinstance(self.harm_check, bool):
            raise OptionError("harm_check", f"true or false, got {self.harm_check!r}")
        if not isinstance(self.policy, str) or not self.policy.strip():
            raise OptionError("policy", "a policy name is required (see 'rlreg info')")
        device = self.device.lower() if isinstance(self.device, str) else self.device
        if device not in DEVICES and not (isinstance(device, str) and _is_cuda_index(device)):
            raise OptionError("device", f"choose from {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        if self.dice_labels is not None:
            labels = tuple(self.dice_labels)
            if not labels or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in labels
            ):
                raise OptionError("dice_labels", "positive integer label values are required")
            object.__setattr__(self, "dice_labels", labels)

    def replace(self, **changes: Any) -> RunSpec:
        """A checked copy with ``changes``."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The spec as JSON-ready values (what ``rlreg register --save-config`` writes)."""
        values = asdict(self)
        if values["dice_labels"] is not None:
            values["dice_labels"] = list(values["dice_labels"])
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "run settings") -> RunSpec:
        """A spec from ``to_dict``'s values (any subset); an unknown key is an ``OptionError`` naming
        ``source`` (e.g. the config file)."""
        if not isinstance(values, Mapping):
            raise InputError(f"{source}: a JSON object of run settings is required")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{source}: unknown setting '{unknown[0]}' (known: {', '.join(sorted(known))})")
        values = dict(values)
        if isinstance(values.get("dice_labels"), list):
            values["dice_labels"] = tuple(values["dice_labels"])
        return cls(**values)

    def save(self, path: str | Path) -> None:
        """Write the spec as JSON (``load`` reads it back)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        """Read a spec written by ``save`` (``InputError`` naming the file when it cannot)."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise InputError(f"config '{path}': cannot be read ({error.strerror or error})") from None
        except ValueError as error:
            raise InputError(f"config '{path}': not valid JSON ({error})") from None
        return cls.from_dict(values, f"config '{path}'")


def _is_cuda_index(device: str) -> bool:
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()


def _check_number(name: str, value: Any, low: float, high: float, integer: bool) -> None:
    if value is None:
        return
    kind = "an integer" if integer else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not float(value).is_integer())
    ):
        raise OptionError(name, f"must be {kind} from {low:g} to {high:g}, got {value!r}")
    if not math.isfinite(value) or not (low <= value <= high):
        raise OptionError(name, f"must be {kind} from {low:g} to {high:g}, got {value:g}")


@dataclass
class RunPlan:
    """What a spec becomes for one pair: the policy (and, while the pair's kind is still to be found from
    the images, the one for two visits of one patient), the session options, the number of steps and the
    lines that say what was chosen and why (``notes``)."""

    spec: RunSpec
    policy: Policy
    options: SessionOptions
    steps: int
    quality: str  # the preset run ("standard", "fine", "followup")
    policies: dict[str, Policy] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_policy(spec: RunSpec) -> None:
    """The policy exists and takes the spec's options (imports the policy registry, not the images):
    ``OptionError`` otherwise."""
    from ..policies.registry import available_policies, policy_supports_sampling

    known = available_policies()
    if spec.policy not in known:
        raise OptionError("policy", f"unknown policy '{spec.policy}' (available: {', '.join(known)})")
    if (
        spec.quality in QUALITY_PRESETS
        and QUALITY_PRESETS[spec.quality].tto_levels_mm
        and not runs_tto_schedules(spec.policy)
    ):
        raise OptionError(
            "quality",
            f"'{spec.quality}' sets the tto schedule: use it with the policy tto or a chain '<id>+tto'",
        )
    if (spec.samples != 1 or spec.temperature is not None) and not policy_supports_sampling(spec.policy):
        option = "samples" if spec.samples != 1 else "temperature"
        raise OptionError(
            option,
            f"policy '{spec.policy}' does not sample trajectories (those marked [--samples K] in 'rlreg info' do)",
        )


def _options(
    spec: RunSpec, preset_name: str, spacing: float, device, kind: str, reason: str, keep_steps: bool = True
) -> SessionOptions:
    from .session_options import SessionOptions

    preset = QUALITY_PRESETS[preset_name]
    max_voxels = preset.max_working_voxels
    if device.type == "cuda" and max_voxels is not None:
        max_voxels = max(max_voxels, CUDA_MAX_WORKING_VOXELS)
    cap = spec.max_memory_gib
    if cap is None:
        cap = AUTO_MEMORY_GIB if spec.quality == "auto" else preset.max_memory_gib
    return SessionOptions(
        working_spacing_mm=spacing,
        max_working_voxels=max_voxels,
        initialization=spec.initialization,
        device=str(device),
        seed=spec.seed,
        output_grid=spec.output_grid,
        dice_labels=None if spec.dice_labels is None else list(spec.dice_labels),
        max_memory_gib=cap,
        harm_check=spec.harm_check,
        pair=kind,
        pair_reason=reason,
        steps_asked=spec.steps is not None,
        keep_steps=keep_steps,
    )


def runs_tto_schedules(policy: str) -> bool:
    """True for the policies that run a quality preset's TTO schedule (``fine``, ``followup``): ``tto`` and
    the chains ``<id>+tto`` (their learned steps replace the coarse levels)."""
    from ..policies.registry import policy_chain_settings

    return policy == "tto" or policy_chain_settings(policy) is not None


def _policy(spec: RunSpec, preset_name: str, spacing: float) -> tuple[Policy, int | None]:
    """(the policy of ``spec`` under the preset, the steps of its schedule; None: the policy's default)."""
    from ..policies.registry import make_policy, policy_chain_settings

    preset = QUALITY_PRESETS[preset_name]
    sampling = {}
    if spec.samples != 1 or spec.temperature is not None:
        sampling = {"samples": spec.samples, "temperature": spec.temperature, "seed": spec.seed}
    regularization = spec.regularization if spec.regularization is not None else preset.regularization
    options = dict(
        iterations=spec.iterations,
        similarity=spec.similarity,
        intensity_mapping=spec.intensity_mapping,
        regularization=regularization,
        **sampling,
    )
    chain = policy_chain_settings(spec.policy)
    if chain is None or preset.tto_levels_mm is None:
        return make_policy(spec.policy, **options, **preset.tto_overrides(spacing)), preset.steps
    handover = chain.schedule_chain(preset.tto_levels_mm)
    policy = make_policy(
        spec.policy,
        first_steps=handover.learned_steps,
        base_tto=handover.tto,
        **options,
        **preset.tto_overrides(spacing, handover.skip_levels),
    )
    return policy, handover.steps(preset.tto_levels_mm)


def schedule_steps(policy: str, quality: str) -> int | None:
    """Steps of ``policy`` under the TTO schedule of the preset ``quality``: its levels for ``tto``, the
    learned steps plus the levels they do not replace for a chain ``<id>+tto``; None when the preset has no
    schedule or the policy does not run one (a learned policy alone: its own steps)."""
    from ..policies.registry import policy_chain_settings

    preset = QUALITY_PRESETS.get(quality)
    if preset is None or preset.tto_levels_mm is None or not runs_tto_schedules(policy):
        return None
    chain = policy_chain_settings(policy)
    if chain is None:
        return preset.steps
    return chain.schedule_chain(preset.tto_levels_mm).steps(preset.tto_levels_mm)


def _auto_quality(
    spec: RunSpec, kind: str, fixed: sitk.Image, moving: sitk.Image, device, keep_steps: bool
) -> tuple[str, float, str]:
    """(preset, working spacing, note) of ``quality="auto"``: the fine schedule (``followup`` for one
    patient) at the finest of ``AUTO_SPACINGS_MM`` (never finer than the image) whose memory estimate fits
    the cap, else the standard preset."""
    from .memory import GIB, estimate_peak_memory

    cap = spec.max_memory_gib if spec.max_memory_gib is not None else AUTO_MEMORY_GIB
    if not runs_tto_schedules(spec.policy):
        return (
            "standard",
            QUALITY_PRESETS["standard"].spacing_mm,
            "quality auto -> standard (the fine schedules are for tto and the chains '<id>+tto')",
        )
    name = "followup" if kind == "same-patient" else "fine"
    preset = QUALITY_PRESETS[name]
    finest = preset.working_spacing(fixed)
    for spacing in sorted({max(finest, s) for s in AUTO_SPACINGS_MM}):
        if spec.spacing_mm is not None:
            spacing = spec.spacing_mm
        options = _options(spec, name, spacing, device, kind, "", keep_steps)
        estimate = estimate_peak_memory(fixed, moving, options, steps=preset.steps)
        if estimate.total_bytes <= cap * GIB:
            gib = estimate.total_bytes / GIB
            return (
                name,
                spacing,
                f"quality auto -> {name}: {spacing:g} mm working grid, {gib:.1f} GiB estimated",
            )
        if spec.spacing_mm is not None:
            break
    spacing = spec.spacing_mm if spec.spacing_mm is not None else QUALITY_PRESETS["standard"].spacing_mm
    return (
        "standard",
        spacing,
        f"quality auto -> standard: the fine schedule would need more than {cap:g} GiB",
    )


def plan_run(
    spec: RunSpec,
    fixed: sitk.Image,
    moving: sitk.Image | None = None,
    pair: tuple[str, str] | None = None,
    keep_steps: bool = True,
) -> RunPlan:
    """The policy, session options and steps of ``spec`` for ``fixed`` (and ``moving``, for the memory
    estimate of ``quality="auto"``): a preset's working grid is never finer than the fixed image's finest
    spacing, its TTO schedule is set for that grid, and a GPU's working grid may hold
    ``CUDA_MAX_WORKING_VOXELS`` where the CPU's is capped lower. ``pair`` (kind, reason), e.g. from DICOM
    headers, is used when ``spec.pair`` is "auto"; without it the session finds the kind from the images.
    ``keep_steps`` False: the session keeps no intermediate steps (command line, batch: less memory)."""
    from ..devices import resolve_device
    from ..policies.registry import policy_default_steps

    check_policy(spec)
    moving = fixed if moving is None else moving
    device = resolve_device(spec.device)
    kind, reason = (spec.pair, "as asked") if spec.pair != "auto" else (pair or ("auto", ""))
    notes = [] if kind == "auto" else [f"pair: {kind.replace('-', ' ')} ({reason})"]
    if spec.quality == "auto":
        quality, spacing, note = _auto_quality(spec, kind, fixed, moving, device, keep_steps)
        notes.append(note)
    else:
        quality = spec.quality
        spacing = (
            spec.spacing_mm
            if spec.spacing_mm is not None
            else QUALITY_PRESETS[quality].working_spacing(fixed)
        )
    policies = {}
    if kind == "auto" and spec.quality == "auto" and quality == "fine":  # the kind is still to be found
        policies["same-patient"] = _policy(spec, "followup", spacing)[0]
    policy, preset_steps = _policy(spec, quality, spacing)
    steps = spec.steps if spec.steps is not None else preset_steps or policy_default_steps(spec.policy)
    options = _options(spec, quality, spacing, device, kind, reason, keep_steps)
    options.planned_steps = int(steps)
    return RunPlan(spec, policy, options, int(steps), quality, policies, notes)


def build_session(
    spec: RunSpec,
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_labels: sitk.Image | None = None,
    moving_labels: sitk.Image | None = None,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    initial_transform: sitk.Transform | None = None,
    names: InputNames | None = None,
    pair: tuple[str, str] | None = None,
    keep_steps: bool = True,
) -> tuple[RegistrationSession, RunPlan]:
    """The session of ``spec`` for these images (``RegistrationSession`` checks them: labels and masks
    against their images, the memory estimate against the cap) and the plan it was made from.
    ``initial_transform`` (fixed point -> moving point) starts the pre-alignment; ``names`` start the
    messages about each input (e.g. "fixed image 'f.nii.gz'"); ``pair`` (kind, reason) is what the inputs'
    headers say of the pair (``io.dicom_tags``); ``keep_steps`` False keeps no intermediate step (less
    memory; no step back)."""
    from ..io.imaging import AntialiasedCopies
    from .prealign import prefetch_rigid_levels

    # the pre-alignment's first smoothed copies are made while the plan makes its policy (on a command
    # line, the first use of torch: its import takes about as long); the transforms are the same
    copies = AntialiasedCopies()
    prefetch_rigid_levels(copies, fixed, moving, spec.initialization)
    plan = plan_run(spec, fixed, moving, pair, keep_steps)
    from .session import InputNames, RegistrationSession

    session = RegistrationSession(
        fixed,
        moving,
        plan.policy,
        plan.options,
        fixed_labels,
        moving_labels,
        initial_transform,
        fixed_mask=fixed_mask,
        moving_mask=moving_mask,
        names=names or InputNames(),
        policies=plan.policies,
        copies=copies,
    )
    return session, plan


def register(
    fixed: sitk.Image, moving: sitk.Image, spec: RunSpec | None = None, **inputs: Any
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` as ``spec`` (default ``RunSpec()``) says and return the result;
    ``inputs`` are ``build_session``'s keywords (labels, masks, initial transform, names)."""
    session, plan = build_session(spec or RunSpec(), fixed, moving, **inputs)
    for _ in session.run(plan.steps):
        pass
    return session.final_result()[0]
