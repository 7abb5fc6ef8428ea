"""MatryoshkaLoRA: one LoRA whose every prefix rank is a usable adapter, and the rank sweep.

Training puts a fixed diagonal P between B and A, so one forward pass trains the nested
LoRAs of all the ranks in S at once; evaluation uses any prefix rank b (``set_rank``).
``evaluate_ranks`` sweeps b and ``lorabench.metrics.aurac`` summarises the curve.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import VariantError, check
from .lora import RESIDUAL_INITS, LoRAOptions
from .nested_rank import NestedRankLoRA, power_of_two_ranks

#: Rules that read one scalar scale s (``adapter.scale``); P gives every component its own.
_SCALAR_SCALE_RULES = ("lora_pro", "altlora")


def _rank_tuple(value) -> tuple[int, ...] | None:
    """None, a sequence of ints, or "1,2,4" / "[1,2,4]" (a --opt value) -> a sorted tuple."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.strip(" []()").replace(" ", "").split(",") if v]
    ok = lambda v: (isinstance(v, numbers.Integral) and not isinstance(v, bool)) or (isinstance(v, str) and v.isdigit())
    if not all(ok(v) for v in value):
        raise VariantError(f"train_ranks must be positive integers, got {value!r}; "
                           "e.g. train_ranks=[1, 2, 4, 8] (--opt train_ranks=1,2,4,8)")
    return tuple(sorted({int(v) for v in value}))


@dataclass
class MatryoshkaLoRAOptions(LoRAOptions):
    # Official scripts/bash_run.sh (IST-DASLab/MatryoshkaLoRA): RANK=32, --lora_scaling sqrt,
    # i.e. s_b = 1 / sqrt(b) without alpha: alpha = 1 with rsLoRA scaling here.
    r: int = 32
    alpha: float = 1.0
    rslora: bool = True
    # S, the nested ranks trained together; None = 1, 2, 4, ... below r, and r.
    train_ranks: tuple[int, ...] | None = None
    # Evaluation at rank b: False = the paper's plain LoRA s_b B[:, :b] A[:b] (P is a training
    # device); True = B[:, :b] diag(P[:b]) A[:b], so rank r in eval equals the trained function.
    eval_p: bool = False
    # Bound of init="kaiming"'s uniform A: "official" = 1/sqrt(r), the official adapters/lora.py
    # (A stored (in, r), so Kaiming's fan-in is r); "lora" = 1/sqrt(in), LoRA's (A stored (r, in)).
    a_init: str = "official"

    def __post_init__(self):
        super().__post_init__()
        check(self.a_init in ("official", "lora"),
              f"a_init must be 'official' (bound 1/sqrt(r)) or 'lora' (bound 1/sqrt(in)), got {self.a_init!r}")
        self.train_ranks = _rank_tuple(self.train_ranks)
        if self.train_ranks is not None:
            bad = [b for b in self.train_ranks if not 1 <= b <= self.r]
            check(not bad, f"train_ranks {bad} are outside 1..r={self.r}; keep every rank in 1..{self.r}")
            check(
                self.train_ranks[-1] == self.r,
                f"train_ranks {list(self.train_ranks)} stop below r={self.r}: components beyond "
                f"{self.train_ranks[-1]} would get P = 0 and never train; add {self.r} (or lower r)",
            )
        check(
            self.init not in RESIDUAL_INITS,
            f"init={self.init!r} moves a fixed rank-r part of W into the adapter, which evaluating at a "
            "smaller rank cannot undo; use init='kaiming' (the paper's) or 'gaussian'",
        )
        check(
            self.optimizer not in _SCALAR_SCALE_RULES,
            f"optimizer={self.optimizer!r} assumes one scale s for all components, but MatryoshkaLoRA "
            "scales each by P_i; use optimizer='adamw', 'lora_plus' or 'lora_fa'",
        )

    @property
    def ranks(self) -> tuple[int, ...]:
        return self.train_ranks or power_of_two_ranks(self.r)


