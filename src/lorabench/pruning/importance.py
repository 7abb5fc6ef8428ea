"""LoRAPrune's LoRA-guided importance of heads and channels (Zhang et al. 2023, arXiv 2305.18403).

The gradient of a frozen weight W is never computed: with the adapted weight W + s B A, the
paper estimates it from the LoRA factors and THEIR gradients, and scores every weight by

    G = dL/dB A + B dL/dA - dL/dB dL/dA          (the LoRA-guided gradient estimate)
    I = | G ⊙ (W + s B A) |                      (per weight, (out, in))

as the official ``compute_sensitivity`` does (loraprune/utils.py, prune_metric='lora'; there the
scale s multiplies only B A). A group's score is the sum of I over its rows (query, key, value,
intermediate) or columns (attention.output, output.dense), each layer's group scores divided by
their L2 norm, summed over the layers of the group (``update_sensitivity_dict``), and smoothed by
a moving average  Ī_t = λ Ī_{t-1} + (1 - λ) I_t,  λ = 0.9, from Ī_0 = 0 (same file).
"""

from __future__ import annotations

import torch
from torch import nn

from .structure import LINEARS, Block


def lora_importance(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, grad_A: torch.Tensor, grad_B: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """I = |(dL/dB A + B dL/dA - dL/dB dL/dA) ⊙ (W + s B A)|, (out, in); W (out, in), A (r, in), B (out, r)."""
    G = grad_B @ A + B @ grad_A - grad_B @ grad_A  # (out, in)
    return (G * (W + scale * (B @ A))).abs()


def group_scores(I: torch.Tensor, dim: int, size: int, normalize: bool = True) -> torch.Tensor:
    """Sum of ``I`` over each group of ``size`` rows (dim 0) or columns (dim 1); divided by its L2 norm."""
    per = I if dim == 0 else I.t()  # (groups * size, other)
    s = per.reshape(per.shape[0] // size, -1).sum(1)  # (groups,)
    return s / (torch.linalg.norm(s) + 1e-8) if normalize else s


@torch.no_grad()
def layer_importance(layer: nn.Module) -> torch.Tensor | None:
    """I of one adapted layer (``AdaptedLinear`` with a LoRA adapter), or None before it has gradients."""
    a = layer.adapter
    if a.lora_A.grad is None or a.lora_B.grad is None:
        return None
    return lora_importance(layer.weight.float(), a.lora_A.float(), a.lora_B.float(), a.lora_A.grad.float(),
                           a.lora_B.grad.float(), a.scale)


class Importance:
    """The moving average Ī of each pruned block's head and channel scores."""

    def __init__(self, pruned_blocks: list[Block], ema: float = 0.9):
        self.blocks = pruned_blocks
        self.ema = ema
        self.scores = {b.name: {"heads": torch.zeros(b.heads), "channels": torch.zeros(b.channels)}
                       for b in pruned_blocks}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> bool:
        """Ī <- λ Ī + (1 - λ) I from the current gradients; False (no change) when some layer has no
        gradient or a score is NaN (the official code skips that step too)."""
        new = {}
        for b in self.blocks:
            sums = {"heads": torch.zeros(b.heads), "channels": torch.zeros(b.channels)}
            for linear, (group, dim) in LINEARS.items():
                layer = model.get_submodule(b.path(linear))
                if not hasattr(layer, "adapter"):
                    continue  # not a LoRA target: no LoRA-guided score (the official code scores its targets only)
                I = layer_importance(layer)
                if I is None:
                    return False
                sums[group] += group_scores(I, dim, b.group_size(linear)).cpu()
            if any(torch.isnan(s).any() for s in sums.values()):
                return False
            new[b.name] = sums
        for name, groups in new.items():
            for g, s in groups.items():
                self.scores[name][g] = self.ema * self.scores[name][g] + (1 - self.ema) * s
        self.updates += 1
        return True
