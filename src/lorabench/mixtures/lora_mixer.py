"""LoRA-Mixer's router: hard-soft top-k gates and the Routing Specialization Loss (RSL).

Li, Song, Zhou, Zhang, Yu & Yang 2025, "LoRA-Mixer: Coordinate Modular LoRA Experts Through
Serial Attention Routing", arXiv 2507.00029 (ICLR 2026). Official code: github.com/hustcselwb/LoRA-Mixer
-- its only file at the snapshot read here is README.md ("code to be released"), so nothing below
is taken from it; the rules follow the paper's abstract and the wording of its method, and where
the text left a detail open the choice is ours and said so.

Per block, with p_t = softmax(W_r x_t) over the E experts of token t:

    S_t = top-k(p_t)                         hard: which experts act on the token
    g_t,e = p_t,e / sum_{j in S_t} p_t,j     for e in S_t, else 0   (the forward value)
    dL/dp_t = dL/dg_t                        soft: the backward pass sees the whole softmax
                                             (straight-through), so W_r learns even at k = 1
    h = W x + sum_e g_t,e * s * B_e A_e x    on q, k, v and o of the block (serial routing: the
                                             gates made at the attention input route the whole
                                             attention, through to its output projection)

RSL, "global load balance and input-aware specialization via an entropy-shaping objective", here
as the negative mutual information between token and expert (our reading; the weight is ours):

    L_RSL = lambda * ( mean_t H(p_t) - H(mean_t p_t) )

The first term sharpens each token's choice (specialization), the second spreads the batch over
all experts (balance). Both regimes of the paper run through this router: joint training of
experts and router, and frozen pre-trained experts (``--experts-from``) with only W_r trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .registry import Router, RouterOptions, register, top_k_mask


@dataclass
class LoRAMixerOptions(RouterOptions):
    k: int = 2
    rsl_weight: float = 0.01  # lambda of L_RSL (our default; 0 turns RSL off)

    def check(self, experts: int) -> None:
        super().check(experts)
        if not self.rsl_weight >= 0:
            raise ConfigError(f"rsl_weight must be >= 0 (0 = no RSL), got {self.rsl_weight!r}")


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_e p_e log p_e over the last dim (0 log 0 = 0)."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def rsl(p: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """mean_t H(p_t) - H(mean_t p_t) over the real tokens (``mask``) of ``p (..., E)``."""
    flat = p.reshape(-1, p.shape[-1])  # (N, E)
    w = torch.ones(flat.shape[0], device=p.device) if mask is None else mask.reshape(-1).to(p.dtype)  # (N,)
    n = w.sum().clamp_min(1.0)
    mean_entropy = (entropy(flat) * w).sum() / n
    p_bar = (flat * w[:, None]).sum(0) / n  # (E,)
    return mean_entropy - entropy(p_bar)


@register("lora_mixer")
class LoRAMixerRouter(Router):
    description = ("LoRA-Mixer: hard-soft top-k gates from the attention input route q,k,v,o; RSL loss "
                   "(Li et al. 2025, arXiv 2507.00029)")
    Options = LoRAMixerOptions

    def route(self, x, mask):
        p = torch.softmax(self.W_r(x).float(), dim=-1)  # (..., E)
        kept = p.detach() * top_k_mask(p.detach(), self.opts.k)  # (..., E) hard selection
        hard = kept / kept.sum(-1, keepdim=True)
        self.last = (p, mask)
        return hard + (p - p.detach())  # value: the hard-soft gates exactly; gradient: p's

    def aux_loss(self):
        if not self.training or self.opts.rsl_weight == 0 or getattr(self, "last", None) is None:
            return None
        p, mask = self.last
        return self.opts.rsl_weight * rsl(p, mask)
