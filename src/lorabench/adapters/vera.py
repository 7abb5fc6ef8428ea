"""VeRA: one pair of frozen random projections shared by every layer, two trained vectors per layer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast_state, same_autocast
from .registry import register
from .base import Variant, VariantError, check

COMPUTE_PATHS = ("auto", "merged", "per_token")


@dataclass
class VeRAOptions:
    r: int = 256  # VeRA needs far larger r than LoRA (Table 1); PEFT's default
    d_initial: float = 0.1  # initial value of lambda_d (paper Table 6c: small values such as 0.1 work best)
    projection_seed: int = 0  # seed of the shared A / B (PEFT's projection_prng_key)
    dropout: float = 0.0
    # How forward computes the update (same function, different cost): "per_token" applies
    # A, lambda_d, B, lambda_b to every token; "merged" forms dW once and does one matmul
    # with W + dW; "auto" picks the cheaper by a flop count for each call.
    compute: str = "auto"

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=256")
        check(self.d_initial != 0, "d_initial must be non-zero (with lambda_b = 0 no gradient would move either); use 0.1")
        check(isinstance(self.projection_seed, int), f"projection_seed must be an integer, got {self.projection_seed!r}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(self.compute in COMPUTE_PATHS, f"compute must be one of {', '.join(COMPUTE_PATHS)}, got {self.compute!r}")


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-b, b) with b = sqrt(6 / fan_in): Kaiming-uniform with gain sqrt(2), fan_in = shape[1]
    (the paper's "Kaiming initialisation" of A and B; PEFT draws A then B the same way)."""
    bound = math.sqrt(6.0 / shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class _VeraDelta(torch.autograd.Function):
    """W + dW with dW = diag(lambda_b) B diag(lambda_d) A, (out, in) (dW alone when W is None).

    The backward projects the weight gradient G = dL/dW once: with M = G A^T (out, r),
        dL/dlambda_b = (B * M) lambda_d,   dL/dlambda_d = lambda_b^T (B * M)
    (autograd through the two products would multiply G by A^T and by B^T).
    """

    @staticmethod
    def forward(ctx, W, lambda_b, lambda_d, A, B):
        ctx.save_for_backward(lambda_b, lambda_d, A, B)
        ctx.amp = autocast_state(A.device)  # bf16 under autocast: the backward computes in it too
        Bb, Ad = lambda_b[:, None] * B, lambda_d[:, None] * A  # (out, r), (r, in)
        return Bb @ Ad if W is None else torch.addmm(W, Bb, Ad)  # (out, in)

    @staticmethod
    def backward(ctx, G):
        lambda_b, lambda_d, A, B = ctx.saved_tensors
        with same_autocast(ctx.amp):
            BM = B * (G @ A.t())  # (out, r)
        BM = BM.to(lambda_d.dtype)
        return (G if ctx.needs_input_grad[0] else None), BM @ lambda_d, lambda_b @ BM, None, None


@register("vera")
class VeRA(Variant):
    """VeRA: Vector-based Random Matrix Adaptation. Kopiczko et al. 2023, arXiv 2310.11454.

        h = W0 x + lambda_b * (B (lambda_d * (A x))),   A: (r, in), B: (out, r) frozen random,
        shared by all layers (each slices A[:, :in], B[:out, :]); lambda_d: (r,), lambda_b: (out,)

    Init (Sec. 3.2): lambda_b = 0 (so h = W0 x), lambda_d = d_initial. No scaling factor.
    """

    description = "VeRA: shared frozen random A, B; trained vectors lambda_b, lambda_d (Kopiczko et al. 2023, arXiv 2310.11454)"
    Options = VeRAOptions

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        if shared is None or not hasattr(shared, "vera_A"):
            raise VariantError("VeRA layers need the shared projections; create them with lorabench.apply(model, 'vera')")
        self.lambda_d = nn.Parameter(torch.full((opts.r,), float(opts.d_initial)))  # (r,)
        self.lambda_b = nn.Parameter(torch.zeros(out_features))  # (out,)
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()

    @classmethod
    def shared_state(cls, shapes, opts):
        # One A sized for the widest input and one B for the widest output (Sec. 3.1);
        # drawn from a dedicated generator so the same seed gives the same projections.
        max_in = max(i for i, _ in shapes)
        max_out = max(o for _, o in shapes)
        generator = torch.Generator(device="cpu").manual_seed(opts.projection_seed)
        vera_A = kaiming_uniform((opts.r, max_in), generator)  # (r, max_in)
        vera_B = kaiming_uniform((max_out, opts.r), generator)  # (max_out, r)
        return {"vera_A": vera_A, "vera_B": vera_B}

    @property
    def vera_A(self) -> torch.Tensor:
        return self.shared.vera_A[:, : self.in_features]  # (r, in), a view

    @property
    def vera_B(self) -> torch.Tensor:
        return self.shared.vera_B[: self.out_features, :]  # (out, r), a view

    # ---- compute ---------------------------------------------------------------------
    def delta(self, x):
        z = F.linear(self.dropout(x), self.vera_A.to(x.dtype)) * self.lambda_d.to(x.dtype)  # (..., r)
        return F.linear(z, self.vera_B.to(x.dtype)) * self.lambda_b.to(x.dtype)  # (..., out)

    def pack_factors(self):
        """(diag(lambda_d) A, diag(lambda_b) B, 1): the same low-rank product, for a pack's batched
        product (``lorabench.pack``); the gradients reach lambda_d, lambda_b through the scalings."""
        return self.lambda_d[:, None] * self.vera_A, self.lambda_b[:, None] * self.vera_B, 1.0

    @classmethod
    def unpackable(cls):
        """VeRA packs: its change is a rank-r product with per-run diagonal scalings of frozen A, B."""
        return None

    def delta_weight(self):
        return _VeraDelta.apply(None, self.lambda_b, self.lambda_d, self.vera_A, self.vera_B)  # (out, in)

    def merged_is_cheaper(self, x: torch.Tensor) -> bool:
        """Flop count of the two equivalent paths for this call (r = VeRA's rank, T tokens):
        per_token: 2 T r (in + out) forward, the same again backward;
        merged:    2 r in out to form dW (twice when training: also projecting dL/dW),
                   plus the weight gradient dL/dW = g^T x, 2 T in out, when training."""
        T, r, n_in, n_out = x.numel() // self.in_features, self.opts.r, self.in_features, self.out_features
        training = torch.is_grad_enabled() and self.lambda_b.requires_grad
        per_token = 2 * T * r * (n_in + n_out) * (2 if training else 1)
        merged = 2 * r * n_in * n_out * (2 if training else 1) + (2 * T * n_in * n_out if training else 0)
        return merged < per_token

    def forward(self, x, layer):
        W = layer.weight  # (out, in), frozen
        dropout_active = self.training and self.opts.dropout > 0
        mode = self.opts.compute
        if mode == "auto":
            # Low precision stays per token: a small dW would round away in bf16 W + dW.
            full_precision = W.dtype in (torch.float32, torch.float64)
            mode = "merged" if full_precision and not dropout_active and self.merged_is_cheaper(x) else "per_token"
        if mode == "per_token":
            return layer.base_layer(x) + self.delta(x)
        if dropout_active:
            raise VariantError(
                "VeRA compute='merged' cannot apply dropout to the adapter input; use compute='auto' or dropout=0"
            )
        # One matmul with W + dW; the gradients reach lambda_b, lambda_d through dW.
        dt = W.dtype
        factors = (self.lambda_b.to(dt), self.lambda_d.to(dt), self.vera_A.to(dt), self.vera_B.to(dt))
        return layer.linear(x, _VeraDelta.apply(W, *factors))

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        return opts.r + out_features

    # ---- PEFT export (peft_type VERA, projections saved in the state dict) -------------
    def peft_tensors(self):
        return {
            "vera_lambda_b": self.lambda_b.detach().contiguous(),
            "vera_lambda_d": self.lambda_d.detach().contiguous(),
        }

    def peft_config(self):
        o = self.opts
        return {
            "peft_type": "VERA",
            "r": o.r,
            "projection_prng_key": o.projection_seed,
            "save_projection": True,
            "vera_dropout": o.dropout,
            "d_initial": o.d_initial,
        }

    # ---- PEFT import (a folder without its projections regenerates them: same seed, same draws) --
    peft_method = "VERA"
    peft_names = {"vera_lambda_b": "lambda_b", "vera_lambda_d": "lambda_d"}

    @classmethod
    def options_from_peft(cls, config):
        for unused in ("save_projection", "init_weights"):
            config.pop(unused, None)
        return {"r": config.pop("r"), "projection_seed": config.pop("projection_prng_key", 0),
                "d_initial": float(config.pop("d_initial", 0.1)), "dropout": float(config.pop("vera_dropout", 0.0))}

    @classmethod
    def peft_shared_names(cls):
        return {"base_model.vera_A": "vera_A", "base_model.vera_B": "vera_B"}

    @classmethod
    def peft_shared_tensors(cls, shared: nn.Module) -> dict[str, torch.Tensor]:
        """The shared projections under their full keys in PEFT's adapter_model.safetensors."""
        return {
            "base_model.vera_A": shared.vera_A.detach().contiguous(),
            "base_model.vera_B": shared.vera_B.detach().contiguous(),
        }
