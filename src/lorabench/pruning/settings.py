"""``PruneSettings``: the pruning half of a ``kind: prune`` run (the run half is a RunConfig).

One run prunes with one method at one sparsity: ``lorabench prune --method A B --sparsity s t``
is that many runs, each with its own run id and result, as a sweep plans them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from . import registry
from .structure import check_sparsity


@dataclass
class PruneSettings:
    method: str = "loraprune"
    sparsity: float = 0.5  # fraction of heads and FFN channels pruned in each pruned layer
    keep_first: int | None = None  # encoder layers left whole at the start (None: int(0.1 L), official LoRAPrune)
    keep_last: int = 1  # ... and at the end
    options: dict = field(default_factory=dict)  # the method's own options (paper defaults)

    def __post_init__(self) -> None:
        # The methods are registered by the package's __init__ (which Python runs before this
        # module): importing them here would lift the config layer above the adapters.
        self.method = registry.get(self.method).name  # unknown name -> ConfigError naming the known ones
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ConfigError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}; e.g. sparsity: 0.5")
        self.sparsity = float(self.sparsity)
        check_sparsity(self.sparsity)
        if not registry.get(self.method).prunes and self.sparsity != 0.0:
            raise ConfigError(f"method {self.method} does not prune (the unpruned baseline); give sparsity 0 or "
                              "leave it out")
        for name in ("keep_first", "keep_last"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ConfigError(f"{name} must be an integer >= 0 (encoder layers left unpruned), got {v!r}")
        if self.keep_last is None:
            raise ConfigError("keep_last must be an integer >= 0, got null; e.g. keep_last: 1")
        cls = registry.get(self.method)
        unknown = sorted(set(self.options) - cls.option_names())
        if unknown:
            raise ConfigError(f"prune option {', '.join(unknown)}: not an option of {self.method}; its options: "
                              f"{', '.join(sorted(cls.option_names())) or '(none)'}")
        self.options = dataclasses.asdict(cls.make_options(**self.options))

    def method_options(self) -> Any:
        return registry.get(self.method).make_options(**self.options)

    @classmethod
    def defaults_for(cls, method: str) -> dict[str, Any]:
        """The sparsity a method runs at when none is given (0 for the unpruned baseline)."""
        return {} if registry.get(method).prunes else {"sparsity": 0.0}

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
