"""Rules that project the full-weight gradient onto the low-rank update: lora_pro, altlora.

Both see G = dL/dW only through the LoRA gradients g_A = s B^T G (r, in) and g_B = s G A^T
(out, r), and solve r x r systems in fp32 (fp64 for fp64 factors) with a small ridge on
A A^T and B^T B, which are singular at a zero init.
"""

from __future__ import annotations

import torch

from ...errors import check
from .rule import Rule, register_rule


def _gram(M: torch.Tensor, ridge: float, rows: bool) -> torch.Tensor:
    """M M^T (rows) or M^T M, plus ridge * I: (r, r)."""
    G = M @ M.T if rows else M.T @ M
    return G + ridge * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def project_A(g_A: torch.Tensor, B: torch.Tensor, s: float, ridge: float) -> torch.Tensor:
    """(B^T B)^-1 g_A / s^2, (r, in): for g_A = s B^T G the X minimising ||s B X - G||_F."""
    return torch.linalg.solve(_gram(B, ridge, rows=False), g_A) / s**2


def project_B(g_B: torch.Tensor, A: torch.Tensor, s: float, ridge: float) -> torch.Tensor:
    """g_B (A A^T)^-1 / s^2, (out, r): for g_B = s G A^T the Y minimising ||s Y A - G||_F."""
    return torch.linalg.solve(_gram(A, ridge, rows=True), g_B.T).T / s**2


