"""Model cards: the one reader of ``models/<id>/card.json`` (checked fields, weights checksum, how a chain
with test-time optimization runs) and where the models folder is.

A model folder holds ``card.json`` (id, family "spac" or "morphseek", description, modality, architecture,
working grid, training provenance, validation metrics, weights file name and its sha256) and the weights.
The models folder is ``$RLREG_MODELS_DIR``, else ``RLRegistrationLib/models`` (installed extension), else
``<repo>/models``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PolicyError
from .tto_config import TestTimeOptimizationConfig

CARD_NAME = "card.json"
DEFAULT_SESSION_SPACING_MM = 2.0  # SessionOptions.working_spacing_mm
INTEGRATION_STEPS = 7  # squarings of a diffeomorphic learned step (as TTO's ``integrate_velocity``)
_CARD_FIELDS = ("id", "family", "architecture", "working_grid", "weights", "sha256")
#: the network families a card may name (``network_policy.FAMILIES`` holds their classes)
FAMILY_NAMES = ("morphseek", "spac")


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
    if card["family"] not in FAMILY_NAMES:
        raise PolicyError(
            f"model card '{path}': family '{card['family']}' is not supported (expected one of "
            f"{', '.join(repr(f) for f in FAMILY_NAMES)})"
        )
    inference_step_options(card, path)
    offered_alone(card, path)
    offered_sampling(card, path)
    step_spacings(card, path)
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


def step_spacings(card: dict, path: Path | str = CARD_NAME) -> tuple[float, ...] | None:
    """The card's ``inference.step_spacings_mm``: the spacing (mm) of the network grid at each learned step
    when the policy runs alone (steps past the list keep its last entry), e.g. coarse steps first, then
    finer ones; None (absent): every step on the card's working grid spacing. A chain's learned steps
    always run on the working grid spacing (its settings were chosen there). ``PolicyError`` naming the
    card when it is not a list of spacings from 0.5 to 16 mm."""
    inference = card.get("inference") if isinstance(card.get("inference"), dict) else {}
    value = inference.get("step_spacings_mm")
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.5 <= v <= 16 for v in value)
    ):
        raise PolicyError(
            f"model card '{path}': inference.step_spacings_mm must be a list of spacings from 0.5 to 16 mm, "
            f"got {value!r}"
        )
    return tuple(float(v) for v in value)


def _inference_flag(card: dict, key: str, path: Path | str, default: bool = True) -> bool:
    """The card's boolean ``inference.<key>`` (``default`` when absent); ``PolicyError`` naming the card
    when it is not a boolean."""
    inference = card.get("inference") if isinstance(card.get("inference"), dict) else {}
    value = inference.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"model card '{path}': inference.{key} must be true or false, got {value!r}")
    return value


def offered_alone(card: dict, path: Path | str = CARD_NAME) -> bool:
    """The card's ``inference.offered_alone`` (default true): whether the learned policy is offered on its
    own, or only as the chain ``<id>+tto`` (a model that meets the bar of ``models/README.md`` as a chain
    only). ``PolicyError`` naming the card when it is not a boolean."""
    return _inference_flag(card, "offered_alone", path)


def offered_sampling(card: dict, path: Path | str = CARD_NAME) -> bool:
    """The card's ``inference.offered_sampling`` (default true): whether ``--samples K`` (K sampled
    trajectories and their spread as an uncertainty map) is offered to users for this model, when its
    family can sample; false for a model whose map was measured uninformative. ``PolicyError`` naming the
    card when it is not a boolean."""
    return _inference_flag(card, "offered_sampling", path)


@dataclass(frozen=True)
class ScheduleChain:
    """How ``<id>+tto`` runs a quality preset's TTO schedule (``--quality fine|followup|auto``; card
    ``inference.chain.fine``): ``learned_steps`` learned steps, then the preset's levels less the first
    ``skip_levels`` (the coarse TTO steps the learned steps replace), with ``tto`` options on top of the
    preset's (e.g. a regularization weight for the learned lambda map)."""

    learned_steps: int
    skip_levels: int
    tto: dict = field(default_factory=dict)

    def steps(self, levels_mm: tuple[float, ...]) -> int:
        """Steps of a run of the chain on these preset levels: the learned ones, then the levels kept."""
        return self.learned_steps + len(levels_mm) - self.skip_levels


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
    fine: ScheduleChain | None = None
    network_spacing_mm: float = 3.0  # the card's working grid
    description: str = ""  # what the chain is good for, one line (the panel's); "": the card's, extended

    @property
    def total_steps(self) -> int:
        return self.learned_steps + self.then_steps

    def schedule_chain(self, levels_mm: tuple[float, ...]) -> ScheduleChain:
        """How the chain runs a preset's TTO levels (mm): the card's ``fine`` block, else the chain's learned
        steps followed by the levels finer than the network's grid (the coarser ones are what the learned
        steps replace), at the preset's own TTO options. At least one TTO level is kept."""
        if self.fine is not None:
            skip = min(self.fine.skip_levels, len(levels_mm) - 1)
            return ScheduleChain(self.fine.learned_steps, skip, dict(self.fine.tto))
        coarse = sum(1 for level in levels_mm if level >= self.network_spacing_mm)
        return ScheduleChain(self.learned_steps, min(coarse, len(levels_mm) - 1))

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
    card's ``inference.steps`` learned steps then 3 fine TTO steps. ``inference.chain.fine`` (optional):
    how the chain runs a quality preset's schedule (``ScheduleChain``)."""
    inference = card.get("inference") if isinstance(card.get("inference"), dict) else {}
    chain = inference.get("chain")
    if chain is None:
        return ChainSettings(int(inference.get("steps", 5)), network_spacing_mm=_network_spacing(card))
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
    fine = None
    if problem is None and "fine" in chain:
        fine, problem = _schedule_chain(chain["fine"])
    description = chain.get("description", "")
    if problem is None and not isinstance(description, str):
        problem = "description must be a string"
    if problem:
        raise PolicyError(f"model card '{path}': inference.chain {problem}")
    return ChainSettings(
        steps[0], steps[1], tto, by_similarity, fine, _network_spacing(card), description.strip()
    )


