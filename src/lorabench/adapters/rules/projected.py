"""LoRA-Pro, and the projections it shares with AltLoRA (``altlora.py``).

Both see G = dL/dW only through the LoRA gradients g_A = s B^T G (r, in) and g_B = s G A^T
(out, r), and solve r x r systems in fp32 (fp64 for fp64 factors) with a small ridge on
A A^T and B^T B, which are singular at a zero init.
"""

from __future__ import annotations

import torch

from ...errors import check
from .rule import Rule, register_rule


def gram(M: torch.Tensor, ridge: float, rows: bool) -> torch.Tensor:
    """M M^T (rows) or M^T M, plus ridge * I: (r, r)."""
    G = M @ M.T if rows else M.T @ M
    return G + ridge * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def project_A(g_A: torch.Tensor, B: torch.Tensor, s: float, ridge: float) -> torch.Tensor:
    """(B^T B)^-1 g_A / s^2, (r, in): for g_A = s B^T G the X minimising ||s B X - G||_F."""
    return torch.linalg.solve(gram(B, ridge, rows=False), g_A) / s**2


def project_B(g_B: torch.Tensor, A: torch.Tensor, s: float, ridge: float) -> torch.Tensor:
    """g_B (A A^T)^-1 / s^2, (out, r): for g_B = s G A^T the Y minimising ||s Y A - G||_F."""
    return torch.linalg.solve(gram(A, ridge, rows=True), g_B.T).T / s**2


