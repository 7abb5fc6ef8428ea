"""``FedSettings``: the federated half of a ``lorabench federate`` call (the run half is a RunConfig).

Every field, and every option of the method, is read as its type (``config_types.coerce``: a YAML
``clients: "4"`` is 4) or refused with a ConfigError naming the flag, before any compute. Numbers
already given as numbers are kept as written (``local_epochs: 1`` stays 1: the run id records it).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from ..config_types import coerce
from ..errors import ConfigError
from . import registry
from .split import check_split

#: field -> (its type, the flag that sets it)
TYPES = {"method": (str, "--method"), "clients": (int, "--clients"), "rounds": (int, "--rounds"),
         "local_epochs": (float, "--local-epochs"), "fraction": (float, "--fraction"),
         "options": (dict, "options (--fed-opt)")}


def typed(value: Any, hint: Any, flag: str) -> Any:
    """``value`` as ``hint`` (a ConfigError naming ``flag`` otherwise); an int or float for a float
    stays as it is."""
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return coerce(flag, value, hint)


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
        if self.options is None:
            self.options = {}
        for name, (hint, flag) in TYPES.items():
            setattr(self, name, typed(getattr(self, name), hint, flag))
        self.method = registry.get(self.method).name  # unknown name -> ConfigError with the known ones
        self.beta = parse_beta(self.beta)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"--rounds must be a positive integer, got {self.rounds!r}; e.g. --rounds 5")
        if isinstance(self.local_epochs, bool) or not isinstance(self.local_epochs, (int, float)) \
                or not 0 < self.local_epochs < math.inf:
            raise ConfigError(f"--local-epochs must be > 0, got {self.local_epochs!r}; e.g. --local-epochs 1")
        check_split(max(self.clients, 1) if isinstance(self.clients, int) else 1, self.clients, self.beta,
                    self.fraction)
        self.options = self._typed_options()
        self.method_options()  # the method validates its own options

    def _typed_options(self) -> dict:
        """The method's options as their types (unknown keys as given: ``make_options`` names them)."""
        cls = registry.get(self.method)
        try:
            hints = typing.get_type_hints(cls.Options)
        except Exception:  # an annotation we cannot resolve: the options as given
            hints = {}
        known = {f.name for f in dataclasses.fields(cls.Options)}
        return {k: typed(v, hints[k], f"--fed-opt {k}") if k in known and k in hints else v
                for k, v in self.options.items()}

    def method_options(self) -> Any:
        return registry.get(self.method).make_options(**self.options)

    def aggregation(self) -> registry.Aggregation:
        return registry.get(self.method)(self.method_options())

    def record(self) -> dict[str, Any]:
        """JSON-safe: beta inf is written "inf" (JSON has no infinity)."""
        return {"method": self.method, "clients": self.clients,
                "beta": "inf" if math.isinf(self.beta) else self.beta, "rounds": self.rounds,
                "local_epochs": self.local_epochs, "fraction": self.fraction}
