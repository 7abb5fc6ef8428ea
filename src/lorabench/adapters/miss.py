"""MiSS (formerly Bone): one small trained block shared by every shard of the weight."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import Variant, VariantError, check

MODES = ("balance", "bat", "mini")


@dataclass
class MiSSOptions:
    r: int = 64  # shard width along the input (PEFT's default)
    # "balance": dW[o, j] = D[j mod r, o], D (r, out)  -- PEFT's default (init_weights=True)
    # "bat":     block-affine, each r x r block W_ij -> W_ij + W_ij D_i + D_i, D (out / r, r, r)
    # "mini":    balance with D (r, mini_r) repeated out / mini_r times along the output
    mode: str = "balance"
    mini_r: int = 1  # mode="mini" only: width of D along the output
    dropout: float = 0.0

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=64")
        check(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check(isinstance(self.mini_r, int) and self.mini_r > 0, f"mini_r must be a positive integer, got {self.mini_r!r}")
        check(
            self.mode == "mini" or self.mini_r == 1,
            f"mini_r={self.mini_r} only applies to mode='mini'; add mode='mini' or drop mini_r",
        )
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(
            self.mode != "bat" or self.dropout == 0,
            "mode='bat' rewrites the weight and has no adapter input to drop (PEFT's neither); use dropout=0",
        )


@register("miss")
class MiSS(Variant):
    """MiSS: Balancing LoRA Performance and Efficiency with Simple Shard Sharing (first published as
    "Bone: Block-Affine Adaptation of Large Language Models"). Kang & Yin 2024, arXiv 2409.15371.

        balance (default): h = W0 x + (sum_k x_k) D,  x_k the k-th width-r shard of x (zero-padded),
                           D (r, out):  dW[o, j] = D[j mod r, o]
        bat:  W -> W + W_ij D_i + D_i for every r x r block W_ij (output block i), D (out/r, r, r)

    D = 0 at init (h = W0 x), as PEFT's default initialisation.
    """

    description = "MiSS/Bone: one trained shard D shared by all width-r input shards; bat: block-affine (Kang & Yin 2024, arXiv 2409.15371)"
    Options = MiSSOptions

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        r = opts.r
        shape = {
            "balance": (r, out_features),  # (r, out)
            "mini": (r, opts.mini_r),  # (r, mini_r)
            "bat": (out_features // r, r, r),  # (out / r, r, r): one r x r block per output block
        }[opts.mode]
        self.miss_block = nn.Parameter(torch.zeros(shape))
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()

    @classmethod
    def check_layer(cls, in_features, out_features, opts, layer_name):
        r = opts.r
        if r > in_features:
            raise VariantError(f"r={r} is larger than in_features={in_features} of layer {layer_name!r}; choose r <= {in_features}")
        if opts.mode == "bat" and (in_features % r or out_features % r):
            raise VariantError(
                f"mode='bat' cuts the weight into r x r blocks, but layer {layer_name!r} is {out_features} x {in_features} "
                f"and r={r} divides neither side evenly; choose r dividing both, or mode='balance'"
            )
        if opts.mode == "mini" and out_features % opts.mini_r:
            raise VariantError(
                f"mini_r={opts.mini_r} must divide out_features={out_features} of layer {layer_name!r}; "
                "choose a divisor of every target's output size"
            )

    # ---- balance / mini: additive ---------------------------------------------------------
    def shard(self) -> torch.Tensor:
        """D as (r, out): the mini block repeated along the output in mode 'mini'."""
        D = self.miss_block
        return D.repeat(1, self.out_features // self.opts.mini_r) if self.opts.mode == "mini" else D

    def delta(self, x):
        r = self.opts.r
        pad = -self.in_features % r
        x = self.dropout(x)
        if pad:  # F.pad copies x even for a zero pad
            x = F.pad(x, (0, pad))  # (..., ceil(in / r) r)
        summed = x.reshape(*x.shape[:-1], -1, r).sum(-2)  # (..., r): sum of the input shards
        return summed @ self.shard()  # (..., out)

    def delta_weight(self):
        if self.opts.mode == "bat":
            raise VariantError("MiSS mode='bat' has no weight-independent update; use merged_weight(W)")
        r = self.opts.r
        reps = math.ceil(self.in_features / r)
        return self.shard().t().repeat(1, reps)[:, : self.in_features]  # (out, in): dW[o, j] = D[j mod r, o]

    # ---- bat: block-affine, W_ij -> W_ij (I + D_i) + D_i -------------------------------------
    def blocks(self, weight: torch.Tensor) -> torch.Tensor:
        r = self.opts.r
        return weight.reshape(self.out_features // r, r, self.in_features // r, r).transpose(1, 2)  # (out/r, in/r, r, r)

    def unblocks(self, blocks: torch.Tensor) -> torch.Tensor:
        return blocks.transpose(1, 2).reshape(self.out_features, self.in_features)  # (out, in)

    def forward(self, x, layer):
        if self.opts.mode != "bat":
            return super().forward(x, layer)
        W = layer.weight  # (out, in), frozen
        return layer.linear(x, self.merged_weight(W))  # the gradient reaches D through W'

    def merged_weight(self, weight):
        if self.opts.mode != "bat":
            return super().merged_weight(weight)
        D = self.miss_block.to(weight.dtype)[:, None]  # (out/r, 1, r, r)
        Wb = self.blocks(weight)
        return self.unblocks(Wb + Wb @ D + D)

    def unmerged_weight(self, merged):
        if self.opts.mode != "bat":
            return super().unmerged_weight(merged)
        # W' = W (I + D) + D  =>  W = (W' - D) (I + D)^-1  (PEFT unmerges the same way)
        D = self.miss_block.float()[:, None]  # (out/r, 1, r, r)
        eye = torch.eye(self.opts.r, device=D.device)
        Wb = (self.blocks(merged.float()) - D) @ torch.linalg.inv(eye + D)
        return self.unblocks(Wb).to(merged.dtype)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        r = opts.r
        return {"balance": r * out_features, "mini": r * opts.mini_r, "bat": out_features * r}[opts.mode]

    # ---- PEFT export (peft_type MISS) ------------------------------------------------------
    def peft_tensors(self):
        return {"miss_block": self.miss_block.detach().contiguous()}

    peft_method = "MISS"
    peft_names = {"miss_block": "miss_block"}

    @classmethod
    def options_from_peft(cls, config):
        init = config.pop("init_weights", True)  # True / False (zero / random D): balance; "bat"; "mini"
        return {"r": config.pop("r"), "mode": init if init in ("bat", "mini") else "balance",
                "mini_r": config.pop("mini_r", 1), "dropout": float(config.pop("miss_dropout", 0.0))}

    def peft_config(self):
        # (PEFT's MiSS adapts nn.Linear only: an export from GPT-2's Conv1D layers does not load there.)
        o = self.opts
        init = {"balance": True, "bat": "bat", "mini": "mini"}[o.mode]
        return {"peft_type": "MISS", "r": o.r, "mini_r": o.mini_r, "init_weights": init, "miss_dropout": o.dropout}
