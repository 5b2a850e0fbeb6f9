"""The policies and devices a panel offers when PyTorch is missing or broken (``panel_choices``): the panel
still opens, with ``tto`` and the three device names, and says why."""

from __future__ import annotations

import importlib.util
import logging

import RLRegistrationLib.policies.choices as choices
from RLRegistrationMRML.panel_choices import FALLBACK_DEVICES, panelChoices


def test_the_real_choices_when_pytorch_works():
    policies, devices, need_torch = panelChoices(logging.getLogger("test"))
    assert not need_torch and "tto" in policies and "spac-brain-synth+tto" in policies
    assert [d[0] for d in devices][:1] == ["auto"]


def test_without_pytorch_only_tto_is_offered(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    policies, devices, need_torch = panelChoices(logging.getLogger("test"))
    assert need_torch and list(policies) == ["tto"] and devices == FALLBACK_DEVICES
    assert "installed on first Apply" in policies["tto"].description


def test_a_broken_pytorch_says_why_and_logs_it(monkeypatch, caplog):
    def broken():
        raise OSError("libtorch_cpu.so: cannot open shared object file\nsecond line")

    monkeypatch.setattr(choices, "policy_choices", broken)
    with caplog.at_level(logging.ERROR):
        policies, devices, need_torch = panelChoices(logging.getLogger("test"))
    assert not need_torch and list(policies) == ["tto"] and devices == FALLBACK_DEVICES
    description = policies["tto"].description
    assert description.startswith("PyTorch could not be imported: ") and "libtorch_cpu.so" in description
    assert "\n" not in description and "could not list policies" in caplog.text
