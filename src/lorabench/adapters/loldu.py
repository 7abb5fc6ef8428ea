"""LoLDU: the top-r part of W's LDU decomposition, of which only the diagonal and a scale train."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .registry import register
from .base import Variant, VariantError, check


@dataclass
class LoLDUOptions:
    r: int = 8
    # sigma starts at alpha / r (the official code's scaling_factor = lora_alpha / rank,
    # lora_alpha = 1 in its from_linear). The residual absorbs it, so the output is the same
    # for any alpha; only the step sizes of z and sigma change.
    alpha: float = 1.0

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=8")
        check(self.alpha != 0, "alpha must be non-zero (sigma = alpha / r scales the whole update); the official code uses 1")


def ldu(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(PL, d, U) with W = PL diag(d) U: LU with partial pivoting (P folded into L), U with a
    unit diagonal. Shapes (out, k), (k,), (k, in), k = min(out, in)."""
    P, L, U = torch.linalg.lu(W.float())  # W = P L U
    d = torch.diagonal(U)  # (k,)
    return P @ L, d, U / d[:, None]


@register("loldu")
class LoLDU(Variant):
    """LoLDU: Low-Rank Adaptation via Lower-Diag-Upper Decomposition for Parameter-Efficient
    Fine-Tuning. Shi, Wei, Wu, Ran, Sun, He & Yang 2024, arXiv 2410.13618.

        W = P L D U (LU with partial pivoting);  L_r = (P L)[:, :r],  U_r = U[:r],  z0 = D[:r]
        h = (W - sigma0 L_r diag(z0) U_r) x + sigma L_r diag(z) U_r x,   sigma0 = alpha / r

    L_r and U_r stay frozen (buffers); only the diagonal z (r values) and the scalar sigma
    train: r + 1 parameters per layer. The output is unchanged at init (the residual holds
    everything but the top-r LDU part). The update relative to W is L_r diag(sigma z -
    sigma0 z0) U_r, a rank-r LoRA, which is how it is exported to PEFT.
    """

    description = "LoLDU: top-r LDU factors of W frozen, diagonal z + scale sigma trained (Shi et al. 2024, arXiv 2410.13618)"
    Options = LoLDUOptions
    changes_base = True

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        r = opts.r
        self.register_buffer("lora_L", torch.zeros(out_features, r))  # (out, r): P L, columns :r
        self.register_buffer("lora_U", torch.zeros(r, in_features))  # (r, in): unit upper rows :r
        self.z = nn.Parameter(torch.zeros(r))  # (r,): the trained diagonal D
        self.sigma = nn.Parameter(torch.tensor(opts.alpha / r))  # the trained scaling factor
        self.register_buffer("z0", torch.zeros(r))  # their values at init, for the residual
        self.register_buffer("sigma0", torch.tensor(opts.alpha / r))

    @classmethod
    def rank_bound(cls, opts):
        return 1, "whose LDU decomposition LoLDU truncates"

    @torch.no_grad()
    def init_from_base(self, weight):
        r = self.opts.r
        L, d, U = ldu(weight)
        if not torch.isfinite(U[:r]).all() or (d[:r] == 0).any():
            raise VariantError("the base weight has a zero pivot among its top-r LU pivots; choose a smaller r")
        self.lora_L.copy_(L[:, :r])
        self.lora_U.copy_(U[:r])
        self.z.copy_(d[:r])  # the paper's default "LU" init of the diagonal
        self.z0.copy_(self.z)
        self.sigma0.copy_(self.sigma)

    def base_offset(self):
        return self.sigma0 * (self.lora_L * self.z0) @ self.lora_U  # (out, in)

    # ---- compute ---------------------------------------------------------------------
    def delta(self, x):
        z = torch.nn.functional.linear(x, self.lora_U)  # (..., r)
        return torch.nn.functional.linear(z * (self.sigma * self.z), self.lora_L)  # (..., out)

    def delta_weight(self):
        return self.sigma * (self.lora_L * self.z) @ self.lora_U  # (out, in)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        return opts.r + 1

    # ---- PEFT export: a rank-r LoRA on the original weight -------------------------------
    def lowrank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) with B @ A == the update relative to the original base weight."""
        return self.lora_L * (self.sigma * self.z - self.sigma0 * self.z0), self.lora_U

    def peft_tensors(self):
        B, A = self.lowrank_factors()
        return {"lora_A.weight": A.detach().contiguous(), "lora_B.weight": B.detach().contiguous()}

    def peft_config(self):
        r = self.opts.r
        return {"peft_type": "LORA", "r": r, "lora_alpha": r, "use_rslora": False, "lora_dropout": 0.0}
