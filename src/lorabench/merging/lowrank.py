"""The two factor operations the merge methods share: rank-stacking and SVD re-factoring."""

from __future__ import annotations

import torch


def stack(factors: list[tuple[torch.Tensor, torch.Tensor]], weights: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[w1 B1 | w2 B2 | ...]``, ``[A1; A2; ...]``: exactly ``sum_t w_t B_t A_t`` (PEFT's ``cat``)."""
    B = torch.cat([w * b for (b, _), w in zip(factors, weights)], dim=1)  # (out, sum r_t)
    A = torch.cat([a for _, a in factors], dim=0)  # (sum r_t, in)
    return B, A


def deltas(factors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Every adapter's update ``B_t A_t``, stacked: (N, out, in)."""
    return torch.stack([b @ a for b, a in factors])


def refactor(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factors of ``delta`` (out, in), truncated SVD (Eckart-Young), with the
    singular values split evenly: ``B = U_k S_k^1/2``, ``A = S_k^1/2 V_k^T``."""
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)  # (out, m), (m,), (m, in)
    root = S[:rank].sqrt()
    return (U[:, :rank] * root).float(), (root[:, None] * Vh[:rank]).float()
