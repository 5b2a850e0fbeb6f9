"""Policies: what proposes each registration step.

* ``base``: the interface (``Policy``, ``PolicyState``, ``PolicyStep``);
* ``tto``: test-time optimization, the default policy;
* ``cards``: the one reader of trained models' ``card.json``; ``networks`` and ``morphseek_network``: the
  networks; ``network_policy`` (SPAC), ``morphseek_policy`` and ``chained`` (``<id>+tto``): learned policies;
* ``registry``: policies by name, trained models discovered lazily; ``choices``: what a panel offers.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Policy": "base",
        "PolicyState": "base",
        "PolicyStep": "base",
        "TestTimeOptimizationConfig": "tto_config",
        "TestTimeOptimizationPolicy": "tto",
        "INTENSITY_MAPPINGS": "tto",
        "make_tto_policy": "tto",
        "DEFAULT_STEPS": "registry",
        "available_policies": "registry",
        "discover_models": "registry",
        "make_policy": "registry",
        "policy_default_steps": "registry",
        "policy_option_defaults": "registry",
        "policy_supports_sampling": "registry",
        "register_model": "registry",
        "register_policy": "registry",
        "registered_policies": "registry",
        "read_card": "cards",
        "SPACPolicy": "spac_policy",
        "MorphSeekPolicy": "morphseek_policy",
        "ChainedPolicy": "chained",
        "WeightMapOverride": "chained",
        "policy_choices": "choices",
    },
)
