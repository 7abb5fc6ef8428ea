"""``MergeSettings``: the merging half of a ``kind: merge`` run (the run half is a RunConfig).

One run merges a pool of saved LoRAs (one per task, each trained with ``--save-adapter``) with one
method and evaluates the merged update on one of the pool's tasks, with that task's own head
(``merging.recipe``). A sweep grids over ``method`` and ``density`` as over a variant's options,
and over the pool's tasks as over tasks. Every field is read as its type or refused with a
ConfigError naming the scenario key, before any file is read.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..config_types import coerce
from ..errors import ConfigError, VariantError
from . import registry as methods


@dataclass
class MergeSettings:
    pool: list[str] = field(default_factory=list)  # adapter folders (run-<id>-adapter), or folders holding them
    method: str = ""  # a registered merge method (merging.registry): linear, ties, dare, concat, lego ...
    weights: list[float] | None = None  # one per pool task, in the pool's task order (sorted names) [the method's]
    density: float | None = None  # ties, dare: fraction of each update's entries kept [the method's default]
    k: int | None = None  # ties, dare, lego: the merged rank [the largest pool rank]

    def __post_init__(self) -> None:
        if isinstance(self.pool, str):
            self.pool = [self.pool]
        if not isinstance(self.pool, list) or not self.pool or not all(isinstance(p, str) and p for p in self.pool):
            raise ConfigError(f"kind merge needs scenario pool: saved LoRA adapters of one base, one per task, e.g. "
                              f"--scenario pool=runs/merge-glue (a folder of run-<id>-adapter folders); got {self.pool!r}")
        self.method = coerce("scenario method", self.method, str)
        if not self.method:
            raise ConfigError(f"kind merge needs scenario method, one of {', '.join(methods.names())}; e.g. "
                              "--scenario method=ties")
        try:
            cls = methods.get(self.method)
        except VariantError as e:
            raise ConfigError(f"scenario method: {e}") from None
        if self.weights is not None:
            self.weights = _numbers(self.weights)
        if self.density is not None:
            self.density = float(coerce("scenario density", self.density, float))
        if self.k is not None:
            self.k = coerce("scenario k", self.k, int)
        try:  # the checks of lorabench merge's flags, named as scenario settings
            _, self.density = methods.check_options(cls, None, self.weights, self.density, self.k, None,
                                                    prefix="scenario ")
        except VariantError as e:
            raise ConfigError(str(e)) from None

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _numbers(value: Any) -> list[float]:
    """A list of finite numbers from a YAML list or a ``--scenario weights=0.7,0.3`` string."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        out = [float(coerce("scenario weights", v.strip() if isinstance(v, str) else v, float)) for v in items]
    except (ConfigError, TypeError):
        out = []
    if not out or not all(math.isfinite(w) for w in out):
        raise ConfigError(f"scenario weights must be finite numbers, one per pool task, got {value!r}; e.g. "
                          "--scenario weights=0.7,0.3")
    return out
