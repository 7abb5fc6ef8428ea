"""Concatenation: rank-stack the adapters, ``B = [w1 B1 | w2 B2 | ...]``, ``A = [A1; A2; ...]``.

``B A = sum_t w_t B_t A_t`` exactly: the sum of the adapters' updates (weights 1 by default), at
rank ``sum_t r_t``. PEFT's ``combination_type="cat"`` (huggingface/peft
src/peft/tuners/lora/model.py, ``add_weighted_adapter``); the "concatenation-summation
equivalence" of LoRA-LEGO (Zhao et al. 2024, arXiv 2409.16167).
"""

from __future__ import annotations

from .lowrank import stack
from .registry import Method, register


@register("concat")
class Concat(Method):
    description = "rank-stacking [w1 B1 | w2 B2], [A1; A2]: exactly the (weighted) sum of the updates, rank sum r_t"

    @classmethod
    def rank(cls, ranks, k):
        return sum(ranks)

    @classmethod
    def merge_layer(cls, factors, weights, rank, density, generator):
        return stack(factors, weights)
