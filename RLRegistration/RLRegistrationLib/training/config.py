"""The training configuration: ``TrainConfig`` (a config JSON's sections, per policy family) and the
families' architecture classes. ``TrainConfig.load(path)`` reads ``configs/*.json``."""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError
from ..policies.morphseek_network import MorphSeekArchitecture
from ..policies.networks import BackboneArchitecture, SPACArchitecture
from .data import DataConfig, load_config
from .environment import RegistrationEnv
from .grpo import GRPOConfig
from .losses import RegistrationLoss
from .sac import SACConfig

#: policy families and their architecture classes (the trainers: ``train.TRAINERS``)
ARCHITECTURES: dict[str, type[BackboneArchitecture]] = {
    "spac": SPACArchitecture,
    "morphseek": MorphSeekArchitecture,
}
#: config sections used by one family only
FAMILY_SECTIONS = {"sac": "spac", "grpo": "morphseek"}


#: ``optim.precision``: the forward passes of training in float32, or under bfloat16 autocast (mixed
#: precision: convolutions in bfloat16, reductions and losses in float32; no loss scaling needed)
PRECISIONS = ("fp32", "bf16")

#: card ``inference`` entries a training config may set (read by ``policies.cards``)
INFERENCE_KEYS = ("diffeomorphic_steps", "step_spacings_mm", "offered_alone", "offered_sampling")


@dataclass
class TrainConfig:
    """A training run, as read from a config JSON (sections ``data``, ``model``, ``env``, ``loss``,
    ``sac``, ``optim``, ``schedule``; see ``configs/spac_cpu_small.json``).

    ``model.family`` "morphseek" (``configs/morphseek_cpu_small.json``) replaces ``sac`` by ``grpo``
    (``training.grpo.GRPOConfig``) and ``schedule.sac_steps`` by ``grpo_steps``, and has the optimizer keys
    ``lr_encoder`` / ``lr_decoder``. Both families take the optional ``init.weights``: a warm start from a
    ``weights.pt`` (SPAC: a SPAC model of the same architecture; MorphSeek: a SPAC or MorphSeek model), and
    the optional ``inference`` entries (``INFERENCE_KEYS``) the model card's ``inference`` block takes as
    they are, so that a model runs as its config says straight from ``rlreg train``."""

    id: str = "spac-brain-synth"
    description: str = "SPAC planner-actor-critic with a spatially varying regularization head"
    modality: str = "brain MRI, any contrast (trained on synthetic images from label maps)"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: BackboneArchitecture = field(default_factory=SPACArchitecture)
    env: dict = field(
        default_factory=lambda: {"episode_length": 5, "reward": "kmeans", "fold_weight": 1.0, "clusters": 3}
    )
    loss: dict = field(
        default_factory=lambda: {
            "similarity": "ncc",
            "ncc_window": 7,
            "diffusion_weight": 2.0,
            "prior_weight": 1.0,
            "w_log_beta": 0.18,
        }
    )
    sac: SACConfig = field(default_factory=SACConfig)
    optim: dict = field(
        default_factory=lambda: {
            "lr_planner": 1e-4,
            "lr_actor": 1e-4,
            "lr_critic": 3e-4,
            "lr_alpha": 3e-4,
            "betas": [0.9, 0.999],
            "grad_clip": 10.0,
            "precision": "fp32",
        }
    )
    schedule: dict = field(
        default_factory=lambda: {
            "warmup_steps": 1000,
            "sac_steps": 2000,
            "batch_size": 1,
            "checkpoint_every": 100,
            "validate_every": 250,
            "keep_best": True,
        }
    )
    grpo: GRPOConfig | None = None
    init: dict = field(default_factory=lambda: {"weights": None})
    inference: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.model.family

    @classmethod
    def defaults(cls, family: str = "spac") -> TrainConfig:
        """The default configuration of a policy family."""
        if family not in ARCHITECTURES:
            raise InputError(f"config 'model': unknown family '{family}' (known: {sorted(ARCHITECTURES)})")
        cfg = cls()
        if family == "morphseek":
            cfg.id = "morphseek-brain-synth"
            cfg.description = (
                "MorphSeek latent Gaussian policy fine-tuned with GRPO, with a regularization map"
            )
            cfg.model, cfg.grpo = MorphSeekArchitecture(), GRPOConfig()
            cfg.optim = {
                "lr_encoder": 1e-4,
                "lr_decoder": 1e-4,
                "betas": [0.9, 0.999],
                "grad_clip": 10.0,
                "precision": "fp32",
            }
            schedule = {k: v for k, v in cfg.schedule.items() if k != "sac_steps"}
            cfg.schedule = {**schedule, "grpo_steps": 500}
        return cfg

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        unknown = set(values) - set(cls.__dataclass_fields__) - {"comment"}
        if unknown:
            raise InputError(f"config: unknown keys {sorted(unknown)}")
        values.pop("comment", None)
        family = str(values.get("model", {}).get("family", "spac"))
        out = cls.defaults(family)
        for section, owner in FAMILY_SECTIONS.items():
            if section in values and family != owner:
                raise InputError(
                    f"config '{section}': used by family '{owner}' only (model.family is '{family}')"
                )
        for key in ("id", "description", "modality", "seed", "device"):
            setattr(out, key, values.get(key, getattr(out, key)))
        allowed = {
            "env": set(inspect.signature(RegistrationEnv).parameters),
            "loss": set(inspect.signature(RegistrationLoss).parameters),
            "optim": set(out.optim),
            "schedule": set(out.schedule),
            "model": set(ARCHITECTURES[family].__dataclass_fields__),
            "init": set(out.init),
            "inference": set(INFERENCE_KEYS),
        }
        for key, names in allowed.items():
            unknown = set(values.get(key, {})) - names
            if unknown:
                raise InputError(f"config '{key}': unknown keys {sorted(unknown)} (known: {sorted(names)})")
        for key in ("env", "loss", "optim", "schedule", "init", "inference"):
            setattr(out, key, {**getattr(out, key), **values.get(key, {})})
        if out.optim["precision"] not in PRECISIONS:
            raise InputError(
                f"config 'optim.precision': unknown '{out.optim['precision']}' (known: {', '.join(PRECISIONS)})"
            )
        out.data = DataConfig.from_dict(values.get("data", {}))
        if float(out.loss.get("target_weight", 0.0)) > 0 and (family != "spac" or not out.data.targets):
            raise InputError(
                "config 'loss.target_weight': the distillation term needs a SPAC model and data.targets "
                f"(model.family is '{family}', data.targets is '{out.data.targets}')"
            )
        out.model = ARCHITECTURES[family].from_dict(values.get("model", {}))
        out.sac = SACConfig.from_dict(values.get("sac", {}))
        if family == "morphseek":
            out.grpo = GRPOConfig.from_dict(values.get("grpo", {}))
            outside = set(out.grpo.label_subjects or []) - {int(s) for s in out.data.train_subjects}
            if outside:
                raise InputError(f"config 'grpo': label_subjects {sorted(outside)} are not training subjects")
        return out

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return load_config(cls, path)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["model"] = self.model.to_dict()
        out["data"]["shape"] = list(self.data.shape)
        for section, owner in FAMILY_SECTIONS.items():
            if owner != self.family:
                out.pop(section)
        return out