def solve_sylvester(P: torch.Tensor, Q: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """X with P X + X Q = C for symmetric positive definite P, Q (r x r): in the eigenbases
    P = U diag(p) U^T, Q = V diag(q) V^T the equation is elementwise, X' = C' / (p_i + q_j)."""
    p, U = torch.linalg.eigh(P)
    q, V = torch.linalg.eigh(Q)
    return U @ ((U.T @ C @ V) / (p[:, None] + q[None, :])) @ V.T


def _pro_parts(A, B, g_A, g_B, s, ridge):
    """(B^T B)^-1 g_A / s^2 and (I - P_B) g_B (A A^T)^-1 / s^2, the gram matrices; compute dtype."""
    BtB, AAt = gram(B, ridge, rows=False), gram(A, ridge, rows=True)
    gA = project_A(g_A, B, s, ridge)  # (r, in)
    gB = project_B(g_B, A, s, ridge)  # (out, r)
    gB = gB - B @ torch.linalg.solve(BtB, B.T @ gB)  # (I - B (B^T B)^-1 B^T) g_B (A A^T)^-1 / s^2
    return gA, gB, BtB, AAt


def lora_pro_gradients(A, B, g_A, g_B, s: float, ridge: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-Pro's adjusted (g_A', g_B'), in the compute dtype (Theorems 2 and 3 of the paper).

    s (B g_A' + g_B' A) = P_B G + (I - P_B) G P_A is the projection of G onto {s (B X + Y A)};
    the Sylvester solution X (which cancels in that sum) keeps g_A', g_B' closest to g_A, g_B.
    """
    dt = compute_dtype(A)
    A, B, g_A, g_B = (t.detach().to(dt) for t in (A, B, g_A, g_B))
    gA, gB, BtB, AAt = _pro_parts(A, B, g_A, g_B, s, ridge)
    X = solve_sylvester(BtB, AAt, -gA @ A.T)  # (r, r): B^T B X + X A A^T = -(B^T B)^-1 g_A A^T / s^2
    return gA + X @ A, gB - B @ X


def equivalent_gradient(A, B, g_A, g_B, s: float, ridge: float = 1e-8) -> torch.Tensor:
    """s (B g_A' + g_B' A), (out, in): the full-weight gradient LoRA-Pro's adjusted factors stand for,
    the projection P_B G + (I - P_B) G P_A of G onto the rank-r tangent space (X cancels)."""
    dt = compute_dtype(A)
    A, B, g_A, g_B = (t.detach().to(dt) for t in (A, B, g_A, g_B))
    gA, gB, _, _ = _pro_parts(A, B, g_A, g_B, s, ridge)
    return s * (B @ gA + gB @ A)


class FullProduct(Rule):
    """Rules that reason about the whole update s B A: a rank that changes per step breaks them."""

    @classmethod
    def check(cls, variant_cls, opts):
        super().check(variant_cls, opts)
        check(
            not hasattr(variant_cls, "set_rank"),  # DyLoRA: a random rank b <= r each step
            f"optimizer={cls.name!r} works on the full rank-r product s B A, but variant {variant_cls.name!r} trains "
            "a different rank each step; use optimizer='adamw' or 'lora_plus' with it, or variant='lora'",
        )

    def defer(self, adapter) -> bool:
        """The start of ``before_step``: True when there is nothing to do now (no gradients yet), or
        when the rule's own ``step`` moves the factors (``steps_itself``: marked pending for it)."""
        factors = adapter.factors()
        if factors["A"].grad is None or factors["B"].grad is None:
            return True
        if self.steps_itself:
            self.pending(adapter)  # the update happens in step(), inside optimizer.step()
            return True
        return False


@register_rule("lora_pro")
class LoRAPro(FullProduct):
    """LoRA-Pro: Are Low-Rank Adapters Properly Optimized? Wang, Liang, He, Wang & Tan 2024 (ICLR 2025),
    arXiv 2407.18242. Official code: github.com/mrflogs/LoRA-Pro, the Adam step built into DeepSpeed,
    DeepSpeed-0.15.1/deepspeed/runtime/zero/stage_1_and_2.py (``lorapro_full_adjustment``, ~l. 1828-1895).

        g_A' = (B^T B)^-1 g_A / s^2 + X A,   g_B' = (I - B (B^T B)^-1 B^T) g_B (A A^T)^-1 / s^2 - B X,
        with X solving  B^T B X + X A A^T = -(B^T B)^-1 g_A A^T / s^2   (Theorems 2, 3)

    ``pro_moments="full"`` (default; the paper's Algorithm 2 and the official optimizer), every step:

        g~ = s (B g_A' + g_B' A)  (out, in), the equivalent gradient: P_B G + (I - P_B) G P_A
        M <- b1 M + (1 - b1) g~,  V <- b2 V + (1 - b2) g~^2,  g^ = (M / (1 - b1^t)) / (sqrt(V / (1 - b2^t)) + eps)
        (d_A, d_B) = the adjusted gradients above for the LoRA gradients of g^, (s B^T g^, s g^ A^T)
        A <- A - lr (d_A + wd A),  B <- B - lr (d_B + wd B)   (plain steps: the official runs use optim="sgd")

    so s B A moves by -lr times the projection of a full fine-tuning Adam step (to first order). M and
    V hold out x in values each per layer (the paper's memory cost; fp32), b1, b2, eps = 0.9, 0.999,
    1e-8 (the official constants, AdamW's defaults). Like AdamW's moments they are not saved with
    the adapter. The rule steps A and B itself (``steps_itself``), with the run's lr schedule.
    Deviations from the official code: its bias correction uses t + 1 (its step counter is raised
    before the adjustment; lorabench uses t, as Adam does), it adds the squares to V in bf16, it hard-codes
    s = 16 / 8 (lorabench reads the adapter's scale), and it clips the adjusted gradient by the raw
    gradient's norm (lorabench's loop clips the raw gradients before the rule).

    ``pro_moments="factors"``: only the gradient adjustment; AdamW steps A and B on g_A', g_B'
    (element-wise moments of the factors: r (in + out) state, not the paper's update; lorabench's
    lora_pro before issue 14).
    """

    description = ("LoRA-Pro: A, B gradients adjusted so s(B gA + gB A) best approximates the full gradient, "
                   "Adam moments of that out x in gradient per layer (pro_moments='full', the paper's Alg. 2; "
                   "'factors' = AdamW on the adjusted gA, gB) (Wang, Liang et al. 2024, arXiv 2407.18242)")
    options = ("pro_moments",)
    ridge = 1e-8  # the official code's delta
    betas, eps = (0.9, 0.999), 1e-8  # the official code's Adam constants

    def __init__(self, opts):
        super().__init__(opts)
        self.t = 0
        self.exp_avg: torch.Tensor | None = None  # (out, in)
        self.exp_avg_sq: torch.Tensor | None = None  # (out, in)

    @property
    def steps_itself(self) -> bool:
        return self.opts.pro_moments == "full"

    def param_groups(self, adapter, lr, weight_decay):
        groups = super().param_groups(adapter, lr, weight_decay)
        return self.own_groups(adapter, groups) if self.steps_itself else groups

    @torch.no_grad()
    def before_step(self, adapter):
        if self.defer(adapter):
            return
        A, B = adapter.factors()["A"], adapter.factors()["B"]
        g_A, g_B = lora_pro_gradients(A, B, A.grad, B.grad, adapter.scale, self.ridge)
        A.grad.copy_(g_A)
        B.grad.copy_(g_B)

    @torch.no_grad()
    def step(self, adapter, lr, weight_decay):
        A, B, s = adapter.factors()["A"], adapter.factors()["B"], adapter.scale
        if not (torch.isfinite(A.grad).all() and torch.isfinite(B.grad).all()):
            return  # an fp16 overflow: no step, and the moments must not see it
        g = equivalent_gradient(A, B, A.grad, B.grad, s, self.ridge)  # (out, in)
        (b1, b2), dt = self.betas, g.dtype
        if self.exp_avg is None:
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(g), torch.zeros_like(g)
        self.t += 1
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.exp_avg_sq / (1 - b2**self.t)).sqrt_().add_(self.eps)
        adam = (self.exp_avg / (1 - b1**self.t)) / denom  # (out, in): the full-FT Adam direction
        Af, Bf = A.detach().to(dt), B.detach().to(dt)
        d_A, d_B = lora_pro_gradients(Af, Bf, s * Bf.T @ adam, s * adam @ Af.T, s, self.ridge)
        for p, d in ((A, d_A), (B, d_B)):
            if weight_decay:
                p.mul_(1 - lr * weight_decay)
            p.add_(d.to(p.dtype), alpha=-float(lr))
