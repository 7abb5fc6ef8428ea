"""Masks of heads and FFN channels applied during training (LoRAPrune), by forward hooks.

Each mask multiplies the OUTPUT of the layers in ``structure.MASKED`` (query, key, value: a head's
``head_dim`` rows; intermediate.dense: one channel), base and LoRA update together, as the official
``lora_mask`` does (loraprune/lora.py: ``result *= self.lora_mask``). A masked head's values are 0,
so its context is 0 whatever its attention; a masked channel's GELU(0) = 0: the block's output is
that of the block with those groups removed.
"""

from __future__ import annotations

import torch
from torch import nn

from .structure import LINEARS, MASKED, Block

#: {block name: {"heads": [pruned head indices], "channels": [pruned channel indices]}}
Plan = dict[str, dict[str, list[int]]]


class Masks:
    """One 0/1 mask per block and group (1 = kept), applied by hooks until ``remove_hooks``."""

    def __init__(self, model: nn.Module, pruned_blocks: list[Block]):
        self.blocks = pruned_blocks
        self.keep = {b.name: {"heads": torch.ones(b.heads), "channels": torch.ones(b.channels)} for b in pruned_blocks}
        self.handles = []
        for b in pruned_blocks:
            for linear in MASKED:
                group = LINEARS[linear][0]
                hook = self._hook(b.name, group, b.group_size(linear))
                self.handles.append(model.get_submodule(b.path(linear)).register_forward_hook(hook))

    def _hook(self, block: str, group: str, size: int):
        def mask_output(module, inputs, output):
            m = self.keep[block][group].repeat_interleave(size)  # (out,)
            return output * m.to(device=output.device, dtype=output.dtype)

        return mask_output

    def set(self, block: str, group: str, pruned: list[int]) -> None:
        keep = torch.ones_like(self.keep[block][group])
        keep[list(pruned)] = 0.0
        self.keep[block][group] = keep

    def plan(self) -> Plan:
        """The pruned indices of every block and group."""
        return {name: {g: torch.nonzero(m == 0).flatten().tolist() for g, m in groups.items()}
                for name, groups in self.keep.items()}

    def remove_hooks(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
