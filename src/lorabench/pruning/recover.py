"""LoRAM's recovery: the adapter trained on the pruned base, reshaped to the full model.

Official code junzhang-zj/LoRAM, loram/3_recovered_low_rank_matrix_generation.py (default
``lora_recover_type='zeroA'``): the rows of lora_B of q/k/v/gate/up and the columns of lora_A of
o/down that belong to pruned heads (channels) are zeros; every other entry is the trained one.
So on the full model a pruned row of q/k/v/intermediate gets no update (W0 x), a kept row exactly
the pruned model's update, and a pruned input column of attention.output / output.dense adds
nothing to the update.
"""

from __future__ import annotations

import torch

from .masks import Plan
from .remove import kept_indices
from .structure import LINEARS, Block


def recover_factor(t: torch.Tensor, kept: torch.Tensor, full: int, dim: int) -> torch.Tensor:
    """``t`` placed at positions ``kept`` of a zero tensor that is ``full`` long along ``dim``."""
    shape = list(t.shape)
    shape[dim] = full
    return t.new_zeros(shape).index_copy_(dim, kept.to(t.device), t)


def recover_tensors(tensors: dict[str, torch.Tensor], found: list[Block], plan: Plan) -> dict[str, torch.Tensor]:
    """``inject.adapter_tensors`` of the pruned model, reshaped to the full model's layers.
    ``found``: the blocks of the FULL model; tensors of layers outside ``plan`` pass unchanged."""
    out = dict(tensors)
    for b in found:
        pruned = plan.get(b.name)
        if not pruned:
            continue
        for linear, (group, dim) in LINEARS.items():
            # rows (dim 0) of a layer are rows of B (out, r); columns (dim 1) are columns of A (r, in)
            key = f"{b.path(linear)}.adapter.{'lora_B' if dim == 0 else 'lora_A'}"
            if key not in out:
                continue  # not a LoRA target
            full = b.heads * b.head_dim if group == "heads" else b.channels
            out[key] = recover_factor(out[key], kept_indices(b, linear, pruned[group]), full, dim)
    return out
