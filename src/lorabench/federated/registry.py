"""The server-aggregation registry: ``register`` (where a method is defined), ``get`` and ``names``.

An aggregation is one federated LoRA method: which variant the clients train (``variant``), what
each client starts a round from (``begin_client``), what it sends up (``sends_up``), how the
server combines the clients' factors (``aggregate_layer``) and what it sends down. The defaults
are FedAvg's: clients start from the global (B, A), send both, and the server hands back the
new global pair. Method files import this module, never the package face.

Factors are ``(B (out, r), A (r, in))`` with ``B @ A`` the layer's update before the LoRA scale
s = alpha / r (the scale is the same for every client, so it changes no average).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..registries import Registry

#: The registered aggregations: ``register(name)`` in each method file, ``get``, ``names``.
METHODS = Registry("federated aggregation", lambda name, known: ConfigError(
    f"unknown federated method {name!r}; choose one of: {', '.join(known)}"))
register, get, names = METHODS.register, METHODS.get, METHODS.names

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer name -> (B, A)
#: ``fed`` in the hooks below is the ``simulate.Federation`` (typed Any: it imports this module).


def weighted_product(Bs: list[torch.Tensor], As: list[torch.Tensor], p: list[float]) -> torch.Tensor:
    """The ideal global update sum_i p_i B_i A_i (out, in) of one layer."""
    return sum(w * (B.float() @ A.float()) for B, A, w in zip(Bs, As, p))


def weighted_mean(ts: list[torch.Tensor], p: list[float]) -> torch.Tensor:
    """sum_i p_i t_i (FedAvg of one tensor)."""
    return sum(w * t.float() for t, w in zip(ts, p))


@dataclasses.dataclass
class NoOptions:
    """This method has no options of its own."""


class Aggregation:
    """One federated LoRA method: client start, messages and the server's per-layer math."""

    name: ClassVar[str] = ""
    #: One line for ``lorabench federate --help``: what it does and the paper.
    description: ClassVar[str] = ""
    #: The variant every client trains (one model, loaded once, holds it).
    variant: ClassVar[str] = "lora"
    #: The factors a client uploads per layer ("A", "B"); the head always goes up too.
    sends_up: ClassVar[tuple[str, ...]] = ("A", "B")
    #: The factors of the global state the server sends each sampled client per layer.
    sends_down: ClassVar[tuple[str, ...]] = ("A", "B")
    Options: ClassVar[type] = NoOptions

    def __init__(self, opts: Any = None):
        self.opts = opts if opts is not None else self.Options()

    @classmethod
    def make_options(cls, **options: Any) -> Any:
        known = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"federated method {cls.name!r} has no option {', '.join(map(repr, unknown))}; "
                              f"its options: {', '.join(known) or 'none'}")
        return cls.Options(**options)

    # ---- the client side ---------------------------------------------------------------------
    def begin_client(self, fed: Any, client: int, loader: Any) -> None:
        """Put the client's starting adapter into the model (default: the global factors)."""
        fed.set_factors(fed.global_factors)

    def end_client(self, fed: Any, client: int) -> Factors:
        """The factors the client uploads after local training (default: its trained B, A)."""
        return fed.get_factors()

    # ---- the server side ---------------------------------------------------------------------
    def aggregate(self, uploads: list[Factors], p: list[float], fed: Any = None) -> Factors:
        """The new global factors from the sampled clients' uploads, weighted by ``p`` (sum 1)."""
        return {layer: self.aggregate_layer([u[layer][0] for u in uploads], [u[layer][1] for u in uploads], p)
                for layer in uploads[0]}

    def aggregate_layer(self, Bs: list[torch.Tensor], As: list[torch.Tensor],
                        p: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def end_round(self, fed: Any, new_global: Factors) -> None:
        """Adopt the aggregate as the state the next round starts from."""
        fed.global_factors = new_global

    def load_global(self, fed: Any) -> None:
        """Put the global model into the model for evaluation (default: the global factors)."""
        fed.set_factors(fed.global_factors)

    def download(self, fed: Any) -> dict[str, torch.Tensor]:
        """The adapter tensors each sampled client receives at the start of a round."""
        roles = {"B": 0, "A": 1}
        return {f"{layer}.lora_{role}": pair[roles[role]] for layer, pair in fed.global_factors.items()
                for role in self.sends_down}
