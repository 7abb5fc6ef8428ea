"""PiSSA: LoRA initialised with the principal singular values and vectors of W.

Registers the init ``"pissa"`` (usable with any LoRA-family variant: ``init="pissa"``)
and the variant ``pissa`` (LoRA whose default init is ``"pissa"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import register
from .lora import LoRA, LoRAOptions, register_init


def principal_factors(W: torch.Tensor, r: int, niter: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r, S_r, V_r) with W ~= U_r diag(S_r) V_r^T: the rank-r truncated SVD of W (out, in).

    ``niter == 0``: exact SVD. ``niter > 0``: randomized SVD (Halko et al. 2011) with
    ``niter`` subspace iterations, PiSSA's "fast SVD" (Sec. 4.2); it draws from torch's RNG.
    """
    if niter == 0:
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # (out, k), (k,), (k, in)
        return U[:, :r], S[:r], Vh[:r].T
    # Like PEFT's "pissa_niter_n" we ask for exactly r directions (no oversampling).
    U, S, V = torch.svd_lowrank(W, q=r, niter=niter)  # (out, r), (r,), (in, r)
    return U, S, V


@register_init("pissa", factorises_weight=True, residual=True)
def _pissa(v: LoRA, W: torch.Tensor) -> None:
    # Meng et al. 2024, Eq. (2)-(3): A = S_r^1/2 V_r^T, B = U_r S_r^1/2, W_res = W - BA.
    # With a LoRA scale s != 1 we divide S_r by s (as PEFT does) so that s B A = U_r S_r V_r^T.
    U, S, V = principal_factors(W, v.opts.r, v.opts.svd_niter)
    root = torch.sqrt(S / v.scale)  # (r,)
    with torch.no_grad():
        v.lora_A.copy_(root[:, None] * V.T)  # (r, in)
        v.lora_B.copy_(U * root[None, :])  # (out, r)
    v.keep_init_factors()  # the frozen base becomes W - s B0 A0 (LoRA.base_offset)


@register("pissa")
class PiSSA(LoRA):
    """PiSSA: Principal Singular values and Singular vectors Adaptation of LLMs.
    Meng, Wang & Zhang 2024, arXiv 2404.02948.

        W = U S V^T;  B0 = U_r S_r^1/2,  A0 = S_r^1/2 V_r^T;  h = (W - s B0 A0) x + s B A x

    The adapter starts as the top-r singular part of W and trains it; the residual stays
    frozen, so the output is unchanged at init. ``svd_niter > 0`` uses randomized SVD.
    Default alpha = r (scale 1), as in the paper's runs (lora_r = lora_alpha = 128).
    """

    description = "PiSSA: LoRA initialised from the top-r SVD of W, residual frozen (Meng et al. 2024, arXiv 2404.02948)"

    @dataclass
    class Options(LoRAOptions):
        init: str = "pissa"
