"""Policies by name: the built-in ``tto`` and every trained model of ``models/`` (``<id>`` and ``<id>+tto``).

The model folders are discovered lazily, the first time a name is looked up (``policies.cards`` reads
the cards; weights are read only when a policy is made), so importing the library reads no file. Knowing
and checking names imports no torch either: the policy classes are imported when a policy is made.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

from ..errors import PolicyError
from .cards import (
    CARD_NAME,
    ChainSettings,
    chain_settings,
    models_dir,
    offered_alone,
    offered_sampling,
    read_card,
    step_spacings,
)
from .tto_config import TTO_DESCRIPTION, TTO_MODALITY, tto_option_defaults

if TYPE_CHECKING:
    from .base import Policy
    from .chained import ChainedPolicy
    from .network_policy import NetworkPolicy

PolicyFactory = Callable[..., "Policy"]
DEFAULT_STEPS = 6  # steps of a run when neither the user nor the policy says otherwise


class RegisteredPolicy(NamedTuple):
    """A policy known by name: how to make it and what a user interface says of it (``modality``: what it
    was trained for; ``card``: its model card's path, None for ``tto``)."""

    factory: PolicyFactory
    description: str
    supports_sampling: bool = False
    default_steps: int = DEFAULT_STEPS
    option_defaults: tuple[tuple[str, object], ...] = ()
    modality: str = ""
    card: Path | None = None
    chain: ChainSettings | None = None  # for ``<id>+tto``: how it hands over to TTO


_REGISTRY: dict[str, RegisteredPolicy] = {}
_DISCOVERED: list[bool] = []  # [True] once the models folder has been read


def _entries() -> dict[str, RegisteredPolicy]:
    """The registered policies, with the models folder's (``discover_models``) added on first use."""
    if not _DISCOVERED:
        _DISCOVERED.append(True)
        try:
            discover_models()
        except Exception as error:  # discovery must never break using the library
            warnings.warn(f"model discovery failed: {error}", stacklevel=3)
    return _REGISTRY


def register_policy(
    name: str,
    factory: PolicyFactory,
    description: str,
    supports_sampling: bool = False,
    default_steps: int = DEFAULT_STEPS,
    option_defaults: dict | None = None,
    modality: str = "",
    card: Path | None = None,
    chain: ChainSettings | None = None,
) -> None:
    """Make a policy available by name to the session, the CLI and the Slicer panel.

    ``supports_sampling``: the factory accepts ``samples`` (K trajectories) and ``temperature``.
    ``default_steps``: the number of steps a run takes when the user does not say (the setting measured
    for the policy, e.g. a trained model's card). ``option_defaults``: what the factory uses for its
    options (e.g. ``iterations``, ``regularization``) when not given, for user interfaces to show."""
    defaults = tuple(sorted((option_defaults or {}).items()))
    _REGISTRY[name] = RegisteredPolicy(
        factory, description, bool(supports_sampling), int(default_steps), defaults, modality, card, chain
    )


def registered_policies() -> dict[str, RegisteredPolicy]:
    """Every policy by name (the models folder's included), sorted by name."""
    return dict(sorted(_entries().items()))


def available_policies() -> dict[str, str]:
    """Policy names and one-line descriptions."""
    return {name: entry.description for name, entry in sorted(_entries().items())}


def policy_supports_sampling(name: str) -> bool:
    """True when the registered policy ``name`` can sample several trajectories (``samples`` > 1)."""
    entry = _entries().get(name)
    return bool(entry is not None and entry.supports_sampling)


def policy_option_defaults(name: str) -> dict:
    """Option values policy ``name`` uses when not given (empty for unknown names and learned policies)."""
    entry = _entries().get(name)
    return dict(entry.option_defaults) if entry is not None else {}


def policy_default_steps(name: str) -> int:
    """Steps of a run of policy ``name`` when the user gives none (``DEFAULT_STEPS`` for unknown names)."""
    entry = _entries().get(name)
    return entry.default_steps if entry is not None else DEFAULT_STEPS


def policy_chain_settings(name: str) -> ChainSettings | None:
    """How the chain ``name`` (``<id>+tto``) hands over to test-time optimization; None for other names."""
    entry = _entries().get(name)
    return entry.chain if entry is not None else None


def make_policy(name: str, **kwargs) -> Policy:
    """Instantiate a registered policy; ``PolicyError`` naming the choices when ``name`` is unknown."""
    entries = _entries()
    if name not in entries:
        raise PolicyError(f"unknown policy '{name}' (available: {', '.join(sorted(entries))})")
    return entries[name].factory(**kwargs)


def _make_tto(**options) -> Policy:
    from .tto import make_tto_policy

    return make_tto_policy(**options)


register_policy(
    "tto", _make_tto, TTO_DESCRIPTION, option_defaults=tto_option_defaults(), modality=TTO_MODALITY
)


_SPAC_OPTIONS = (
    "device",
    "temperature",
    "samples",
    "seed",
    "max_step",
    "input_spacing_mm",
    "diffeomorphic_steps",
    "precision",
)
_MORPHSEEK_OPTIONS = (
    "device",
    "temperature",
    "samples",
    "seed",
    "max_step",
    "input_spacing_mm",
    "diffeomorphic_steps",
)


class FamilyPolicy(NamedTuple):
    """The policy class of a model family ("module:Class" in this package, imported when a policy is made),
    its options, and whether it samples trajectories (the class's ``supports_sampling``; a test checks)."""

    path: str
    options: tuple[str, ...]
    supports_sampling: bool

    def policy_class(self) -> type[NetworkPolicy]:
        module, name = self.path.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)


