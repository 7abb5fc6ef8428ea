"""The router registry: ``register`` (where a router is defined), ``get`` and ``names``.

A router decides, for every token entering a transformer block, which of the block's E LoRA
experts act on it and with what weight: ``Router.route(x)`` returns gates ``g (..., E)``, zero for
the experts left out. Every expert layer of the block (q, k, v, o) reads the same gates
(``experts.RoutingState``). Router files import this module, never the package face
(``mixtures/__init__.py`` imports every router file).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..registries import Registry

#: The registered routers: ``register(name)`` in each router file, ``get``, ``names``.
ROUTERS = Registry("router", lambda name, known: ConfigError(
    f"unknown mixture method {name!r}; choose one of: lora (one shared LoRA, no router), {', '.join(known)}"))
register, get, names = ROUTERS.register, ROUTERS.get, ROUTERS.names


@dataclasses.dataclass
class RouterOptions:
    """Options every router has: ``k`` experts act on each token."""

    k: int = 2

    def check(self, experts: int) -> None:
        """Raise ConfigError when the options cannot fit ``experts`` experts per layer."""
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"k must be a positive integer, got {self.k!r}; use e.g. --k 2")
        if self.k > experts:
            raise ConfigError(f"k={self.k} experts per token is more than the {experts} experts per layer; "
                              f"choose --k <= {experts} or more --experts")


class Router(nn.Module):
    """One block's router: a linear score ``W_r x`` per expert, and the rule that turns scores into
    gates. Subclasses set ``Options``, ``description``, and override ``route``; ``aux_loss`` and
    ``objective`` default to "none" and "the task loss plus every router's aux loss"."""

    name: ClassVar[str] = ""
    #: One line for ``lorabench mixture --help``: what it does and the paper.
    description: ClassVar[str] = ""
    Options: ClassVar[type] = RouterOptions

    def __init__(self, in_features: int, experts: int, opts: Any):
        super().__init__()
        self.experts = experts
        self.opts = opts
        self.W_r = nn.Linear(in_features, experts, bias=False)  # (E, in): one score per expert
        nn.init.normal_(self.W_r.weight, std=0.02)

    @classmethod
    def make_options(cls, experts: int, **options: Any) -> Any:
        """Build and check ``Options``; an unknown key names the valid ones."""
        fields = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ConfigError(f"router {cls.name!r} has no option {', '.join(map(repr, unknown))}; "
                              f"its options are: {', '.join(fields)}")
        opts = cls.Options(**options)
        opts.check(experts)
        return opts

    def route(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Gates ``(..., E)`` for the block input ``x (..., in)``; ``mask (...)`` marks real tokens."""
        raise NotImplementedError

    def aux_loss(self) -> torch.Tensor | None:
        """This router's term of the training loss from its last ``route`` call, or None."""
        return None

    @classmethod
    def objective(cls, model: nn.Module, task: str, batch: dict, opts: Any) -> torch.Tensor:
        """The training loss of one batch: the task loss plus the routers' aux losses."""
        loss = model(task, **batch).loss
        aux = [t for r in model.routers.values() if (t := r.aux_loss()) is not None]
        return loss + torch.stack(aux).sum() if aux else loss


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1.0 at the ``k`` largest scores of the last dim, 0.0 elsewhere: ``(..., E)``."""
    idx = scores.topk(k, dim=-1).indices  # (..., k)
    return torch.zeros_like(scores).scatter_(-1, idx, 1.0)
