"""The rules that change learning rates, freeze or rescale: adamw, lora_plus, lora_fa, allora, stable."""

from __future__ import annotations

import torch

from ...errors import check
from .rule import Rule, register_rule

#: Inits that leave A = 0: with A frozen (LoRA-FA) the update s B A would stay 0 for ever.
ZERO_A_INITS = {"swapped"}


@register_rule("adamw")
class AdamW(Rule):
    """AdamW (Loshchilov & Hutter 2019, arXiv 1711.05101) over the variant's own groups."""

    description = "AdamW on the variant's own parameter groups (Loshchilov & Hutter 2019, arXiv 1711.05101)"
    needs = ()


@register_rule("lora_plus")
class LoRAPlus(Rule):
    """LoRA+: Hayou, Ghosh & Yu 2024, arXiv 2402.12354. A steps with lr, B with lr_ratio * lr:
    with equal rates feature learning is inefficient in the infinite-width limit (Sec. 3)."""

    description = "LoRA+: lr of B = lr_ratio x lr of A (Hayou, Ghosh & Yu 2024, arXiv 2402.12354)"
    options = ("lr_ratio",)
    needs = ("B",)

    def param_groups(self, adapter, lr, weight_decay):
        # Both factors decay alike, as PEFT's create_loraplus_optimizer and the paper's code do.
        B = adapter.factors()["B"]
        groups = super().param_groups(adapter, lr, weight_decay)
        for g in groups:
            g["params"] = [p for p in g["params"] if p is not B]
        if B.requires_grad:
            groups.append({"params": [B], "lr": lr * self.opts.lr_ratio, "weight_decay": weight_decay})
        return [g for g in groups if g["params"]]


@register_rule("lora_fa")
class LoRAFA(Rule):
    """LoRA-FA: Zhang, Zhang, Shi, Chu & Li 2023, arXiv 2308.03303. A stays frozen at its
    init (a frozen parameter, out of the optimizer: no gradient, no decay); only B trains."""

    description = "LoRA-FA: A frozen at its init, only B trains (Zhang et al. 2023, arXiv 2308.03303)"
    needs = ("A",)
    frozen = ("A",)

    @classmethod
    def check(cls, variant_cls, opts):
        super().check(variant_cls, opts)
        init = getattr(opts, "init", None)
        check(
            init not in ZERO_A_INITS,
            f"init={init!r} sets A = 0, and LoRA-FA never trains A, so the adapter could not learn; "
            "use init='kaiming' (the default) or 'gaussian'",
        )


def row_coefficients(weight: torch.Tensor, eta: float) -> torch.Tensor:
    """c_i = 1 / sqrt(||w_i||^2 + 1 / eta^2) for every row w_i of ``weight``: (rows, 1)."""
    norm_sq = weight.detach().float().square().sum(dim=1, keepdim=True)  # (rows, 1)
    return torch.rsqrt(norm_sq + 1.0 / eta**2).to(weight.dtype)


@register_rule("allora")
class ALLoRA(Rule):
    """ALLoRA: Huang & Balestriero 2024, arXiv 2410.09692.

        g(w_i) <- g(w_i) / sqrt(||w_i||^2 + 1 / eta^2)   for every row w_i of A and of B

    eta x the gradient at 0 (B leaves its zero init fast), about 1/||w_i|| for large rows.
    The ``allora`` variant (no scale, no dropout) applies the same coefficient in its backward.
    """

    description = "ALLoRA: row gradients / sqrt(||row||^2 + 1/eta^2) (Huang & Balestriero 2024, arXiv 2410.09692)"
    options = ("eta",)

    @torch.no_grad()
    def before_step(self, adapter):
        for p in adapter.factors().values():
            if p.grad is not None:
                p.grad.mul_(row_coefficients(p, self.opts.eta))


@register_rule("stable")
class StableLoRA(Rule):
    """Stable-LoRA: Wu, Gao, Li & Wu 2026, arXiv 2603.05204.

        A <- (1 - shrink_ratio) A   before each early optimizer step,
        until ||A||_F < (numel(A) / numel(B)) ||B||_F; from then on A is never shrunk again

    A non-zero A0 breaks LoRA's self-stabilised feature learning; shrinking it while B grows
    from 0 removes that and keeps the benefit of a non-zero start. The stopping condition and
    the order (shrink, then the AdamW step) follow the official optimizer; shrink_ratio = 5e-4
    is its example's value. The stop is per layer and saved with the adapter (``state_dict``).
    """

    description = "Stable-LoRA: A shrunk by (1-shrink_ratio) per early step until ||A|| < (in/out)||B|| (Wu et al. 2026, arXiv 2603.05204)"
    options = ("shrink_ratio",)

    def __init__(self, opts):
        super().__init__(opts)
        self.shrinking = True

    @torch.no_grad()
    def before_step(self, adapter):
        if not self.shrinking:
            return
        A, B = adapter.factors()["A"], adapter.factors()["B"]
        if A.norm() < (A.numel() / B.numel()) * B.norm():
            self.shrinking = False
            return
        A.mul_(1.0 - self.opts.shrink_ratio)

    def state_dict(self):
        return {"shrinking": torch.tensor(self.shrinking)}

    def load_state_dict(self, state):
        self.shrinking = bool(state["shrinking"])
