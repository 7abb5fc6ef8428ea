"""Mask the Target: a KL to the base model over the non-target vocabulary.

Xu, Garg, Saratchandran & Lucey 2026, "Mask the Target: A Plug-and-Play Regularizer Against LoRA
Forgetting", arXiv 2605.29498. From its abstract: remove the ground-truth token from both the
base and the adapted model's distributions, renormalise what remains, and apply a KL
regularisation over the non-target vocabulary only, so that the base model's relative preferences
among the other tokens are kept without opposing the cross-entropy on the target.

At each position the loss reads (for ``--head lm``: the label word after the prompt), target y:

    p~(v) = p(v) / (1 - p(y))  for v != y       (= softmax over the logits with y removed)
    L = CE(p, y) + weight * mean_batch KL(p~_base || p~_theta)

Our reading, NOT verified against the paper's text (only its abstract was available): the KL
direction (base first, as in distillation toward the base) and the default weight 1.0 are
assumptions; the paper's Section 3 and Appendix B give the exact form and the tuned weight.

The base is a frozen copy of the causal LM taken before the adapter is applied (exact for every
variant, residual inits and full fine-tuning included), outside the module tree (not trained,
saved or counted), moved to the model's device on first use. It costs a second copy of the model
in memory and one more forward pass (no backward) per training step.

A blown-up model is never hidden by the term. When training blows a decoder up (lr 1e4), its
activations overflow and the final RMSNorm divides them to zero: every next-token logit of a row is the
same, the cross-entropy is exactly log V (10.8 for SmolLM2), below the first step's (21 for a label word
the base finds unlikely), and the KL to the base is KL(p~_base || uniform), about log V again: the loss
looked healthy to the divergence check (``lorabench.divergence``: non-finite, or 100 times the first
step's). A row whose logits are all equal prefers no token to any other, which no trained model does,
so its term is NaN: the loss is not finite and the run stops ``diverged`` at the first step that sees
it, or in the check after the last update.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .registry import register


def masked_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p~: log-softmax over the vocabulary without the target token (its entry -inf). (B, V)"""
    drop = F.one_hot(target, logits.shape[-1]).bool()  # (B, V)
    return F.log_softmax(logits.float().masked_fill(drop, float("-inf")), dim=-1)


def masked_kl(base_logits: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(p~_base || p~) per row, over the non-target vocabulary: (B,)."""
    base, tuned = masked_log_probs(base_logits, target), masked_log_probs(logits, target)
    terms = base.exp() * (base - tuned)  # (B, V); nan at the target (-inf - -inf)
    kl = torch.where(torch.isfinite(base), terms, torch.zeros_like(terms)).sum(-1)
    return torch.where(collapsed(logits), torch.full_like(kl, math.nan), kl)


def collapsed(logits: torch.Tensor) -> torch.Tensor:
    """(B,) True where a row's logits are all equal: a model whose activations overflowed (its final
    norm divided them to zero) says nothing about any token, which no trained model does."""
    rows = logits.detach().float()
    return rows.amax(-1) == rows.amin(-1)


@register("mask_target")
class MaskTarget:
    """weight * mean KL(p~_base || p~_theta) at the loss's positions, the target token masked out."""

    heads = ("lm",)

    @dataclass
    class Options:
        weight: float = 1.0  #: lambda; 1.0 is our default, not the paper's (not verified)

        def __post_init__(self):
            if not (math.isfinite(self.weight) and self.weight >= 0):  # inf: the run diverges at step 1
                raise ConfigError(f"mask_target weight must be >= 0 and finite, got {self.weight}; "
                                  "e.g. mask_target:weight=1")

    def __init__(self, model, opts: "MaskTarget.Options"):
        self.opts = opts
        self.base = copy.deepcopy(model.causal_lm).eval().requires_grad_(False)  # (a plain attribute: no submodule)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, input_ids, attention_mask) -> torch.Tensor:
        from ..heads import label_position_logits

        first = next(self.base.parameters())
        if first.device != input_ids.device:
            self.base.to(input_ids.device)
        with torch.no_grad():
            base_logits = label_position_logits(self.base, input_ids, attention_mask)  # (B, V)
        return self.opts.weight * masked_kl(base_logits, logits, target).mean()
