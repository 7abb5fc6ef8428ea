"""LoRAPrune's iterative sparsity schedule (official ``schedule_sparsity_ratio``, loraprune/utils.py).

With t the optimizer steps done, T the total, w_i / w_f the warm-up / cool-down fractions:

    s(t) = s_0                                        t <= w_i T
    s(t) = s_f                                        t >  T - w_f T
    s(t) = s_f + (s_0 - s_f) (1 - (t - w_i T) / (T - (w_i + w_f) T))^3     otherwise (cubic)
"""

from __future__ import annotations


def sparsity_at(step: int, total: int, final: float, initial: float = 0.0, warmup: float = 0.1,
                cooldown: float = 0.1) -> float:
    if step <= warmup * total:
        return initial
    if step > total - cooldown * total:
        return final
    span = total - (warmup + cooldown) * total
    left = 1 - (step - warmup * total) / span
    return final + (initial - final) * left**3
