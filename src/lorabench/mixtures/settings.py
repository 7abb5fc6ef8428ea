"""``MixtureSettings``: the mixture half of a ``kind: mixture`` run (the run half is a RunConfig).

One run trains one shared encoder on ``tasks`` (one head per task, every batch one task's) adapted
by one shared LoRA (method ``lora``) or by routed LoRA experts (``lora_mixer``, ``remix``;
``mixtures.registry``), and reports the run's ``--task``; the other tasks' results are written by
the same training as sibling runs (``mixtures.recipe``). Every field is read as its type or refused
with a ConfigError naming the scenario key, before any compute; the router options are checked by
the router's own ``make_options``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..config_types import coerce
from ..errors import ConfigError
from . import registry
from .interleave import SAMPLINGS

METHODS = ("lora", "lora_mixer", "remix")
TYPES = {"method": str, "experts": int, "k": int, "rsl_weight": float | None, "samples": int | None,
         "sampling": str, "temperature": float}


@dataclass
class MixtureSettings:
    method: str = "lora_mixer"  # lora: one LoRA shared by every task; lora_mixer / remix: routed experts
    tasks: list[str] = field(default_factory=list)  # the tasks trained together, the run's own among them [it alone]
    experts: int = 4  # LoRA experts per adapted layer (routers; with experts_from: one per adapter)
    k: int = 2  # experts per token (routers)
    rsl_weight: float | None = None  # lora_mixer: lambda of its router loss [the router's default]
    samples: int | None = None  # remix: RLOO selections per example [the router's default]
    experts_from: list[str] = field(default_factory=list)  # frozen saved LoRAs as the experts (only routers train)
    sampling: str = "proportional"  # which task a step is: proportional to its batches, or temperature
    temperature: float = 2.0  # sampling temperature: p_t ~ n_t^(1/T)

    def __post_init__(self) -> None:
        for name in ("tasks", "experts_from"):
            value = getattr(self, name)
            value = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            setattr(self, name, coerce(f"scenario {name}", value, list[str]))
        for name, hint in TYPES.items():
            value = getattr(self, name)
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            setattr(self, name, coerce(f"scenario {name}", value, hint))
        if self.method not in METHODS:
            raise ConfigError(f"scenario method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"scenario sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"scenario temperature must be a number > 0, got {self.temperature!r}")
        if self.method == "lora":
            given = [n for n in ("rsl_weight", "samples") if getattr(self, n) is not None] + \
                (["experts_from"] if self.experts_from else [])
            if given:
                raise ConfigError(f"scenario {', '.join(given)} need a router (method lora_mixer or remix); method "
                                  "lora has none")
            self.experts, self.k = 1, 1  # recorded as what a shared LoRA is: one expert, always chosen
        else:
            if self.experts_from:
                self.experts = len(self.experts_from)
            if self.experts < 1:
                raise ConfigError(f"scenario experts must be a positive integer, got {self.experts}")
            try:
                registry.get(self.method).make_options(self.experts, **self.router_options())
            except ConfigError as e:
                raise ConfigError(f"scenario: {e} (as --scenario experts=E --scenario k=K)") from None

    @property
    def routed(self) -> bool:
        return self.method != "lora"

    def router_options(self) -> dict[str, Any]:
        return {"k": self.k, **{n: getattr(self, n) for n in ("rsl_weight", "samples") if getattr(self, n) is not None}}

    def task_list(self, task: str) -> list[str]:
        """The tasks trained together by a run of ``task``: ``tasks`` as listed, or ``task`` alone."""
        return list(self.tasks) or [task]

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
