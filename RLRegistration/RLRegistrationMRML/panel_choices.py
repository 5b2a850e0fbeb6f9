"""The policies and devices a registration panel offers, also when PyTorch is missing or broken."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field

from .panel_messages import oneLine
from .parameters import SETTINGS_BY_NAME

FALLBACK_DEVICES = [("auto", "Auto", True), ("cuda", "GPU", True), ("cpu", "CPU", True)]


@dataclass(frozen=True)
class PolicyOffer:
    """A policy offered while the real choices cannot be listed (PyTorch missing or broken); the fields
    of ``RLRegistrationLib.policies.choices.PolicyChoice`` that a panel reads."""

    name: str
    label: str
    description: str
    modality: str = ""
    supports_sampling: bool = False
    default_steps: int = SETTINGS_BY_NAME["steps"].default
    option_defaults: dict = field(default_factory=dict)


def panelChoices(log: logging.Logger) -> tuple[dict, list, bool]:
    """(policies by name, devices, whether the choices need PyTorch). The real ones need PyTorch: without
    it only ``tto`` and the three device names (the flag True), with a broken install the same and the
    reason in the policy's description (logged to ``log``)."""
    needTorch = importlib.util.find_spec("torch") is None
    if not needTorch:
        try:
            from RLRegistrationLib.devices import device_choices
            from RLRegistrationLib.policies.choices import policy_choices

            return {choice.name: choice for choice in policy_choices()}, device_choices(), False
        except Exception as error:  # noqa: BLE001 - a broken torch install: the panel must still open
            log.error("RLRegistration: could not list policies and devices: %s", error)
            reason = f"PyTorch could not be imported: {oneLine(error)}"
    else:
        reason = "PyTorch is not installed yet: it is installed on first Apply."
    return (
        {"tto": PolicyOffer("tto", "tto — test-time optimization", reason)},
        list(FALLBACK_DEVICES),
        needTorch,
    )
