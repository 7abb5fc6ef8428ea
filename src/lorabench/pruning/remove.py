"""Physically remove pruned heads and FFN channels from a plain (unadapted) encoder.

transformers 5 has no ``prune_heads`` any more (4.x's ``BertAttention.prune_heads``); its
``prune_linear_layer`` keeps the given rows (dim 0) or columns (dim 1) of a Linear. Removing the
rows of query/key/value and the columns of attention.output.dense of a head, or the rows of
intermediate.dense and the columns of output.dense of a channel, gives the masked block's output
(``pruning.masks``) with fewer parameters; the attention reshapes by ``-1`` heads, so only its
head count is updated.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from ..targets import set_module
from .masks import Plan
from .structure import LINEARS, Block


def kept_indices(block: Block, linear: str, pruned: list[int]) -> torch.Tensor:
    """Rows (dim 0) or columns (dim 1) of ``linear`` that stay when the groups ``pruned`` go."""
    group = LINEARS[linear][0]
    n, size = (block.heads, block.head_dim) if group == "heads" else (block.channels, 1)
    keep = torch.ones(n, dtype=torch.bool)
    keep[list(pruned)] = False
    return torch.nonzero(keep.repeat_interleave(size)).flatten()


@torch.no_grad()
def remove_groups(model: nn.Module, found: list[Block], plan: Plan) -> nn.Module:
    """Cut every block named in ``plan`` in place: its pruned heads and channels are gone."""
    for block in found:
        pruned = plan.get(block.name)
        if not pruned:
            continue
        for linear, (group, dim) in LINEARS.items():
            layer = model.get_submodule(block.path(linear))
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"{block.path(linear)} is a {type(layer).__name__}; remove groups from a plain "
                                "model (merge and unload the adapter first)")
            index = kept_indices(block, linear, pruned[group]).to(layer.weight.device)
            set_module(model, block.path(linear), prune_linear_layer(layer, index, dim=dim))
        attention = model.get_submodule(f"{block.name}.attention.self")
        attention.num_attention_heads = block.heads - len(pruned["heads"])
        attention.all_head_size = attention.num_attention_heads * attention.attention_head_size
    return model


def removed_parameters(block: Block, heads: int, channels: int) -> int:
    """Parameters removed from one block by ``heads`` heads and ``channels`` channels:
    heads * d * (3 (D + 1) + D)   (q, k, v rows with their bias; attention.output columns)
    + channels * ((D + 1) + D)    (intermediate row with its bias; output.dense column)."""
    d, D = block.head_dim, block.hidden
    return heads * d * (4 * D + 3) + channels * (2 * D + 1)