@register("matryoshka_lora")
class MatryoshkaLoRA(NestedRankLoRA):
    """MatryoshkaLoRA: Learning Accurate Hierarchical Low-Rank Representations for LLM
    Fine-Tuning. Modoranu, Safaryan & Alistarh 2026, arXiv 2605.07850.

        train: h = W0 x + B diag(P) A x,  P_i = sum_{b in S, b > i} s_b   (Algorithm 1)
               = W0 x + sum_{b in S} s_b B[:, :b] A[:b] x   (every nested LoRA in one pass)
        eval:  h = W0 x + s_b B[:, :b] A[:b] x  at the rank set with set_rank(b) (default r)

    s_b = alpha / sqrt(b) (rsLoRA, the official default) or alpha / b. P is fixed, not trained.

    Official code: github.com/IST-DASLab/MatryoshkaLoRA, adapters/matryoshka.py (P, Algorithm 1)
    on adapters/lora.py. Its A is stored (in, r) and initialised by kaiming_uniform_(a=sqrt(5)),
    whose fan-in is then r: A ~ U(-1/sqrt(r), 1/sqrt(r)) (``a_init="official"``, the default;
    0.177 for r = 32). ``a_init="lora"`` keeps LoRA's U(-1/sqrt(in), 1/sqrt(in)) of an (r, in) A
    (0.036 for in = 768: lorabench's matryoshka_lora before issue 14). B = 0 either way.
    """

    description = ("MatryoshkaLoRA: fixed diagonal P trains every prefix rank at once, evaluate at any rank; "
                   "A ~ U(+-1/sqrt(r)) as the official code (a_init='lora': LoRA's 1/sqrt(in)) "
                   "(Modoranu et al. 2026, arXiv 2605.07850)")
    Options = MatryoshkaLoRAOptions

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        self.register_buffer("P", self.p_diagonal(opts), persistent=False)  # (r,), from the options

    @classmethod
    def p_diagonal(cls, opts) -> torch.Tensor:
        """P_i = sum of s_b over the train ranks b that contain component i (b > i, 0-based)."""
        P = torch.zeros(opts.r)
        for b in opts.ranks:
            P[:b] += cls.scale_of(opts, b)
        return P

    @torch.no_grad()
    def init_from_base(self, weight):
        super().init_from_base(weight)
        if self.opts.init == "kaiming" and self.opts.a_init == "official":
            # the official draw: Kaiming-uniform on the (in, r) layout, i.e. fan-in r
            A = nn.init.kaiming_uniform_(torch.empty(self.in_features, self.opts.r), a=math.sqrt(5))
            self.lora_A.copy_(A.T)

    # ---- rank selection (set_rank: NestedRankLoRA) ----------------------------------------
    @property
    def scale(self) -> float:
        return self.scale_of(self.opts, int(self.eval_rank))

    def weights_at(self, b: int) -> torch.Tensor:
        """Per-component scales of the rank-b adapter, (b,)."""
        if self.opts.eval_p:
            return self.P[:b].to(self.lora_A.dtype)
        return torch.full((b,), self.scale_of(self.opts, b), dtype=self.lora_A.dtype, device=self.lora_A.device)

    # ---- compute -------------------------------------------------------------------------
    def delta(self, x):
        if self.training:
            z = F.linear(self.dropout(x), self.lora_A)  # (..., r)
            return F.linear(z * self.P.to(z.dtype), self.lora_B)  # (..., out)
        b = int(self.eval_rank)
        z = F.linear(self.dropout(x), self.lora_A[:b])  # (..., b)
        return F.linear(z * self.weights_at(b), self.lora_B[:, :b])  # (..., out)

    def delta_at(self, b: int) -> torch.Tensor:
        return (self.lora_B[:, :b] * self.weights_at(b)) @ self.lora_A[:b]  # (out, in)

    # ---- PEFT export: a plain rank-b LoRA, the scales folded into B ---------------------
    def lowrank_factors(self):
        b = int(self.eval_rank)
        return self.lora_B[:, :b] * self.weights_at(b), self.lora_A[:b]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eval_rank={int(self.eval_rank)}"
