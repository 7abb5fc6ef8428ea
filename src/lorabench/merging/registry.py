"""The merge-method registry: ``register`` (where a method is defined), ``get`` and ``names``.

A method merges, layer by layer, the low-rank factors of N adapters of one base into one
LoRA-form pair ``(B, A)`` with ``B @ A`` the merged update (``Method.merge_layer``). Method files
import this module, never the package face (``merging/__init__.py`` imports every method file).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..errors import VariantError
from ..registries import Registry

#: The registered merge methods: ``register(name)`` in each method file, ``get``, ``names``.
METHODS = Registry("merge method", lambda name, known: VariantError(
    f"unknown merge method {name!r}; choose one of: {', '.join(known)}"))
register, get, names = METHODS.register, METHODS.get, METHODS.names


class Method:
    """One merge method: its options, default weights, merged rank and per-layer math."""

    name: ClassVar[str] = ""
    #: One line for ``lorabench merge --help``: what it does and the paper.
    description: ClassVar[str] = ""
    #: Which of the options ``density``, ``k`` and ``seed`` this method reads (the others are refused).
    uses: ClassVar[frozenset[str]] = frozenset()
    #: ``density`` when none is given (methods that use it).
    default_density: ClassVar[float | None] = None

    @classmethod
    def default_weights(cls, n: int) -> list[float]:
        """The weight of each of the ``n`` adapters when ``--weights`` is not given: 1 (their sum)."""
        return [1.0] * n

    @classmethod
    def rank(cls, ranks: list[int], k: int | None) -> int:
        """The merged rank for adapters of factor ranks ``ranks``: ``k``, else the largest rank
        (PEFT's ``add_weighted_adapter`` default ``svd_rank``: the max rank of the merged adapters)."""
        return k if k is not None else max(ranks)

    @classmethod
    def merge_layer(cls, factors: list[tuple[torch.Tensor, torch.Tensor]], weights: list[float], rank: int,
                    density: float | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B (out, rank), A (rank, in))`` from every adapter's ``(B_t, A_t)`` of this layer, with
        ``B_t @ A_t`` its update (scale folded into B)."""
        raise NotImplementedError


def check_options(method: type[Method], n: int | None, weights: list[float] | None, density: float | None,
                  k: int | None, seed: int | None, prefix: str = "--") -> tuple[list[float] | None, float | None]:
    """The weights and density to use, or a VariantError naming the bad option (``prefix`` + its
    name: the ``lorabench merge`` flag, or ``"scenario "`` for a merge run's setting) and the fix.
    ``n``: the number of adapters (None: not known yet, the weights' count is not checked and
    unset weights stay None)."""
    given = {"density": density, "k": k, "seed": seed}
    extra = [f"{prefix}{name}" for name, v in given.items() if v is not None and name not in method.uses]
    if extra:
        takes = ", ".join(f"{prefix}{u}" for u in sorted(method.uses)) or f"only {prefix}weights"
        raise VariantError(f"method {method.name!r} takes no {', '.join(extra)} (it takes {takes}); drop it")
    if weights is not None and n is not None and len(weights) != n:
        raise VariantError(f"{prefix}weights has {len(weights)} values for {n} adapters; give one weight per adapter")
    if weights is not None and not all(math.isfinite(w) for w in weights):
        raise VariantError(f"{prefix}weights must be finite numbers, got {' '.join(map(str, weights))}; give one "
                           f"finite weight per adapter, e.g. {prefix}weights 0.5 0.5")
    if "density" in method.uses:
        density = method.default_density if density is None else density
        if not 0.0 < density <= 1.0:
            raise VariantError(f"{prefix}density must be in (0, 1] (the fraction of each update's entries kept), "
                               f"got {density}")
    if k is not None and k < 1:
        raise VariantError(f"{prefix}k must be a positive integer (the merged rank), got {k}")
    if weights is None:
        return (None if n is None else method.default_weights(n)), density
    return list(weights), density
