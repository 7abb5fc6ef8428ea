"""RandLoRA: a full-rank update from shared frozen random bases and trained diagonal scalings."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import Variant, VariantError, check

BASES = ("dense", "sparse", "very_sparse")


@dataclass
class RandLoRAOptions:
    r: int = 32  # rank of each random base (PEFT's default); FEWER bases, so fewer parameters, as r grows
    alpha: float = 640.0  # scale alpha / r; PEFT's default 640 = 20 x its default r
    projection_seed: int = 0  # seed of the shared bases (PEFT's projection_prng_key)
    # Random bases: "dense" uniform; "sparse" ternary {-1, 0, 1} with P(+-1) = 1/6
    # each; "very_sparse" ternary with P(+-1) = 1 / (2 sqrt(d)), d = the smaller layer side.
    basis: str = "dense"
    dropout: float = 0.0

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=32")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}; RandLoRA uses alpha = 20 r (e.g. 640 for r=32)")
        check(isinstance(self.projection_seed, int), f"projection_seed must be an integer, got {self.projection_seed!r}")
        check(self.basis in BASES, f"basis must be one of {', '.join(BASES)}, got {self.basis!r}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")


def num_bases(in_features: int, out_features: int, r: int) -> int:
    """N = ceil(min(in, out) / r): enough rank-r bases for a full-rank update."""
    return math.ceil(min(in_features, out_features) / r)


def random_basis(shape: tuple[int, ...], kind: str, generator: torch.Generator, sparsity: float) -> torch.Tensor:
    """A random tensor with unit standard deviation (the paper's and PEFT's normalisation)."""
    u = torch.rand(shape, generator=generator)
    if kind == "dense":
        t = 2 * u - 1  # U(-1, 1)
    else:  # ternary: -1 below 1/(2s), +1 above 1 - 1/(2s), 0 in between
        p = 1 / (2 * sparsity)
        t = (u > 1 - p).float() - (u < p).float()
    return t / t.std().clamp_min(1e-12)


@register("randlora")
class RandLoRA(Variant):
    """RandLoRA: Full-rank parameter-efficient fine-tuning of large models.
    Albert, Zhang, Saratchandran, Rodriguez-Opazo, van den Hengel & Abbasnejad 2025, arXiv 2502.00987.

        dW = (alpha / r) sum_{n=1}^{N} B_n Lambda_n A Gamma_n,   N = ceil(d / r), d = min(in, out)
        B_n: (D, r) and A: (r, d) frozen random, shared by every layer (sliced to its size);
        Lambda_n = diag(lambda[:, n]) (r x r), Gamma_n = diag(gamma[n]) (d x d) trained

    A sits on the smaller side d (dW = M or M^T with M = sum_n B_n Lambda_n A Gamma_n, (D, d)).
    Init (PEFT): lambda = 0, so h = W0 x; gamma = 1 / d.
    """

    description = (
        "RandLoRA: full-rank sum of shared frozen random bases with trained diagonal scalings "
        "(Albert et al. 2025, arXiv 2502.00987)"
    )
    Options = RandLoRAOptions

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        if shared is None or not hasattr(shared, "randlora_A"):
            raise VariantError("RandLoRA layers need the shared bases; create them with lorabench.apply(model, 'randlora')")
        r, d = opts.r, min(in_features, out_features)
        n = num_bases(in_features, out_features, r)
        # PEFT's names ("lambda" is a Python keyword)
        self.randlora_lambda = nn.Parameter(torch.zeros(r, n))  # (r, N): diagonal of Lambda_n in column n
        self.randlora_gamma = nn.Parameter(torch.full((n, d), 1.0 / d))  # (N, d): diagonal of Gamma_n in row n
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()

    @classmethod
    def shared_state(cls, shapes, opts):
        # One A for the largest smaller side and one stack of N B_n for the largest larger side, where
        # "largest" is over the elementwise-largest (out, in) of all layers, as PEFT sizes them.
        max_in, max_out = max(i for i, _ in shapes), max(o for _, o in shapes)
        D, d = max(max_in, max_out), min(max_in, max_out)
        n = math.ceil(d / opts.r)
        sparsity = {"dense": 1.0, "sparse": 3.0, "very_sparse": math.sqrt(d)}[opts.basis]
        generator = torch.Generator(device="cpu").manual_seed(opts.projection_seed)
        randlora_A = random_basis((opts.r, d), opts.basis, generator, sparsity)  # (r, d)
        randlora_B = random_basis((D, n, opts.r), opts.basis, generator, sparsity)  # (D, N, r): B_n = [:, n, :]
        return {"randlora_A": randlora_A, "randlora_B": randlora_B}

    # ---- compute ---------------------------------------------------------------------
    @property
    def scale(self) -> float:
        return self.opts.alpha / self.opts.r

    @property
    def small_is_in(self) -> bool:
        """True when A acts on the input (in <= out); else A acts on the output side."""
        return self.in_features <= self.out_features

    def bases(self, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A_scaled): B (D, N r) and A_scaled (r N, d) with scale * M = B @ A_scaled (``scale``
        is folded into lambda, (r, N), not applied to a (T, out) output).

        Column c of B (base c // r, column c % r) meets row c of A_scaled (row c // N of A scaled by
        lambda and base c % N of gamma): PEFT's flattening. Any fixed pairing of the i.i.d. columns of
        the B_n with the rows is one draw of the paper's bases, and this one keeps PEFT's checkpoints valid.
        """
        r, (n, d) = self.opts.r, self.randlora_gamma.shape
        D = max(self.in_features, self.out_features)
        A = self.shared.randlora_A[:, :d]  # (r, d)
        lam = self.randlora_lambda if scale == 1.0 else self.randlora_lambda * scale  # (r, N)
        A_scaled = lam[:, :, None] * A[:, None, :] * self.randlora_gamma[None]  # (r, N, d)
        B = self.shared.randlora_B[:D, :n, :]  # (D, N, r)
        return B.reshape(D, n * r), A_scaled.reshape(r * n, d)

    def delta(self, x):
        B, A = self.bases(self.scale)  # (D, N r), (r N, d): the scale rides on the small factor
        x = self.dropout(x)
        if self.small_is_in:  # in = d, out = D
            return F.linear(F.linear(x, A), B)  # (..., r N) -> (..., out)
        return F.linear(F.linear(x, B.t()), A.t())  # (..., N r) -> (..., out)

    def delta_weight(self):
        B, A = self.bases()
        M = self.scale * (B @ A)  # (D, d)
        return M if self.small_is_in else M.t()  # (out, in)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        # lambda (r, N) + gamma (N, d)
        return num_bases(in_features, out_features, opts.r) * (opts.r + min(in_features, out_features))

    # ---- PEFT export (peft_type RANDLORA, bases saved in the state dict) -----------------
    def peft_tensors(self):
        return {
            "randlora_lambda": self.randlora_lambda.detach().contiguous(),
            "randlora_gamma": self.randlora_gamma.detach().contiguous(),
        }

    def peft_config(self):
        o = self.opts
        return {
            "peft_type": "RANDLORA",
            "r": o.r,
            "randlora_alpha": o.alpha,
            "projection_prng_key": o.projection_seed,
            "save_projection": True,
            "sparse": o.basis == "sparse",
            "very_sparse": o.basis == "very_sparse",
            "randlora_dropout": o.dropout,
        }

    # ---- PEFT import (a folder without its bases regenerates them from projection_prng_key) -----
    peft_method = "RANDLORA"
    peft_names = {"randlora_lambda": "randlora_lambda", "randlora_gamma": "randlora_gamma"}

    @classmethod
    def options_from_peft(cls, config):
        for unused in ("save_projection", "init_weights"):
            config.pop(unused, None)
        sparse, very_sparse = config.pop("sparse", False), config.pop("very_sparse", False)
        return {"r": config.pop("r"), "alpha": float(config.pop("randlora_alpha", 640.0)),
                "projection_seed": config.pop("projection_prng_key", 0),
                "basis": "very_sparse" if very_sparse else "sparse" if sparse else "dense",
                "dropout": float(config.pop("randlora_dropout", 0.0))}

    @classmethod
    def peft_shared_names(cls):
        return {"base_model.randlora_A": "randlora_A", "base_model.randlora_B": "randlora_B"}

    @classmethod
    def peft_shared_tensors(cls, shared: nn.Module) -> dict[str, torch.Tensor]:
        """The shared bases under PEFT's keys; PEFT stores A as (r, 1, d)."""
        return {
            "base_model.randlora_A": shared.randlora_A[:, None, :].detach().contiguous(),
            "base_model.randlora_B": shared.randlora_B.detach().contiguous(),
        }
