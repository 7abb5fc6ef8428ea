"""Expert-usage statistics from the counts a RoutingState records on the dev sets.

For one set of counts (tokens routed to each of E experts, summed gates, summed effective sizes):

    fraction_e  = selected_e / sum_j selected_j          share of the token-slots expert e took
    entropy     = -sum_e f_e log f_e / log E              1 = perfectly balanced, 0 = one expert
    cv          = std_e(f) / mean_e(f)                    0 = balanced (population std)
    weight_e    = summed gate_e / tokens                  mean gate of expert e (sums to 1)
    ess         = mean_t 1 / sum_e g_t,e^2                effective experts per token: k for equal
                                                          gates (ReMix), near 1 when one gate dominates

ReMix's point (arXiv 2603.10160, Sec. 3): learned soft gates collapse, so ``ess`` falls towards 1
even when k > 1 experts are selected.
"""

from __future__ import annotations

import math

import torch


def summarize(selected: torch.Tensor, weight: torch.Tensor, ess: float, tokens: int) -> dict:
    E = selected.numel()
    f = selected / selected.sum().clamp_min(1e-12)
    h = float(-(f * f.clamp_min(1e-12).log()).sum())
    mean = float(f.mean())
    return {"fraction": [round(float(v), 6) for v in f], "entropy": h / math.log(E) if E > 1 else 1.0,
            "cv": float(f.std(unbiased=False)) / mean if mean > 0 else 0.0,
            "weight": [round(float(v), 6) for v in weight / max(tokens, 1)],
            "ess": ess / max(tokens, 1), "tokens": tokens}


def _total(slots: list[dict]) -> dict:
    return summarize(sum(s["selected"] for s in slots), sum(s["weight"] for s in slots),
                     sum(s["ess"] for s in slots), sum(s["tokens"] for s in slots))


def usage_report(usage: dict[str, dict[str, dict]]) -> dict:
    """{overall, per_task: {task: stats}, per_block: {block: stats}} (every block and task pooled)."""
    slots = [s for blocks in usage.values() for s in blocks.values()]
    if not slots:
        return {}
    blocks = sorted({b for per in usage.values() for b in per})
    return {"overall": _total(slots),
            "per_task": {t: _total(list(per.values())) for t, per in usage.items()},
            "per_block": {b: _total([per[b] for per in usage.values() if b in per]) for b in blocks}}
