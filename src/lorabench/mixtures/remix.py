"""ReMix: equal, non-learnable weights on k routed LoRAs; the router trained by RLOO.

Qiu et al. 2026, "ReMix: Reinforcement Routing for Mixtures of LoRAs in LLM Finetuning",
arXiv 2603.10160 (ICLR 2026). No official code was found (the paper's pages list none), so this
follows the paper's text; choices it left open here are ours and said so.

Per block, the router is a policy over subsets: pi(. | x_t) = softmax(W_r x_t) over E experts.

    training:  S_t ~ k draws without replacement from pi (Gumbel top-k, i.e. Plackett-Luce)
    inference: S_t = top-k(W_r x_t)                           (deterministic, as the paper does)
    gates:     g_t,e = 1/k for e in S_t, else 0               (never learned: no expert dominates)

The gates carry no gradient, so W_r learns from the RLOO estimator (Kool et al. 2019): draw M
selections S^(1..M) for the same example (every token, every block), reward R_m = -loss_m, and

    grad J ~= 1/M sum_m (R_m - 1/(M-1) sum_{j != m} R_j) grad log pi(S^(m))

with log pi(S) the sum over tokens and blocks of the ordered draw's log-probability
log pi(s_1..s_k) = sum_i [log p_{s_i} - log(1 - sum_{j<i} p_{s_j})]. The experts (and heads) train
on the mean task loss of the M draws. Defaults k = 2, M = 4 are ours for small runs (the paper's
own table was not readable here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .registry import Router, RouterOptions, register, top_k_mask


@dataclass
class ReMixOptions(RouterOptions):
    k: int = 2
    samples: int = 4  # M selections drawn per example for the RLOO estimate

    def check(self, experts: int) -> None:
        super().check(experts)
        if self.k == experts:
            raise ConfigError(f"ReMix with k={self.k} of {experts} experts always selects every expert, so its "
                              f"router has nothing to learn; use --k < {experts} or more --experts")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 2:
            raise ConfigError(f"samples must be an integer >= 2 (RLOO leaves one of them out), got {self.samples!r}")


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """``(M, ...)`` rewards -> R_m minus the mean of the other M-1 rewards, per position."""
    m = rewards.shape[0]
    others = (rewards.sum(0, keepdim=True) - rewards) / (m - 1)
    return rewards - others


def ordered_log_prob(log_p: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """log pi(s_1..s_k) of drawing ``chosen (..., k)`` in order without replacement from
    ``exp(log_p) (..., E)``: sum_i [log p_{s_i} - log(1 - sum_{j<i} p_{s_j})]."""
    picked = log_p.gather(-1, chosen)  # (..., k)
    before = torch.cumsum(picked.exp(), -1) - picked.exp()  # (..., k) mass drawn before step i
    return (picked - torch.log1p(-before.clamp(max=1 - 1e-6))).sum(-1)


@register("remix")
class ReMixRouter(Router):
    description = ("ReMix: k experts with fixed weights 1/k, router trained by RLOO on the task loss "
                   "(Qiu et al. 2026, arXiv 2603.10160)")
    Options = ReMixOptions

    def route(self, x, mask):
        k = self.opts.k
        log_p = torch.log_softmax(self.W_r(x).float(), dim=-1)  # (..., E)
        if self.training:
            gumbel = -torch.log(-torch.log(torch.rand_like(log_p).clamp(1e-10, 1 - 1e-10)))
            chosen = (log_p.detach() + gumbel).topk(k, dim=-1).indices  # (..., k) ordered draw
            lp = ordered_log_prob(log_p, chosen)  # (...,)
            if mask is not None:
                lp = lp * mask.to(lp.dtype)
            self.last_log_prob = lp.reshape(lp.shape[0], -1).sum(-1)  # (B,) per example
            gates = torch.zeros_like(log_p).scatter_(-1, chosen, 1.0)
        else:
            gates = top_k_mask(log_p, k)
        return gates / k  # exactly 1/k on the k chosen experts

    @classmethod
    def objective(cls, model, task, batch, opts):
        m = opts.samples
        repeated = {key: v.repeat(m, *[1] * (v.dim() - 1)) for key, v in batch.items()}  # (M*B, ...)
        losses = model(task, **repeated, reduction="none").loss.reshape(m, -1)  # (M, B)
        log_prob = torch.stack([r.last_log_prob for r in model.routers.values()]).sum(0).reshape(m, -1)  # (M, B)
        advantage = rloo_advantages(-losses.detach())  # (M, B)
        policy = -(advantage * log_prob).mean()  # its gradient is minus the RLOO estimate
        return losses.mean() + (policy - policy.detach())  # value: the task loss; gradient: both