def solve_sylvester(P: torch.Tensor, Q: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """X with P X + X Q = C for symmetric positive definite P, Q (r x r): in the eigenbases
    P = U diag(p) U^T, Q = V diag(q) V^T the equation is elementwise, X' = C' / (p_i + q_j)."""
    p, U = torch.linalg.eigh(P)
    q, V = torch.linalg.eigh(Q)
    return U @ ((U.T @ C @ V) / (p[:, None] + q[None, :])) @ V.T


def lora_pro_gradients(A, B, g_A, g_B, s: float, ridge: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-Pro's adjusted (g_A', g_B'), in the compute dtype (Theorems 2 and 3 of the paper).

    s (B g_A' + g_B' A) = P_B G + (I - P_B) G P_A is the projection of G onto {s (B X + Y A)};
    the Sylvester solution X (which cancels in that sum) keeps g_A', g_B' closest to g_A, g_B.
    """
    dt = _compute_dtype(A)
    A, B, g_A, g_B = (t.detach().to(dt) for t in (A, B, g_A, g_B))
    BtB, AAt = _gram(B, ridge, rows=False), _gram(A, ridge, rows=True)
    gA = project_A(g_A, B, s, ridge)  # (r, in)
    gB = project_B(g_B, A, s, ridge)  # (out, r)
    gB = gB - B @ torch.linalg.solve(BtB, B.T @ gB)  # (I - B (B^T B)^-1 B^T) g_B (A A^T)^-1 / s^2
    X = solve_sylvester(BtB, AAt, -gA @ A.T)  # (r, r): B^T B X + X A A^T = -(B^T B)^-1 g_A A^T / s^2
    return gA + X @ A, gB - B @ X


class _FullProduct(Rule):
    """Rules that reason about the whole update s B A: a rank that changes per step breaks them."""

    @classmethod
    def check(cls, variant_cls, opts):
        super().check(variant_cls, opts)
        check(
            not hasattr(variant_cls, "set_rank"),  # DyLoRA: a random rank b <= r each step
            f"optimizer={cls.name!r} works on the full rank-r product s B A, but variant {variant_cls.name!r} trains "
            "a different rank each step; use optimizer='adamw' or 'lora_plus' with it, or variant='lora'",
        )


@register_rule("lora_pro")
class LoRAPro(_FullProduct):
    """LoRA-Pro: Are Low-Rank Adapters Properly Optimized? Wang, Liang et al. 2024, arXiv 2407.18242.

        g_A' = (B^T B)^-1 g_A / s^2 + X A,   g_B' = (I - B (B^T B)^-1 B^T) g_B (A A^T)^-1 / s^2 - B X,
        with X solving  B^T B X + X A A^T = -(B^T B)^-1 g_A A^T / s^2

    From Alg. 2 this implements the gradient adjustment: g_A', g_B' replace the gradients, so an
    SGD step on A, B moves W by -lr times the best approximation of the full gradient (to first
    order). Not implemented: Alg. 2's Adam moments of the full (out, in) equivalent gradient
    (out x in memory per layer); lorabench's AdamW steps A and B on the adjusted gradients.
    """

    description = ("LoRA-Pro: A, B gradients adjusted so s(B gA + gB A) best approximates the full gradient "
                   "(Wang, Liang et al. 2024, arXiv 2407.18242)")
    ridge = 1e-8  # the official code's delta

    @torch.no_grad()
    def before_step(self, adapter):
        A, B = adapter.factors()["A"], adapter.factors()["B"]
        if A.grad is None or B.grad is None:
            return
        g_A, g_B = lora_pro_gradients(A, B, A.grad, B.grad, adapter.scale, self.ridge)
        A.grad.copy_(g_A)
        B.grad.copy_(g_B)


@register_rule("altlora")
class AltLoRA(_FullProduct):
    """AltLoRA: Towards Better Gradient Approximation in Low-Rank Adaptation with Alternating
    Projections. Yu, Wang, Chen & Xue 2025, arXiv 2505.12455.

        odd steps  (B): m_B <- beta m_B (A' A^T (A A^T)^-1) + (1 - beta) g_B (A A^T)^-1 / s^2
        even steps (A): m_A <- beta ((B^T B)^-1 B^T B') m_A + (1 - beta) (B^T B)^-1 g_A / s^2

    One factor per step, with the least-squares projection of the full gradient onto it (the
    other held fixed); momentum lives in the low-rank space (r x in, out x r) and is carried into
    the current basis (A', B': the other factor when this one last stepped). The bias-corrected
    momentum m / (1 - beta^k) becomes the factor's gradient and the other factor's gradient is
    dropped, so AdamW leaves it alone (no step, no decay). B goes first: with the default B = 0,
    A's gradient s B^T G is 0 until B has moved. AdamW runs with beta1 = 0 on A and B, so it
    adds only its elementwise second-moment scaling (like AltLoRA+, Alg. 2, but of the momentum
    rather than the projected gradient). Its state (step count, momenta, bases) is per layer and
    saved with the adapter, so a reloaded adapter continues the same alternation.
    """

    description = ("AltLoRA: A and B updated on alternate steps with projected gradients and low-rank "
                   "momentum (Yu, Wang, Chen & Xue 2025, arXiv 2505.12455)")
    options = ("alt_beta",)
    ridge = 1e-5  # the official runs' reg
    betas = (0.0, 0.999)  # AdamW's for A and B: the rule keeps the first moment itself

    def __init__(self, opts):
        super().__init__(opts)
        self.steps = 0  # optimizer steps seen (with finite gradients)
        self.momentum: dict[str, torch.Tensor] = {}  # "A": (r, in), "B": (out, r)
        self.basis: dict[str, torch.Tensor] = {}  # the other factor when this one last stepped
        self.count = {"A": 0, "B": 0}

    def param_groups(self, adapter, lr, weight_decay):
        ids = {id(p) for p in adapter.factors().values()}
        groups = []
        for g in super().param_groups(adapter, lr, weight_decay):
            rest = [p for p in g["params"] if id(p) not in ids]
            mine = [p for p in g["params"] if id(p) in ids]
            groups += [{**g, "params": rest}] if rest else []
            groups += [{**g, "params": mine, "betas": self.betas}] if mine else []
        return groups

    def role(self) -> str:
        """The factor the next step updates: B on odd steps (1, 3, ...), A on even ones."""
        return "B" if self.steps % 2 == 0 else "A"

    @torch.no_grad()
    def before_step(self, adapter):
        A, B = adapter.factors()["A"], adapter.factors()["B"]
        if A.grad is None or B.grad is None:
            return
        if not (torch.isfinite(A.grad).all() and torch.isfinite(B.grad).all()):
            return  # an fp16 overflow: GradScaler skips this step, so the momentum must not see it
        role, beta, s = self.role(), self.opts.alt_beta, adapter.scale
        dt = _compute_dtype(A)
        Af, Bf = A.detach().to(dt), B.detach().to(dt)
        if role == "B":
            g = project_B(B.grad.to(dt), Af, s, self.ridge)  # (out, r)
            if "B" in self.momentum:  # carry m_B from the old A' to the current A
                carry = torch.linalg.solve(_gram(Af, self.ridge, rows=True), Af @ self.basis["B"].T).T  # (r, r)
                g = beta * self.momentum["B"] @ carry + (1 - beta) * g
            else:
                g = (1 - beta) * g
            self.basis["B"], stepped, other = Af.clone(), B, A
        else:
            g = project_A(A.grad.to(dt), Bf, s, self.ridge)  # (r, in)
            if "A" in self.momentum:  # carry m_A from the old B' to the current B
                carry = torch.linalg.solve(_gram(Bf, self.ridge, rows=False), Bf.T @ self.basis["A"])  # (r, r)
                g = beta * carry @ self.momentum["A"] + (1 - beta) * g
            else:
                g = (1 - beta) * g
            self.basis["A"], stepped, other = Bf.clone(), A, B
        self.momentum[role] = g
        self.count[role] += 1
        stepped.grad.copy_(g / (1 - beta ** self.count[role]))
        other.grad = None
        self.steps += 1

    def state_dict(self):
        state = {"steps": torch.tensor(self.steps), **{f"count_{k}": torch.tensor(n) for k, n in self.count.items()}}
        state |= {f"momentum_{k}": m for k, m in self.momentum.items()}
        return state | {f"basis_{k}": b for k, b in self.basis.items()}

    def load_state_dict(self, state):
        self.steps = int(state["steps"])
        self.count = {k: int(state[f"count_{k}"]) for k in ("A", "B")}
        self.momentum = {k: state[f"momentum_{k}"] for k in ("A", "B") if f"momentum_{k}" in state}
        self.basis = {k: state[f"basis_{k}"] for k in ("A", "B") if f"basis_{k}" in state}
