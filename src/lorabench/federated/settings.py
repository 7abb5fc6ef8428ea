"""``FedSettings``: the federated half of a ``lorabench federate`` call (the run half is a RunConfig)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from . import registry
from .split import check_split


def parse_beta(value: Any) -> float:
    """A Dirichlet beta from a flag or YAML: a number, or inf / "inf" / "iid" / null for IID."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("inf", "infinity", "iid")):
        return math.inf
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--beta must be a number > 0 or inf (IID), got {value!r}; e.g. --beta 0.5") from None


@dataclass
class FedSettings:
    method: str
    clients: int = 10  # N
    beta: float = math.inf  # Dirichlet label skew; inf: IID
    rounds: int = 5  # R
    local_epochs: float = 1.0  # E, passes over a client's data per round
    fraction: float = 1.0  # clients sampled per round (seeded by the run's seed and the round)
    options: dict = field(default_factory=dict)  # the method's own options

    def __post_init__(self) -> None:
        self.method = registry.get(self.method).name  # unknown name -> ConfigError with the known ones
        self.beta = parse_beta(self.beta)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"--rounds must be a positive integer, got {self.rounds!r}; e.g. --rounds 5")
        if isinstance(self.local_epochs, bool) or not isinstance(self.local_epochs, (int, float)) \
                or not 0 < self.local_epochs < math.inf:
            raise ConfigError(f"--local-epochs must be > 0, got {self.local_epochs!r}; e.g. --local-epochs 1")
        check_split(max(self.clients, 1) if isinstance(self.clients, int) else 1, self.clients, self.beta,
                    self.fraction)
        self.method_options()  # the method validates its own options

    def method_options(self) -> Any:
        return registry.get(self.method).make_options(**self.options)

    def aggregation(self) -> registry.Aggregation:
        return registry.get(self.method)(self.method_options())

    def record(self) -> dict[str, Any]:
        """JSON-safe: beta inf is written "inf" (JSON has no infinity)."""
        return {"method": self.method, "clients": self.clients,
                "beta": "inf" if math.isinf(self.beta) else self.beta, "rounds": self.rounds,
                "local_epochs": self.local_epochs, "fraction": self.fraction}
