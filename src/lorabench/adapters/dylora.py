"""DyLoRA: one LoRA trained at every rank 1..r at once, evaluated at any of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .registry import register
from .base import check
from .lora import RESIDUAL_INITS, LoRAOptions
from .nested_rank import NestedRankLoRA

_MASK64 = (1 << 64) - 1


def sample_rank(seed: int, step: int, r: int) -> int:
    """b ~ Uniform{1..r} for optimizer step ``step``: a pure function of (seed, step).

    Every layer holds the same seed (torch's initial seed at ``apply``), so all layers
    draw the same b for a step without talking to each other, a resumed run draws the
    same b again, and the global RNG stream (dropout, data order) is left untouched.
    The hash is splitmix64 (Steele et al. 2014), whose outputs for consecutive states
    are statistically independent.
    """
    z = (seed + (step + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return 1 + z % r


@dataclass
class DyLoRAOptions(LoRAOptions):
    # The official GLUE scripts (huawei-noah/Efficient-NLP, DyLoRA/examples/NLU) train
    # RoBERTa with lora_r = 8 and lora_alpha = 16: scale alpha / b at rank b.
    alpha: float = 16.0
    # The paper's "frozen" update, used by the official run_glue.py (set_rank(b, frozen=True)):
    # at a step with rank b only row b of A and column b of B get gradients; rows/columns
    # 1..b-1 are detached (an optimizer may still move them through momentum or decay).
    frozen: bool = True

    def __post_init__(self):
        super().__post_init__()
        check(
            self.init not in RESIDUAL_INITS,
            f"init={self.init!r} moves a fixed rank-r part of W into the adapter, which DyLoRA's "
            "changing rank cannot undo; use init='kaiming' (the paper's) or 'gaussian'",
        )


@register("dylora")
class DyLoRA(NestedRankLoRA):
    """DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using Dynamic Search-Free
    Low-Rank Adaptation. Valipour, Rezagholizadeh, Kobyzev & Ghodsi 2022, arXiv 2210.07558.

        train: b ~ U{1..r} per step;  h = W0 x + (alpha / b) B[:, :b] A[:b] x
        eval:  the same at the rank chosen with set_rank(b) (default r)

    With ``frozen`` (the paper's default) only component b learns at a step with rank b.
    """

    description = "DyLoRA: LoRA trained at a random rank b <= r each step, usable at any rank (Valipour et al. 2022, arXiv 2210.07558)"
    Options = DyLoRAOptions

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        self.seed = torch.initial_seed()
        self.train_rank = sample_rank(self.seed, 0, opts.r)  # rank of the first step

    # ---- rank schedule -----------------------------------------------------------------
    def on_step(self, step, total):
        self.train_rank = sample_rank(self.seed, step, self.opts.r)  # rank of the next step

    def active_rank(self) -> int:
        return self.train_rank if self.training else int(self.eval_rank)

    @property
    def scale(self) -> float:
        return self.scale_of(self.opts, self.active_rank())

    # ---- compute -----------------------------------------------------------------------
    def delta(self, x):
        b = self.active_rank()
        A, B = self.lora_A[:b], self.lora_B[:, :b]  # (b, in), (out, b)
        if self.training and self.opts.frozen and b > 1:
            A = torch.cat([A[: b - 1].detach(), A[b - 1 :]], dim=0)
            B = torch.cat([B[:, : b - 1].detach(), B[:, b - 1 :]], dim=1)
        z = F.linear(self.dropout(x), A)  # (..., b)
        return F.linear(z * self.scale_of(self.opts, b), B)  # (..., out)

    def delta_at(self, b: int) -> torch.Tensor:
        return self.scale_of(self.opts, b) * (self.lora_B[:, :b] @ self.lora_A[:b])  # (out, in)

    # ---- PEFT export: a plain rank-b LoRA, scale folded into B --------------------------
    def lowrank_factors(self):
        b = int(self.eval_rank)
        return self.scale_of(self.opts, b) * self.lora_B[:, :b], self.lora_A[:b]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eval_rank={int(self.eval_rank)}, train_rank={self.train_rank}"
