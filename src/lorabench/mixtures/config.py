"""The settings of one multi-task mixture run, from a YAML file and/or flags, checked up front.

    tasks: [sst2, mrpc]        # one or more GLUE tasks, one shared encoder, one head each
    method: lora_mixer         # lora (one LoRA shared by all tasks) | lora_mixer | remix
    experts: 4                 # LoRA experts per adapted layer (routers only)
    k: 2                       # experts per token
    experts_from: []           # frozen pre-trained LoRA adapters as the experts (only the router trains)

Every check that can fail runs in ``check()`` (the command calls it before loading anything).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..choices import PRECISIONS
from ..data.glue import get_task
from ..errors import ConfigError
from ..yamlio import parse_yaml
from . import registry
from .experts import ExpertOptions
from .interleave import SAMPLINGS


@dataclass
class MixtureConfig:
    tasks: list[str] = field(default_factory=list)
    method: str = "lora_mixer"
    model: str = "minilm"
    layers: int | None = None  # keep the first N transformer layers (fast tests)
    targets: list[str] | None = None  # None: the attention's q, k, v, o
    experts: int = 4
    k: int = 2
    r: int = 8
    alpha: float = 16.0
    rsl_weight: float | None = None  # lora_mixer: lambda of RSL [the router's default]
    samples: int | None = None  # remix: RLOO selections per example [the router's default]
    experts_from: list[str] = field(default_factory=list)
    sampling: str = "proportional"
    temperature: float = 2.0
    train_limit: int | None = None
    eval_limit: int | None = None
    max_length: int = 128
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    epochs: int = 1
    seed: int = 0
    data_dir: str | None = None
    precision: str = "auto"  # autocast of every forward: auto (bf16 on a GPU that has it, else fp32) | fp32 | bf16 | fp16

    @property
    def routed(self) -> bool:
        return self.method != "lora"

    def router_options(self) -> dict[str, Any]:
        opts = {"k": self.k}
        for key in ("rsl_weight", "samples"):
            if getattr(self, key) is not None:
                opts[key] = getattr(self, key)
        return opts

    def check(self) -> MixtureConfig:
        """Raise ConfigError / DataError naming the fix; returns self with task names canonical."""
        if not self.tasks:
            raise ConfigError("no tasks; pass --tasks sst2,mrpc (one or more GLUE tasks) or tasks: in the YAML file")
        self.tasks = [get_task(t).name for t in self.tasks]  # unknown task: DataError with the list
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"a task is named twice in {self.tasks}; name each task once")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"unknown sampling {self.sampling!r}; choose one of: {', '.join(SAMPLINGS)}")
        for key in ("max_length", "batch_size", "epochs") + (("train_limit", "eval_limit", "layers")):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"need lr > 0, weight_decay >= 0 and warmup_ratio in [0, 1); got lr={self.lr}, "
                              f"weight_decay={self.weight_decay}, warmup_ratio={self.warmup_ratio}")
        if self.experts_from:
            missing = [d for d in self.experts_from if not Path(d).is_dir()]
            if missing:
                raise ConfigError(f"expert adapter folder {missing[0]} does not exist; pass folders written by "
                                  "`lorabench train --save-adapter`")
            if not self.routed:
                raise ConfigError("experts_from needs a router (--method lora_mixer or remix); method lora has none")
            self.experts = len(self.experts_from)
        ExpertOptions(self.experts, self.r, self.alpha)
        if self.routed:
            registry.get(self.method).make_options(self.experts, **self.router_options())
        elif self.rsl_weight is not None or self.samples is not None:
            raise ConfigError("rsl_weight and samples are router options; method lora has no router")
        return self


def fields() -> list[str]:
    return [f.name for f in dataclasses.fields(MixtureConfig)]


def from_mapping(values: dict[str, Any], where: str = "the mixture config") -> MixtureConfig:
    unknown = sorted(set(values) - set(fields()))
    if unknown:
        raise ConfigError(f"{where} has no setting {', '.join(map(repr, unknown))}; settings: {', '.join(fields())}")
    values = dict(values)
    for key in ("tasks", "experts_from", "targets"):
        if isinstance(values.get(key), str):
            values[key] = [v.strip() for v in values[key].split(",") if v.strip()]
    return MixtureConfig(**values)


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = parse_yaml(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read mixture config {path} ({e.strerror or e}); pass an existing YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"mixture config {path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"mixture config {path} must be a mapping of settings (tasks: [sst2, mrpc] ...)")
    return data
