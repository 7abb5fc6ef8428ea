"""The settings of one multi-task mixture run, from a YAML file and/or flags, checked up front.

    tasks: [sst2, mrpc]        # one or more GLUE tasks, one shared encoder, one head each
    method: lora_mixer         # lora (one LoRA shared by all tasks) | lora_mixer | remix
    experts: 4                 # LoRA experts per adapted layer (routers only)
    k: 2                       # experts per token
    experts_from: []           # frozen pre-trained LoRA adapters as the experts (only the router trains)

Every value is its field's type (``config_types.coerce``: "5e-4" is 5e-4, "abc" for a number is a
ConfigError) and every number finite, from the moment the config exists; every other check that
can fail runs in ``check()`` (the command calls it before loading anything). Each message names
the flag that sets the value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..adapter_files import repeated_folder
from ..choices import PRECISIONS
from ..config_types import coerce
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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # "4" is 4, "abc" for a number a ConfigError naming the flag
            try:
                value = coerce(f.name, getattr(self, f.name), _hints()[f.name])
            except ConfigError as e:
                raise ConfigError(f"{e}; {fix(f.name)}") from None
            if isinstance(value, float) and not math.isfinite(value):  # nan and inf parse as floats
                raise ConfigError(f"{f.name} must be a finite number, got {value}; {fix(f.name)}")
            setattr(self, f.name, value)

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
        self.check_ranges()
        if self.experts_from:
            missing = [d for d in self.experts_from if not Path(d).is_dir()]
            if missing:
                raise ConfigError(f"expert adapter folder {missing[0]} does not exist; pass folders written by "
                                  "`lorabench train --save-adapter`")
            repeat = repeated_folder(self.experts_from)  # the same adapter twice: two identical experts
            if repeat is not None:
                first, d = repeat
                what = f"{d} is given twice" if first == d else f"{first} and {d} are the same folder"
                raise ConfigError(f"expert adapter {what}, which makes two identical experts; pass each adapter once")
            if not self.routed:
                raise ConfigError("experts_from needs a router (--method lora_mixer or remix); method lora has none")
            self.experts = len(self.experts_from)
        ExpertOptions(self.experts, self.r, self.alpha)
        if self.routed:
            registry.get(self.method).make_options(self.experts, **self.router_options())
        elif self.rsl_weight is not None or self.samples is not None:
            raise ConfigError("rsl_weight and samples are router options; method lora has no router")
        return self

    def check_ranges(self) -> None:
        """Every number in its range (they are finite numbers of the right type already)."""
        for key in ("layers", "experts", "k", "r", "samples", "train_limit", "eval_limit", "max_length",
                    "batch_size", "epochs"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value}; {fix(key)}")
        for key in ("alpha", "lr", "temperature"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}; {fix(key)}")
        for key, meaning in (("rsl_weight", "0 = no RSL"), ("weight_decay", "0 = none"),
                             ("max_grad_norm", "0 = no clipping")):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"{key} must be >= 0 ({meaning}), got {value}; {fix(key)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}; {fix('warmup_ratio')}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2^32), got {self.seed}; {fix('seed')}")


#: An example value of each setting, for the messages; the flag is ``--`` and the name with dashes.
EXAMPLES = {"tasks": "sst2,mrpc", "method": "lora_mixer", "model": "minilm", "layers": "2", "targets": "query,value",
            "experts": "4", "k": "2", "r": "8", "alpha": "16", "rsl_weight": "0.01", "samples": "4",
            "experts_from": "ADAPTER_DIR ADAPTER_DIR", "sampling": "temperature", "temperature": "2",
            "train_limit": "1000", "eval_limit": "400", "max_length": "128", "batch_size": "32", "lr": "5e-4",
            "weight_decay": "0", "warmup_ratio": "0.06", "max_grad_norm": "1", "epochs": "1", "seed": "0",
            "data_dir": "glue_data", "precision": "bf16"}
#: Settings of the YAML file only (no flag).
NO_FLAG = ("warmup_ratio", "max_grad_norm")


def fix(name: str) -> str:
    """How to give ``name`` a good value: its flag (or its line of the --config file) and an example."""
    if name in NO_FLAG:
        return f"e.g. {name}: {EXAMPLES[name]} in the --config file"
    return f"e.g. --{name.replace('_', '-')} {EXAMPLES[name]}"


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(MixtureConfig)


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
