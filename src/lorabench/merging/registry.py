"""The merge-method registry: ``register`` (where a method is defined), ``get`` and ``names``.

A method merges, layer by layer, the low-rank factors of N adapters of one base into one
LoRA-form pair ``(B, A)`` with ``B @ A`` the merged update (``Method.merge_layer``). Method files
import this module, never the package face (``merging/__init__.py`` imports every method file).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import VariantError

_REGISTRY: dict[str, Any] = {}


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


def register(name: str):
    """Class decorator: make a Method subclass available as ``name``."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"merge method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get(name: str):
    """The Method class registered as ``name``."""
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise VariantError(f"unknown merge method {name!r}; choose one of: {', '.join(names())}")
    return _REGISTRY[key]


def names() -> list[str]:
    return sorted(_REGISTRY)
