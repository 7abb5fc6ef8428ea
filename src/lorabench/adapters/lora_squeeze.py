"""LoRA-Squeeze: train at a high source rank, compress to the target rank with a (randomized) SVD.

Post hoc: ``squeeze(model, rank)`` (or ``lorabench squeeze DIR --rank r``) turns any LoRA-family
adapter into a plain rank-r LoRA. In training: variant ``lora_squeeze`` with ``anneal=True``
lowers its rank in steps (``on_step``) until ``target_rank``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .registry import register
from .base import VariantError, check
from .lora import RESIDUAL_INITS, LoRA, LoRAOptions


# ---- the math: top-k SVD of B A without forming B A ----------------------------------------
@torch.no_grad()
def lowrank_svd(B: torch.Tensor, A: torch.Tensor, k: int, niter: int = 2, oversample: int = 10, seed: int = 0):
    """(U (out, k), S (k,), Vh (k, in)) of the best rank-k approximation of ``B @ A``.

    ``niter > 0``: randomized SVD (Halko, Martinsson & Tropp 2011, Alg. 4.4: range finder with
    ``k + oversample`` probes and ``niter`` re-orthonormalised power iterations), every product
    taken through the factors. ``niter == 0``: exact, from QR of both factors and the SVD of the
    small (r, r) core (the paper's memory-efficient variant). Computed in float64.
    """
    B, A = B.double(), A.double()  # (out, r), (r, in)
    if niter == 0:
        Qb, Rb = torch.linalg.qr(B)  # (out, r), (r, r)
        Qa, Ra = torch.linalg.qr(A.T)  # (in, r), (r, r)
        U, S, Vh = torch.linalg.svd(Rb @ Ra.T)  # the (r, r) core
        return Qb @ U[:, :k], S[:k], Vh[:k] @ Qa.T
    probes = min(k + oversample, min(B.shape[0], A.shape[1]))
    g = torch.Generator(device=A.device).manual_seed(seed)  # leaves the global RNG alone
    omega = torch.randn(A.shape[1], probes, generator=g, device=A.device, dtype=A.dtype)  # (in, l)
    Q = torch.linalg.qr(B @ (A @ omega)).Q  # (out, l): the range of B A
    for _ in range(niter):
        Z = torch.linalg.qr(A.T @ (B.T @ Q)).Q  # (in, l)
        Q = torch.linalg.qr(B @ (A @ Z)).Q
    Uh, S, Vh = torch.linalg.svd((Q.T @ B) @ A, full_matrices=False)  # (l, in) is small
    return (Q @ Uh)[:, :k], S[:k], Vh[:k]


def squeeze_factors(B, A, rank: int, scale: float = 1.0, niter: int = 2, oversample: int = 10):
    """(B', A'), rank ``rank``, with ``scale * B' A'`` the best rank-r approximation of ``B A``:
    B' = U_r sqrt(S_r / scale), A' = sqrt(S_r / scale) V_r^T (the paper's balanced split)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= A.shape[0]:
        raise VariantError(f"squeeze rank must be an integer in 1..{A.shape[0]} (the source rank), got {rank!r}")
    if niter < 0 or oversample < 0:
        raise VariantError(f"niter and oversample must be >= 0, got {niter!r} and {oversample!r}; "
                           "e.g. niter=2, oversample=10")
    U, S, Vh = lowrank_svd(B, A, rank, niter, oversample)
    root = (S / scale).sqrt()
    return (U * root).to(B.dtype), (root[:, None] * Vh).to(A.dtype)


# ---- In-Squeeze: the variant -----------------------------------------------------------------
@dataclass
class LoRASqueezeOptions(LoRAOptions):
    r: int = 32  # the source rank: train high ...
    alpha: float = 32.0  # ... with s = alpha / r = 1, which squeezing keeps
    target_rank: int | None = None  # ... and deploy low; None = r // 4 (8 for r = 32)
    anneal: bool = False  # In-Squeeze: lower the rank during training (else train at r throughout)
    anneal_stages: int = 0  # number of squeezes; 0 = halve each time, ceil(log2(r / target_rank))
    anneal_end: float = 0.75  # fraction of training by which target_rank is reached; the rest recovers
    svd_niter: int = 2  # squeezes: RSVD power iterations (0 = exact SVD through QR of the factors)
    svd_oversample: int = 10  # RSVD extra probes beyond the kept rank

    def __post_init__(self):
        super().__post_init__()
        if self.target_rank is None:
            self.target_rank = max(1, self.r // 4)
        check(isinstance(self.target_rank, int) and 1 <= self.target_rank <= self.r,
              f"target_rank must be an integer in 1..r={self.r}, got {self.target_rank!r}; squeezing cannot raise the rank")
        check(isinstance(self.anneal_stages, int) and self.anneal_stages >= 0,
              f"anneal_stages must be an integer >= 0 (0 = halve the rank each stage), got {self.anneal_stages!r}")
        check(0.0 < self.anneal_end <= 1.0, f"anneal_end must be in (0, 1], got {self.anneal_end!r}; e.g. 0.75")
        check(self.svd_oversample >= 0, f"svd_oversample must be >= 0, got {self.svd_oversample!r}; e.g. 10")
        check(self.init not in RESIDUAL_INITS,
              f"init={self.init!r} keeps a rank-r part of W in the adapter, which a squeeze would cut; "
              "use init='kaiming' or 'gaussian', or squeeze a trained PiSSA adapter post hoc (lorabench.squeeze)")

    def schedule(self) -> list[int]:
        """The ranks after each squeeze: geometric from r to target_rank (halving by default)."""
        if self.target_rank == self.r:
            return []
        n = self.anneal_stages or math.ceil(math.log2(self.r / self.target_rank))
        ratio = self.target_rank / self.r
        return [max(self.target_rank, round(self.r * ratio ** (j / n))) for j in range(1, n + 1)]


@register("lora_squeeze")
class LoRASqueeze(LoRA):
    """LoRA-Squeeze: Simple and Effective Post-Tuning and In-Tuning Compression of LoRA Modules.
    Vulić, Grycner, de Laroussilhe & Pfeiffer 2026, arXiv 2602.10993.

        h = W0 x + s B[:, :k] A[:k] x,   s = alpha / r fixed, k = active rank (r at init)
        squeeze to k': U S V^T = RSVD_k'(s B A);  B' = U sqrt(S / s),  A' = sqrt(S / s) V^T

    With ``anneal`` (In-Squeeze) k goes r -> ... -> target_rank at evenly spaced steps up to
    ``anneal_end`` of training. The tensors keep their r rows (masking, not resizing): the
    optimizer built once over them stays valid, components past k are zero, get no gradient
    and are re-zeroed after each step (AdamW momentum would move them). The Adam moments of
    the kept components still refer to the pre-squeeze basis for a while (not reset).
    """

    description = ("LoRA-Squeeze: train at rank r, RSVD-compress to target_rank post hoc or in steps "
                   "during training (Vulić et al. 2026, arXiv 2602.10993)")
    Options = LoRASqueezeOptions
    running_buffers = ("rank",)  # lowered by on_step when annealing

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        self.register_buffer("rank", torch.tensor(opts.r, dtype=torch.int64))  # active rank k, saved

    def rank_at(self, step: int, total: int) -> int:
        """The active rank once ``step`` of ``total`` optimizer steps are done."""
        stages = self.opts.schedule()
        done = sum(step >= math.ceil(self.opts.anneal_end * total * j / len(stages)) for j in range(1, len(stages) + 1))
        return stages[done - 1] if done else self.opts.r

    def on_step(self, step, total):
        if self.opts.anneal:
            k = self.rank_at(step, total)
            if k < int(self.rank):
                self.squeeze_to(k)
        with torch.no_grad():  # the optimizer may have moved masked components
            self.lora_A[int(self.rank):].zero_()
            self.lora_B[:, int(self.rank):].zero_()

    @torch.no_grad()
    def squeeze_to(self, k: int) -> None:
        """Replace the active components by the best rank-k approximation of s B A."""
        n = int(self.rank)
        # s stays alpha / r, so B' A' is the best rank-k approximation of B A itself.
        B, A = squeeze_factors(self.lora_B[:, :n], self.lora_A[:n], k, 1.0, self.opts.svd_niter, self.opts.svd_oversample)
        self.lora_A.zero_()[:k].copy_(A)
        self.lora_B.zero_()[:, :k].copy_(B)
        self.rank.fill_(k)

    def delta(self, x):
        k = int(self.rank)
        z = F.linear(self.dropout(x), self.lora_A[:k])  # (..., k)
        return F.linear(z * self.scale, self.lora_B[:, :k])  # (..., out)

    def delta_weight(self):
        k = int(self.rank)
        return self.scale * (self.lora_B[:, :k] @ self.lora_A[:k])  # (out, in)

    def lowrank_factors(self):
        k = int(self.rank)
        return self.scale * self.lora_B[:, :k], self.lora_A[:k]  # PEFT export: a plain rank-k LoRA

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={int(self.rank)}"
