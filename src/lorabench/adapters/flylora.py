"""FlyLoRA: a frozen sparse random A routes each token to k of the r rank-1 experts of B."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import Variant, VariantError, check

#: routing -> the score whose top-k experts a token activates (y = A x, d the expert bias)
ROUTINGS = {
    "signed": lambda y, d: y + d,  # the PEFT fork of finetune.py (peft/src/peft/tuners/lora/layer.py:764)
    "abs": lambda y, d: (y + d).abs(),  # the repository's minimal flylora.py
    "abs_bias": lambda y, d: y.abs() + d,  # lorabench before issue 14
}


@dataclass
class FlyLoRAOptions:
    # Official scripts/run_mmlu.sh (gfyddha/FlyLoRA): --lora_r 32 --lora_alpha 64 --top_k 8
    # --bias_u 0.001 --lora_dropout 0.0 --A_type sparse.
    r: int = 32  # rank-1 experts
    alpha: float = 64.0  # s = alpha / r = 2
    k: int = 8  # experts active per token
    density: float | None = None  # nonzeros per row of A / in_features; None = k / r (the paper's p/n = k/r)
    bias_u: float = 1e-3  # load-balancing step u of the expert bias d (0 = no balancing)
    dropout: float = 0.0
    routing: str = "signed"  # signed: top-k(y + d) | abs: top-k(|y + d|) | abs_bias: top-k(|y| + d)
    # When d moves: "forward" = after every training forward pass, from that pass's counts (the fork);
    # "step" = after every optimizer step, from the counts since the last one
    bias_update: str = "forward"

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; FlyLoRA uses r=32")
        check(isinstance(self.k, int) and 1 <= self.k <= self.r,
              f"k (experts per token) must be an integer in 1..r={self.r}, got {self.k!r}; FlyLoRA uses k=8 of r=32")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}; FlyLoRA uses alpha = 2 r")
        check(self.density is None or 0.0 < self.density <= 1.0,
              f"density must be in (0, 1] or None (= k / r), got {self.density!r}")
        check(self.bias_u >= 0, f"bias_u must be >= 0 (0 turns load balancing off), got {self.bias_u!r}; e.g. 1e-3")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(self.routing in ROUTINGS, f"routing must be one of {', '.join(ROUTINGS)}, got {self.routing!r}")
        check(self.bias_update in ("forward", "step"),
              f"bias_update must be 'forward' (the official fork) or 'step', got {self.bias_update!r}")

    def nonzeros(self, in_features: int) -> int:
        """p, the nonzeros in each row of A."""
        density = self.k / self.r if self.density is None else self.density
        return max(1, min(in_features, round(density * in_features)))


@register("flylora")
class FlyLoRA(Variant):
    """FlyLoRA: Boosting Task Decoupling and Parameter Efficiency via Implicit Rank-Wise
    Mixture-of-Experts. Zou, Zang, Xu, Zhu & Ji 2025 (NeurIPS), arXiv 2510.08396.
    Official code: github.com/gfyddha/FlyLoRA; its finetune.py (the paper's runs) uses the bundled
    PEFT fork, peft/src/peft/tuners/lora/layer.py (``Linear.forward``, l. 758-770).

        y = A x  (A frozen, sparse: p nonzeros per row ~ N(0, 1/r^2));  E = top-k_i (y_i + d_i)
        h = W0 x + (alpha / r) B (1_E * y),   B trainable (zero init)
        after each training forward pass: d_i += u sign(mean(c) - c_i),  c_i = tokens routed to i

    That is the fork's routing (``routing="signed"``, the default): the largest y_i + d_i, without an
    absolute value. The repository's minimal flylora.py routes by |y_i + d_i| (``routing="abs"``);
    lorabench before issue 14 by |y_i| + d_i (``routing="abs_bias"``). The fork moves d on every
    forward pass (``bias_update="forward"``, the default; lorabench only in training mode, the fork
    in evaluation too); ``bias_update="step"`` moves it once per optimizer step from the counts since
    the last one (lorabench before issue 14). Under gradient checkpointing a forward recomputed in
    backward routes with the d of its first pass and leaves d alone.

    A is drawn from torch's RNG (seeded by the run) and saved with the adapter. The routing
    depends on the input, so the update cannot be merged into W0 (``mergeable = False``).
    """

    description = ("FlyLoRA: frozen sparse random A routes each token to the top-k of r rank-1 experts of B by "
                   "y + d, d balanced after every forward (the official PEFT fork; routing='abs': |y + d|, "
                   "'abs_bias': |y| + d) (Zou et al. 2025, arXiv 2510.08396)")
    Options = FlyLoRAOptions
    mergeable = False
    running_buffers = ("d",)

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        r, p = opts.r, opts.nonzeros(in_features)
        cols = torch.rand(r, in_features).argsort(dim=1)[:, :p]  # (r, p): p distinct inputs per row
        A = torch.zeros(r, in_features).scatter_(1, cols, torch.randn(r, p) / r)
        self.register_buffer("lora_A", A)  # (r, in), frozen
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))  # (out, r)
        self.register_buffer("d", torch.zeros(r))  # expert bias, moved by on_step, not by gradients
        self.register_buffer("counts", torch.zeros(r), persistent=False)  # c_i since the last step
        self.register_buffer("d_used", torch.zeros(r), persistent=False)  # d of the last training forward
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()

    @property
    def scale(self) -> float:
        return self.opts.alpha / self.opts.r

    def route(self, y: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """Indices of the k experts each token activates: the top-k of the routing score, (..., k)."""
        d = self.d if d is None else d
        return torch.topk(ROUTINGS[self.opts.routing](y, d.to(y.dtype)), self.opts.k, dim=-1).indices

    def delta(self, x):
        y = F.linear(self.dropout(x), self.lora_A.to(x.dtype))  # (..., r)
        recomputed = torch._C._current_graph_task_id() != -1  # a checkpointed forward, rerun in backward
        if self.training and recomputed:
            experts = self.route(y.detach(), self.d_used)  # the routing of its first pass
        else:
            experts = self.route(y.detach())  # (..., k)
        if self.training and not recomputed:
            with torch.no_grad():
                counts = torch.bincount(experts.reshape(-1), minlength=self.opts.r).to(self.counts.dtype)
                self.d_used.copy_(self.d)
                if self.opts.bias_update == "forward":
                    self.balance(counts)
                else:
                    self.counts += counts
        gate = torch.zeros_like(y).scatter_(-1, experts, 1.0)  # (..., r): 1 on the k experts
        return F.linear(y * gate * self.scale, self.lora_B)  # (..., out)

    @torch.no_grad()
    def balance(self, counts: torch.Tensor) -> None:
        """Auxiliary-loss-free load balancing (the paper's Eq. for d): under-used experts gain bias."""
        if self.opts.bias_u > 0 and counts.sum() > 0:
            self.d += self.opts.bias_u * torch.sign(counts.mean() - counts)

    @torch.no_grad()
    def on_step(self, step, total):
        if self.opts.bias_update == "step":
            self.balance(self.counts)
        self.counts.zero_()

    def delta_weight(self):
        raise VariantError(
            "flylora routes every token to its own top-k experts, so its update is no single weight and cannot be "
            "merged; keep the adapter unmerged (lorabench.save_adapter stores it)"
        )

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        return opts.r * out_features  # B only: A is frozen, d moves without gradients

    def peft_tensors(self):
        raise VariantError("flylora's top-k routing has no PEFT equivalent (PEFT's LoRA adds all r components); "
                           "use lorabench.save_adapter")

    peft_config = peft_tensors
