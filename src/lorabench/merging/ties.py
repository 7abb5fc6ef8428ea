"""TIES-Merging: trim, elect sign, disjoint merge. Yadav et al. 2023, arXiv 2306.01708.

On each layer's updates dW_t = s_t B_t A_t (the task vectors), as PEFT's ``ties``
(huggingface/peft src/peft/utils/merge_utils.py: ``magnitude_based_pruning``,
``calculate_majority_sign_mask`` with "total", ``disjoint_merge``):

    trim:   keep the top ``density`` fraction of |dW_t| entries of each adapter, zero the rest  (step 1)
    elect:  gamma = sign(sum_t w_t dW_t^trim)  (the sign with the larger total mass; 0 -> +)      (step 2)
    merge:  dW[i] = sum over t with sign(w_t dW_t^trim[i]) == gamma[i] of w_t dW_t^trim[i] / their count  (step 3)

The merged dW is full rank, so it is re-factored to rank ``k`` by truncated SVD (``--k``; default
the largest rank of the inputs, PEFT's ``svd_rank`` default). Default density 0.2: the paper's
default k = 20%; weights 1 (its lambda = 1).
"""

from __future__ import annotations

import torch

from .lowrank import deltas, refactor
from .registry import Method, register


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with all but its ``round(density * numel)`` largest-magnitude entries set to 0."""
    keep = max(1, round(density * delta.numel()))
    flat = delta.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.abs().topk(keep).indices] = True
    return (flat * mask).view_as(delta)


@register("ties")
class TIES(Method):
    description = "TIES: trim to top-density |dW|, elect sign, disjoint mean; SVD to rank k (Yadav et al. 2023, arXiv 2306.01708)"
    uses = frozenset({"density", "k"})
    default_density = 0.2

    @classmethod
    def merge_layer(cls, factors, weights, rank, density, generator):
        w = torch.tensor(weights)[:, None, None]
        trimmed = torch.stack([trim(d, density) for d in deltas(factors)]) * w  # (N, out, in)
        sign = torch.sign(trimmed.sum(dim=0))
        sign[sign == 0] = 1
        agree = torch.sign(trimmed) == sign  # zeros never agree
        merged = (trimmed * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)
        return refactor(merged, rank)
