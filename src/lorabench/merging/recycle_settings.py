"""``RecycleSettings``: the recycling half of a ``kind: recycle`` run (the run half is a RunConfig).

One run is one arm of the recycling study (``merging.recycle``) on one target task, N target
training examples and one seed; a sweep grids over ``arm`` and ``n_examples`` as over options.
Every field is read as its type (``config_types.coerce``) or refused with a ConfigError naming the
scenario key, before any compute. Defaults are the official code's "Ours" (r-three/realistic-
adaptive-merging, experiments/run_adaptive_merging.sh): per-module coefficients, leaky-ReLU
activation, initialised at 0, lr 5e-2, 100 steps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..config_types import coerce
from ..errors import ConfigError

#: The arms: the method and the paper's controls (merging.recycle docstring).
ARMS = ("adaptive", "uniform", "best_single", "random_pool", "fresh")
#: How a learned coefficient becomes the weight w_k of an adapter (official LorahubLinear activations):
#: leaky_relu ("Ours"), linear (AdaMerging), squared (the official "standard" variant).
ACTIVATIONS = ("leaky_relu", "linear", "squared")
#: Coefficient init: zero (official "target" init with no target adapter in the pool, force_routing 0)
#: or equal (1 / sqrt(K), official "equal_weight": AdaMerging's).
INITS = ("zero", "equal")
#: The arms that learn coefficients.
LEARNS = ("adaptive", "random_pool")

TYPES = {"arm": str, "hold_out_target": bool, "n_examples": int, "steps": int, "lr": float, "per_layer": bool,
         "activation": str, "init": str}


def _typed(name: str, value: Any, hint: type) -> Any:
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return coerce(f"scenario {name}", value, hint)


@dataclass
class RecycleSettings:
    pool: list[str] = field(default_factory=list)  # adapter folders (run-<id>-adapter), or folders holding them
    arm: str = "adaptive"
    hold_out_target: bool = False  # drop pool adapters trained on the target task (else such a pool is refused)
    n_examples: int = 64  # N target training examples (a seeded subset of the target's train split)
    steps: int = 100  # optimizer steps of every arm (official: 100)
    lr: float = 5e-2  # learning rate of the merge coefficients (official: 5e-2); the head and a fresh LoRA use --lr
    per_layer: bool = True  # one coefficient per adapter per adapted layer (official per_module); else one per adapter
    activation: str = "leaky_relu"
    init: str = "zero"

    def __post_init__(self) -> None:
        if isinstance(self.pool, str):
            self.pool = [self.pool]
        if not isinstance(self.pool, list) or not all(isinstance(p, str) and p for p in self.pool):
            raise ConfigError(f"scenario pool must list adapter folders (or folders holding run-*-adapter folders), "
                              f"got {self.pool!r}; e.g. --scenario pool=runs/merge-glue")
        if not self.pool:
            raise ConfigError("kind recycle needs scenario.pool: the saved LoRA adapters to recycle, e.g. --scenario "
                              "pool=runs/merge-glue (a folder of run-<id>-adapter folders) with hold_out_target=true")
        for name, hint in TYPES.items():
            setattr(self, name, _typed(name, getattr(self, name), hint))
        for name, value, valid in (("arm", self.arm, ARMS), ("activation", self.activation, ACTIVATIONS),
                                   ("init", self.init, INITS)):
            if value not in valid:
                raise ConfigError(f"scenario {name} must be one of {', '.join(valid)}, got {value!r}")
        for name in ("n_examples", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"scenario {name} must be a positive integer, got {getattr(self, name)!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"scenario lr must be a learning rate > 0, got {self.lr!r}; e.g. lr=0.05")
        if self.init == "zero" and self.activation == "squared":
            raise ConfigError("scenario init zero with activation squared never moves (the gradient of w^2 at 0 is "
                              "0); use init=equal")

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

