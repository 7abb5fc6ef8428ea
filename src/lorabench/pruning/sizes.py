"""Parameter counts and bytes of a model (shared tensors counted once)."""

from __future__ import annotations

from torch import nn

from .structure import LINEARS, Block


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def block_params(model: nn.Module, found: list[Block]) -> int:
    """Parameters of the prunable linear layers (``LINEARS``) of every block (of a plain model)."""
    return sum(p.numel() for b in found for linear in LINEARS for p in model.get_submodule(b.path(linear)).parameters())
