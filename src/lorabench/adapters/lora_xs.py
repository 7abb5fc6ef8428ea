"""LoRA-XS: a trainable r x r matrix between frozen factors from the truncated SVD of W."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import Variant, check


@dataclass
class LoRAXSOptions:
    r: int = 8
    alpha: float = 16.0  # the official GLUE script's default lora_alpha (s = alpha / r)
    init_std: float = 1e-5  # R ~ N(0, init_std^2), as the official initialisation
    dropout: float = 0.0
    svd_niter: int = 0  # 0 = exact SVD, n > 0 = randomized SVD with n iterations

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=8")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}; LoRA-XS uses alpha=16")
        check(self.init_std >= 0, f"init_std must be >= 0, got {self.init_std!r}; LoRA-XS uses 1e-5")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(self.svd_niter >= 0, f"svd_niter must be >= 0 (0 = exact SVD), got {self.svd_niter!r}")


@register("lora_xs")
class LoRAXS(Variant):
    """LoRA-XS. Bałazy, Banaei, Aberer & Tabor 2024, arXiv 2405.17604.

        h = W x + s B R A x,   B = U_r (out, r), A = S_r V_r^T (r, in) frozen from the
        truncated SVD W ~ U_r S_r V_r^T;  R (r, r) trained, init N(0, 1e-5^2);  s = alpha / r

    Only r^2 parameters per layer train. R is small but not zero, so the output at init
    differs from the base model's by O(1e-5) (as in the official implementation).
    """

    description = "LoRA-XS: h = Wx + s B R A x, B, A frozen from SVD(W), R (r x r) trains (Balazy et al. 2024, arXiv 2405.17604)"
    Options = LoRAXSOptions
    identity_at_init = False

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        r = opts.r
        self.register_buffer("lora_A", torch.zeros(r, in_features))  # (r, in), S_r V_r^T
        self.register_buffer("lora_B", torch.zeros(out_features, r))  # (out, r), U_r
        self.R = nn.Parameter(torch.empty(r, r))  # (r, r)
        nn.init.normal_(self.R, mean=0.0, std=opts.init_std)
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()

    @classmethod
    def rank_bound(cls, opts):
        return 1, "whose truncated SVD LoRA-XS uses"

    @property
    def scale(self) -> float:
        return self.opts.alpha / self.opts.r

    @torch.no_grad()
    def init_from_base(self, weight):
        # Official code: the singular values go into A (A = S_r V_r^T), B = U_r; top-r part.
        r = self.opts.r
        if self.opts.svd_niter > 0:
            U, S, V = torch.svd_lowrank(weight, q=min(r + 10, *weight.shape), niter=self.opts.svd_niter)
            Vh = V.t()
        else:
            U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        self.lora_B.copy_(U[:, :r])
        self.lora_A.copy_(S[:r, None] * Vh[:r])

    def delta(self, x):
        z = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        z = F.linear(z, self.R * self.scale)  # (..., r)
        return F.linear(z, self.lora_B)  # (..., out)

    def pack_factors(self):
        """(A, B R, s): the same rank-r product, for a pack's batched product (``lorabench.pack``)."""
        return self.lora_A, self.lora_B @ self.R, self.scale

    @classmethod
    def unpackable(cls):
        return None

    def delta_weight(self):
        return self.scale * (self.lora_B @ self.R @ self.lora_A)  # (out, in)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        return opts.r * opts.r

    # ---- PEFT export: a rank-r LoRA, lora_B = s U_r R, lora_A = S_r V_r^T -----------------
    def peft_tensors(self):
        return {
            "lora_A.weight": self.lora_A.detach().contiguous(),
            "lora_B.weight": (self.scale * self.lora_B @ self.R).detach().contiguous(),
        }

    def peft_config(self):
        r = self.opts.r
        return {"peft_type": "LORA", "r": r, "lora_alpha": r, "use_rslora": False, "lora_dropout": 0.0}