FAMILY_POLICIES: dict[str, FamilyPolicy] = {
    "spac": FamilyPolicy("spac_policy:SPACPolicy", _SPAC_OPTIONS, True),
    "morphseek": FamilyPolicy("morphseek_policy:MorphSeekPolicy", _MORPHSEEK_OPTIONS, True),
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


SAMPLING_OPTIONS = ("samples", "temperature")


def _family_options(family: str, sampling: bool) -> tuple[str, ...]:
    """The options of a learned policy of ``family``; without ``sampling`` (a model whose card does not
    offer it) none of ``SAMPLING_OPTIONS``."""
    options = FAMILY_POLICIES[family].options
    return options if sampling else tuple(o for o in options if o not in SAMPLING_OPTIONS)


def _learned_factory(
    folder: Path, name: str, family: str, spacings: tuple[float, ...] | None = None, sampling: bool = True
):
    """Factory of the learned policy alone; ``spacings``: the card's ``inference.step_spacings_mm``."""
    family_policy = FAMILY_POLICIES[family]
    allowed = _family_options(family, sampling)
    card_options = {"step_spacings_mm": spacings} if spacings else {}

    def make(**options) -> NetworkPolicy:
        options = _split_options(name, options, allowed)
        return family_policy.policy_class()(folder, **card_options, **options)

    return make


def _chained_factory(
    folder: Path, name: str, chain: ChainSettings, family: str = "spac", sampling: bool = True
):
    family_policy = FAMILY_POLICIES[family]
    allowed = _family_options(family, sampling)

    def make(first_steps: int | None = None, base_tto: dict | None = None, **options) -> ChainedPolicy:
        """``base_tto``: TTO options that replace the card's chain options (a quality preset's schedule,
        ``ChainSettings.schedule_chain``); ``options`` override both."""
        from .chained import chained_tto_policy

        refused = [k for k in SAMPLING_OPTIONS if k not in allowed and options.get(k) is not None]
        if refused:
            raise PolicyError(
                f"policy '{name}' has no option '{refused[0]}' (its card does not offer sampling)"
            )
        learned = {k: options.pop(k) for k in allowed if k in options and options[k] is not None}
        base = chain.tto_options(options.get("similarity")) if base_tto is None else base_tto
        tto = {**base, **{k: v for k, v in options.items() if v is not None}}
        steps = chain.learned_steps if first_steps is None else first_steps
        return chained_tto_policy(family_policy.policy_class()(folder, **learned), steps, tto, name)

    return make


def register_model(folder: str | Path, alone: bool | None = None, sampling: bool | None = None) -> str:
    """Register the model in ``folder`` (its ``card.json``; families 'spac' and 'morphseek') as the
    policies ``<id>`` (unless the card's ``inference.offered_alone`` is false: a model that earns its place
    only as a chain; ``alone`` True registers it anyway, e.g. for a benchmark of the learned steps) and
    ``<id>+tto``, replacing any registered under that id; returns the id.
    Both families can sample (``samples``, ``temperature``); the policies are registered as sampling ones
    when the card's ``inference.offered_sampling`` says so (default true; ``sampling`` True registers them so
    anyway, e.g. for a benchmark of the uncertainty map). Weights are only
    read when a policy is made. ``PolicyError`` naming the card when it is unreadable or malformed."""
    _entries()  # the models folder first: a folder registered explicitly then wins over its lazy discovery
    folder = Path(folder)
    card = read_card(folder)
    chain = chain_settings(card, folder / CARD_NAME)
    name, family = str(card["id"]), str(card["family"])
    description = str(card.get("description", f"{family} learned policy"))
    inference = card.get("inference") if isinstance(card.get("inference"), dict) else {}
    steps = int(inference.get("steps", 5))
    if sampling is None:
        sampling = offered_sampling(card, folder / CARD_NAME)
    sampling = bool(sampling) and FAMILY_POLICIES[family].supports_sampling
    modality = card.get("modality") or card.get("trained_for") or "not stated"
    if isinstance(modality, (list, tuple)):
        modality = ", ".join(str(m) for m in modality)
    path = folder / CARD_NAME
    spacings = step_spacings(card, path)
    if spacings and family != "spac":
        raise PolicyError(f"model card '{path}': inference.step_spacings_mm is for 'spac' models only")
    if alone is None:
        alone = offered_alone(card, path)
    if alone:
        register_policy(
            name,
            _learned_factory(folder, name, family, spacings, sampling),
            description,
            sampling,
            steps,
            None,
            str(modality),
            path,
        )
    else:
        _REGISTRY.pop(name, None)
    register_policy(
        f"{name}+tto",
        _chained_factory(folder, f"{name}+tto", chain, family, sampling),
        chain.description or f"{description}; learned steps, then test-time optimization",
        sampling,
        chain.total_steps,
        tto_option_defaults(chain.tto),
        str(modality),
        path,
        chain,
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
