"""The merge-method registry: ``register`` (where a method is defined), ``get`` and ``names``.

A method merges, layer by layer, the low-rank factors of N adapters of one base into one
LoRA-form pair ``(B, A)`` with ``B @ A`` the merged update (``Method.merge_layer``). Method files
import this module, never the package face (``merging/__init__.py`` imports every method file).
"""

from __future__ import annotations

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
