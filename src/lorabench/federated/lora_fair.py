"""LoRA-FAIR: server-side residual correction of the averaged B, clients start from it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .registry import Aggregation, register, weighted_mean, weighted_product

OBJECTIVES = ("cosine", "frobenius")


@dataclass
class LoRAFAIROptions:
    # Eq. (8) regulariser weight; the paper's default 0.01 (its ablation: 0 removes the bias but
    # the corrected B drifts from the average B, and accuracy drops).
    lam: float = 0.01
    # S in Eq. (8): "cosine" (the paper: 1 - cos(dW, (B + dB) A)) or "frobenius"
    # (||dW - (B + dB) A||_F^2 + lam ||dB||_F^2, closed form; ours, for a check of exactness).
    objective: str = "cosine"
    # The server solves "cosine" by gradient steps (the paper: SGD; steps and step size are not
    # given in the text we read): Adam, lr = lr_scale * rms(B_bar), from dB = 0.
    steps: int = 200
    lr_scale: float = 0.01

    def __post_init__(self):
        if not self.lam >= 0:
            raise ConfigError(f"lora_fair lam must be >= 0, got {self.lam!r}; the paper uses 0.01")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"lora_fair objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ConfigError(f"lora_fair steps must be an integer >= 0, got {self.steps!r}; e.g. 200")
        if not self.lr_scale > 0:
            raise ConfigError(f"lora_fair lr_scale must be > 0, got {self.lr_scale!r}; e.g. 0.01")


def cosine_correction(target: torch.Tensor, B: torch.Tensor, A: torch.Tensor, lam: float, steps: int,
                      lr_scale: float) -> torch.Tensor:
    """argmin_dB 1 - cos(target, (B + dB) A) + lam ||dB||_F, by ``steps`` Adam steps from dB = 0,
    the step size lr_scale * rms(B). Batched: leading dimensions of target (..., out, in), B
    (..., out, r), A (..., r, in) are independent problems solved together (the loss is their sum
    and Adam is element-wise, so each is solved as on its own)."""
    rms = B.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
    rms = torch.where(rms > 0, rms, torch.full_like(rms, 1e-3))
    u = torch.zeros_like(B, requires_grad=True)  # dB = rms * u: one lr gives each layer its own step
    if steps == 0:
        return u.detach()
    opt = torch.optim.Adam([u], lr=lr_scale)
    # W = (B + dB) A is never formed: <T, W> = sum((T A^T) * (B + dB)) and
    # ||W||_F^2 = sum(((B + dB)^T (B + dB)) * (A A^T)), so a step costs O(out r^2), not O(out in r).
    At = A.transpose(-2, -1)
    TA, AA = target @ At, A @ At  # (..., out, r), (..., r, r)
    t_norm = target.flatten(-2).norm(dim=-1)  # (...,)
    live = t_norm > 0  # a zero target has no direction: no correction
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            dB = rms * u
            Bc = B + dB  # (..., out, r)
            w_norm = ((Bc.transpose(-2, -1) @ Bc) * AA).sum(dim=(-2, -1)).clamp_min(0).sqrt()
            cos = (TA * Bc).sum(dim=(-2, -1)) / (w_norm * t_norm).clamp_min(1e-12)
            loss = torch.where(live, 1 - cos + lam * dB.flatten(-2).norm(dim=-1), torch.zeros_like(cos)).sum()
            loss.backward()
            opt.step()
    return (rms * u).detach() * live[..., None, None]


def frobenius_correction(target: torch.Tensor, B: torch.Tensor, A: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_dB ||target - (B + dB) A||_F^2 + lam ||dB||_F^2 = (target - B A) A^T (A A^T + lam I)^+."""
    R = target - B @ A  # (out, in) what the plain average misses
    G = A @ A.T + lam * torch.eye(A.shape[0], dtype=A.dtype)  # (r, r)
    return R @ A.T @ torch.linalg.pinv(G)  # (out, r)


@register("lora_fair")
class LoRAFAIR(Aggregation):
    """LoRA-FAIR: Federated LoRA Fine-Tuning with Aggregation and Initialization Refinement.
    Bian, Wang, Zhang & Xu 2025 (ICCV), arXiv 2411.14961.

        A_bar = sum_i p_i A_i,  B_bar = sum_i p_i B_i,  dW = sum_i p_i B_i A_i
        dB = argmin_dB  S(dW, (B_bar + dB) A_bar) + lam ||dB||          (Eq. 8; S: 1 - cosine)
        clients start the next round from (B_bar + dB, A_bar)           (Avg-Initial, Sec. 4)

    The residual dB corrects the server-side aggregation bias without new messages (the same
    B, A go up and down as FedAvg); the regulariser keeps B_bar + dB close to B_bar, so clients
    start from (nearly) the average they trained towards (the initialization refinement). The
    correction sits on B, not A (the paper's ablation, Table 6). Defaults: lam = 0.01, cosine S
    (the paper). Sources: the arXiv paper's method section as summarised in a paper note (we
    could not read the official code, github.com/jmbian/LoRA-FAIR, from here): the server
    solver (Adam, 200 steps, a step size relative to B_bar) is ours, where the paper says SGD.
    ``objective="frobenius"`` solves the squared-error form in closed form instead (exact when
    dW's rows lie in A_bar's row space and lam = 0); not the paper's default.
    """

    description = "FedAvg + a server residual dB so (B_bar+dB) A_bar ~ mean(B_i A_i); clients start from it (Bian et al. 2025, arXiv 2411.14961)"
    Options = LoRAFAIROptions

    def aggregate(self, uploads, p, fed=None):
        """Layer by layer; the cosine solve of all layers of one shape runs batched (same result)."""
        if self.opts.objective == "frobenius":
            return super().aggregate(uploads, p, fed)
        out, groups = {}, {}
        for layer in uploads[0]:
            Bs, As = [u[layer][0] for u in uploads], [u[layer][1] for u in uploads]
            out[layer] = (weighted_mean(Bs, p), weighted_mean(As, p))
            groups.setdefault((Bs[0].shape, As[0].shape), []).append((layer, weighted_product(Bs, As, p)))
        for items in groups.values():
            names = [n for n, _ in items]
            B = torch.stack([out[n][0] for n in names])
            A = torch.stack([out[n][1] for n in names])
            dB = cosine_correction(torch.stack([t for _, t in items]), B, A, self.opts.lam, self.opts.steps,
                                   self.opts.lr_scale)
            for i, n in enumerate(names):
                out[n] = (B[i] + dB[i], A[i])
        return out

    def aggregate_layer(self, Bs, As, p) -> tuple[torch.Tensor, torch.Tensor]:
        B, A = weighted_mean(Bs, p), weighted_mean(As, p)
        target = weighted_product(Bs, As, p)
        if self.opts.objective == "frobenius":
            dB = frobenius_correction(target, B, A, self.opts.lam)
        else:
            dB = cosine_correction(target, B, A, self.opts.lam, self.opts.steps, self.opts.lr_scale)
        return B + dB, A
