"""SALT: scale and shift the top-r singular values of W, LoRA on the rest of its spectrum."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import Variant, VariantError, check


@dataclass
class SALTOptions:
    # The official SAM2 runs choose r as a fraction of min(in, out) (ratio_salt = 0.1) and r_lora = 256
    # on 1152-wide layers; for GLUE-sized layers r = r_lora = 8 gives about LoRA r=8's budget.
    r: int = 8  # top singular values with a trainable scale and shift
    r_lora: int = 8  # rank of the LoRA update of the remaining (k - r) x (k - r) singular block

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=8")
        check(isinstance(self.r_lora, int) and self.r_lora > 0,
              f"r_lora must be a positive integer, got {self.r_lora!r}; use e.g. r_lora=8")


def canonical_svd(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD W = U diag(S) Vh (out, k), (k,), (k, in), with each singular pair's sign fixed so
    that the largest-magnitude entry of U's column is positive: a recomputation on another
    machine gives the same factors, not a sign-flipped copy (which the LoRA block would see)."""
    U, S, Vh = torch.linalg.svd(W.float(), full_matrices=False)
    rows = U.abs().argmax(dim=0)  # (k,)
    sign = torch.sign(U[rows, torch.arange(U.shape[1], device=U.device)])
    sign[sign == 0] = 1
    return U * sign, S, Vh * sign[:, None]


@register("salt")
class SALT(Variant):
    """SALT: Singular Value Adaptation with Low-Rank Transformation.
    Elsayed, Hashmi, Elseiagy, Wang, Yaqub & Almakky 2025, arXiv 2503.16055.

        W = U diag(s) V^T (k = min(in, out));  S' = diag(scale * s_1..r + shift, s_r+1..k) + [0, 0; 0, X Y]
        W' = U relu(S') V^T,   X: (k - r, r_lora), Y: (r_lora, k - r)

    The top-r singular values get a trainable scale (init 1) and shift (init 0); the remaining
    (k - r) x (k - r) block of the singular-value matrix gets a LoRA update X Y (X Kaiming, Y = 0,
    the official SAM2 code), so W' = W at init. As in the official code the ReLU acts on every entry
    of S' (it also clips negative off-diagonal entries of X Y). U, s, V are cached from the base
    weight (not saved: 2x the layer's size); a loaded adapter recomputes them, signs fixed.
    """

    description = "SALT: scale/shift the top-r singular values of W, LoRA on the rest of the spectrum (Elsayed et al. 2025, arXiv 2503.16055)"
    Options = SALTOptions

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        k, r = min(in_features, out_features), opts.r
        self.sigma_scale = nn.Parameter(torch.ones(r))  # (r,), trainable_scale_A
        self.sigma_shift = nn.Parameter(torch.zeros(r))  # (r,), trainable_shift_B
        self.lora_X = nn.Parameter(torch.empty(k - r, opts.r_lora))  # (k - r, r_lora)
        self.lora_Y = nn.Parameter(torch.zeros(opts.r_lora, k - r))  # (r_lora, k - r)
        # Official init: kaiming_uniform_(X, mode="fan_in", nonlinearity="relu") (its `a` is unused for relu).
        nn.init.kaiming_uniform_(self.lora_X, nonlinearity="relu")
        # The SVD of the base weight: derived data, rebuilt from W, so not part of the state dict.
        self.register_buffer("U", torch.zeros(out_features, k), persistent=False)  # (out, k)
        self.register_buffer("S", torch.zeros(k), persistent=False)  # (k,)
        self.register_buffer("Vh", torch.zeros(k, in_features), persistent=False)  # (k, in)
        self.svd_ready = False

    @classmethod
    def check_layer(cls, in_features, out_features, opts, layer_name):
        k = min(in_features, out_features)
        if opts.r >= k:
            raise VariantError(
                f"r={opts.r} leaves no singular values for SALT's LoRA block in layer {layer_name!r} "
                f"(min(in, out) = {k}); choose r < {k}"
            )

    @torch.no_grad()
    def init_from_base(self, weight):
        U, S, Vh = canonical_svd(weight)
        self.U.copy_(U)
        self.S.copy_(S)
        self.Vh.copy_(Vh)
        self.svd_ready = True

    def _ensure_svd(self, weight: torch.Tensor) -> None:
        if not self.svd_ready:  # a loaded adapter: the buffers are not saved
            self.init_from_base(weight.detach().float())

    # ---- compute -----------------------------------------------------------------------
    def singular_update(self) -> torch.Tensor:
        """relu(S') - diag(s), (k, k): what the adaptation adds to the singular-value matrix."""
        r, S = self.opts.r, self.S
        top = F.relu(self.sigma_scale * S[:r] + self.sigma_shift) - S[:r]  # (r,)
        rest = torch.diag(S[r:]) + self.lora_X @ self.lora_Y  # (k - r, k - r)
        # The off-diagonal zero blocks of S' stay zero under the ReLU.
        return torch.block_diag(torch.diag(top), F.relu(rest) - torch.diag(S[r:]))

    def delta_weight(self):
        if not self.svd_ready:
            raise VariantError("this salt adapter has not seen its base weight yet; run a forward pass or lorabench.merge first")
        return self.U @ self.singular_update() @ self.Vh  # (out, in) = U relu(S') V^T - W

    def forward(self, x, layer):
        # One matmul with W' = W + U (relu(S') - diag s) V^T, formed once per call as the official
        # code forms U relu(S') V^T (cheaper than three token-wise products for > k tokens).
        self._ensure_svd(layer.weight)
        weight = layer.weight + self.delta_weight().to(layer.weight.dtype)
        return layer.linear(x, weight)

    def merged_weight(self, weight):
        self._ensure_svd(weight)
        return weight + self.delta_weight().to(weight.dtype)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        k = min(in_features, out_features)
        return 2 * opts.r + 2 * (k - opts.r) * opts.r_lora

    # ---- PEFT export: none (export_peft asks peft_config first) ---------------------------
    def peft_config(self):
        raise VariantError(
            "variant 'salt' cannot be exported to PEFT's format: its update U (relu(S') - S) V^T has full "
            "rank min(in, out); use lorabench.save_adapter, or lorabench.merge / unload for a plain model"
        )

    def peft_tensors(self):
        return self.peft_config()