def _schedule_chain(block: object) -> tuple[ScheduleChain | None, str | None]:
    """(the ``inference.chain.fine`` block, None) or (None, the problem)."""
    if not isinstance(block, dict):
        return None, "fine must be an object with learned_steps, skip_levels and tto options"
    counts = (block.get("learned_steps"), block.get("skip_levels"))
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
        return None, f"fine: learned_steps {counts[0]} and skip_levels {counts[1]} must be integers >= 0"
    tto, problem = _tto_options(block.get("tto", {}), "fine.tto")
    if problem is None and "pyramid" in tto:
        problem = "fine.tto must not set the pyramid (the quality preset's levels less skip_levels)"
    return (None, problem) if problem else (ScheduleChain(counts[0], counts[1], tto), None)


def _network_spacing(card: dict) -> float:
    grid = card.get("working_grid") if isinstance(card.get("working_grid"), dict) else {}
    spacing = grid.get("spacing_mm", 3.0)
    return float(spacing) if isinstance(spacing, (int, float)) and spacing > 0 else 3.0


def models_dir() -> Path | None:
    """``$RLREG_MODELS_DIR``, else ``RLRegistrationLib/models``, else ``<repo>/models``; None if absent."""
    env = os.environ.get("RLREG_MODELS_DIR")
    if env:
        return Path(env) if Path(env).is_dir() else None
    library = Path(__file__).resolve().parent.parent  # RLRegistrationLib/
    for candidate in (
        library / "models",
        library.parent.parent / "models",
        library.parent / "Resources" / "models",
    ):
        if candidate.is_dir():
            return candidate
    return None
