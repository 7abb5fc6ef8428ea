"""DARE: Drop And REscale, then a linear merge. Yu et al. 2023, "Language Models are Super Mario",
arXiv 2311.03099.

On each layer's updates dW_t = s_t B_t A_t, as PEFT's ``dare_linear`` (huggingface/peft
src/peft/utils/merge_utils.py: ``random_pruning`` with ``rescale=True``, then the weighted sum):

    m_t ~ Bernoulli(density) entrywise;   dW_t' = m_t * dW_t / density    (drop rate p = 1 - density, Eq. 1)
    dW = sum_t w_t dW_t'

The masks are drawn from one torch.Generator seeded with ``--seed``, layer by layer in the adapters'
target order and adapter by adapter within a layer. The merged dW is full rank, so it is
re-factored to rank ``k`` by truncated SVD (default: the largest rank of the inputs, PEFT's
``svd_rank`` default). Default density 0.1 (drop rate p = 0.9, within the range the paper studies;
our choice, tune it with ``--density``); weights 1 (task arithmetic with lambda = 1).
"""

from __future__ import annotations

import torch

from .lowrank import deltas, refactor
from .registry import Method, register


@register("dare")
class DARE(Method):
    description = "DARE: drop dW entries with p = 1 - density, rescale 1/density, weighted sum; SVD to rank k (Yu et al. 2023, arXiv 2311.03099)"
    uses = frozenset({"density", "k", "seed"})
    default_density = 0.1

    @classmethod
    def merge_layer(cls, factors, weights, rank, density, generator):
        merged = 0
        for d, w in zip(deltas(factors), weights):
            mask = torch.bernoulli(torch.full_like(d, density), generator=generator)  # (out, in) of 0 / 1
            merged = merged + w * (mask * d / density)
        return refactor(merged, rank)
