"""Linear merging: the weighted sum of the adapters' updates, kept exact in LoRA form.

Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic", arXiv 2212.04089)
and model averaging add the task vectors; for LoRA adapters the task vector of a layer is
dW_t = s_t B_t A_t, and ``sum_t w_t dW_t`` is stored as the rank-stacked factors
``[w1 B1 | w2 B2 | ...]``, ``[A1; A2; ...]`` (rank ``sum_t r_t``), which equals it exactly.
We do NOT sum the factors at rank r (PEFT's ``combination_type="linear"`` in
huggingface/peft src/peft/tuners/lora/model.py, ``add_weighted_adapter``, adds
sqrt(w) B_t and sqrt(w) A_t, whose product has cross terms B_i A_j and is not the weighted sum).

Default weights 1/N: the average of the adapters' updates (``concat`` is the same math with
weights 1, their sum).
"""

from __future__ import annotations

from .concat import Concat
from .registry import register


@register("linear")
class Linear(Concat):
    """``concat``'s rank-stacking with default weights 1/N."""

    description = "weighted sum of the updates, sum_t w_t s_t B_t A_t (default w_t = 1/N, the mean), exact rank-stacked"

    @classmethod
    def default_weights(cls, n):
        return [1.0 / n] * n
