"""ALLoRA: LoRA without dropout or scaling factor, whose gradients shrink as its rows grow."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .registry import register
from .base import check
from .lora import INITS, LoRA
from .rules import row_coefficients  # the coefficient of the ``allora`` rule


@dataclass
class ALLoRAOptions:
    r: int = 8
    # 1 / eta bounds the coefficient: a row at 0 (all of B at init) gets eta times its
    # gradient, a large row about 1 / ||row||. eta = 2 as in public ALLoRA implementations;
    # tune it with the learning rate.
    eta: float = 2.0
    init: str = "kaiming"  # LoRA's: A random, B = 0
    svd_niter: int = 0  # only for SVD-based inits

    # ALLoRA drops both hyperparameters (Sec. 4): they are constants, not options.
    alpha = None
    dropout = 0.0
    rslora = False

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=8")
        check(self.eta > 0, f"eta must be > 0, got {self.eta!r}; e.g. eta=2")
        check(self.init in INITS, f"unknown init {self.init!r}; choose one of: {', '.join(sorted(INITS))}")
        check(self.svd_niter >= 0, f"svd_niter must be >= 0 (0 = exact SVD), got {self.svd_niter!r}")


class _ScaleRowGrads(torch.autograd.Function):
    """Identity forward; the backward multiplies row i of the incoming gradient by c_i."""

    @staticmethod
    def forward(ctx, weight, coef):
        ctx.save_for_backward(coef)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        (coef,) = ctx.saved_tensors
        return grad * coef, None


@register("allora")
class ALLoRA(LoRA):
    """ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws.
    Huang & Balestriero 2024, arXiv 2410.09692.

        h = W0 x + B A x  (no dropout, no scaling factor);
        g(w_i) <- g(w_i) / sqrt(||w_i||^2 + 1 / eta^2)   for every row w_i of A (r, in) and B (out, r)

    The coefficient is inversely proportional to the row's l2 norm once it is large, and
    eta at 0, so B leaves its zero init quickly (the slow start the paper blames on B = 0
    and dropout) while large rows take small steps, which replaces the scaling factor's
    role across layers. It depends only on the parameters, so scaling each sample's
    gradient (the paper's wording) and scaling the batch gradient are the same thing.

    Implemented on the gradients (an autograd function in ``delta``), as the paper states
    it: with SGD this is exactly a per-row learning rate; Adam(W) normalises each
    coordinate's gradient scale, so there only the change of the coefficient over time acts.
    The same scaling for any LoRA-family structure is the ``allora`` rule
    (``apply(model, "dora", optimizer="allora")``), which scales ``.grad`` in ``before_step``;
    this variant has the rule built in and takes no ``optimizer`` option.
    """

    description = "ALLoRA: LoRA w/o dropout and scale, row grads scaled by 1/sqrt(||row||^2+1/eta^2) (Huang & Balestriero 2024, arXiv 2410.09692)"
    Options = ALLoRAOptions

    @property
    def scale(self) -> float:
        return 1.0

    def scaled_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as used in forward: identical values, row-rescaled gradients."""
        A, B = self.lora_A, self.lora_B
        if torch.is_grad_enabled():
            eta = self.opts.eta
            if A.requires_grad:
                A = _ScaleRowGrads.apply(A, row_coefficients(A, eta))
            if B.requires_grad:
                B = _ScaleRowGrads.apply(B, row_coefficients(B, eta))
        return A, B

    def pack_factors(self):
        A, B = self.scaled_factors()
        return A, B, 1.0

    def delta(self, x):
        A, B = self.scaled_factors()
        return F.linear(F.linear(x, A), B)  # (..., r) -> (..., out)
