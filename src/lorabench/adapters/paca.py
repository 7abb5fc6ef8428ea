"""PaCA: fine-tune r randomly chosen input columns of W directly, no adapter branch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .registry import register
from .base import Variant, VariantError, check


@dataclass
class PaCAOptions:
    r: int = 8  # trained input columns (connections) per layer
    alpha: float = 8.0  # the columns are s * paca_w, s = alpha / r (official PacaConfig: r = paca_alpha = 8)

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=8")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}; the official default is alpha = r")


def with_columns(weight: torch.Tensor, idx: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """A copy of ``weight`` (out, in) whose columns ``idx`` are ``cols`` (out, r)."""
    return weight.detach().index_copy(1, idx, cols.detach().to(weight.dtype))


class PartialLinear(torch.autograd.Function):
    """y = x W_eff^T with W_eff = W whose columns idx are ``cols``: one matmul forward; backward
    keeps only x[..., idx] (Sec. 3: PaCA stores partial activations), dcols = dy^T x[..., idx]."""

    @staticmethod
    def forward(ctx, x, weight, cols, idx):
        ctx.save_for_backward(x[..., idx], weight, cols, idx)  # (..., r): the partial activations
        return x @ with_columns(weight, idx, cols).to(x.dtype).T  # (..., out)

    @staticmethod
    def backward(ctx, grad_out):
        x_part, weight, cols, idx = ctx.saved_tensors
        grad_x = grad_cols = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ with_columns(weight, idx, cols).to(grad_out.dtype)  # (..., in)
        if ctx.needs_input_grad[2]:
            g = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
            grad_cols = (g.T @ x_part.reshape(-1, x_part.shape[-1]).to(g.dtype)).to(cols.dtype)  # (out, r)
        return grad_x, None, grad_cols, None


@register("paca")
class PaCA(Variant):
    """PaCA: Partial Connection Adaptation for Efficient Fine-Tuning.
    Woo, Namkung, Lee, Jeong, Kim & Jeon 2025, arXiv 2503.01905 (ICLR 2025).

        idx = r random input columns (seeded, saved);  W_eff = W with W_eff[:, idx] = s * paca_w
        h = W_eff x + b  (one matmul, no adapter branch),  paca_w init W[:, idx] / s,  s = alpha / r

    The trained tensor is the selected connections themselves (r * out values per layer), so the
    output is unchanged at init, training needs only the r selected input features of each
    activation, and merging writes the columns into W. The original columns are kept as the
    buffer ``paca_w0`` for unmerge and for the export as a rank-r LoRA (A = one-hot rows).
    """

    description = "PaCA: fine-tune r random input columns of W in place, one matmul, no adapter (Woo et al. 2025, arXiv 2503.01905)"
    Options = PaCAOptions

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        r = opts.r
        self.register_buffer("paca_indices", torch.zeros(r, dtype=torch.long))  # (r,) selected input columns
        self.paca_w = nn.Parameter(torch.zeros(out_features, r))  # (out, r), the columns / s
        self.register_buffer("paca_w0", torch.zeros(out_features, r))  # (out, r), W[:, idx] at init

    @classmethod
    def check_layer(cls, in_features, out_features, opts, layer_name):
        if opts.r > in_features:
            raise VariantError(
                f"r={opts.r} is larger than the {in_features} input columns of layer {layer_name!r}, "
                f"of which PaCA trains r; choose r <= {in_features}"
            )

    @property
    def scale(self) -> float:
        return self.opts.alpha / self.opts.r

    @torch.no_grad()
    def init_from_base(self, weight):
        # torch's RNG, as the official torch.randperm(in)[:r]: the run seed makes it repeatable,
        # and each layer gets its own columns. Sorted only for readability.
        idx = torch.randperm(self.in_features)[: self.opts.r].sort().values
        self.paca_indices.copy_(idx)
        self.paca_w0.copy_(weight[:, idx])
        self.paca_w.copy_(weight[:, idx] / self.scale)

    # ---- compute -----------------------------------------------------------------------
    def forward(self, x, layer):
        cols = self.scale * self.paca_w  # (out, r)
        out = PartialLinear.apply(x, layer.weight, cols, self.paca_indices)  # (..., out)
        return out if layer.bias is None else out + layer.bias

    def delta_weight(self):
        # Zero except the selected columns: s paca_w - W[:, idx].
        dW = torch.zeros(self.out_features, self.in_features, device=self.paca_w.device, dtype=self.paca_w.dtype)
        return dW.index_copy(1, self.paca_indices, self.scale * self.paca_w - self.paca_w0)  # (out, in)

    def merged_weight(self, weight):
        return with_columns(weight, self.paca_indices, self.scale * self.paca_w)  # written, not added

    def unmerged_weight(self, merged):
        return with_columns(merged, self.paca_indices, self.paca_w0)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        return opts.r * out_features

    # ---- PEFT export: a rank-r LoRA, lora_A = one-hot rows e_idx, lora_B = s paca_w - W[:, idx]
    def peft_tensors(self):
        A = torch.zeros(self.opts.r, self.in_features, device=self.paca_w.device)  # (r, in)
        A[torch.arange(self.opts.r, device=A.device), self.paca_indices] = 1.0
        B = self.scale * self.paca_w - self.paca_w0  # (out, r)
        return {"lora_A.weight": A.contiguous(), "lora_B.weight": B.detach().contiguous()}

    def peft_config(self):
        r = self.opts.r
        return {"peft_type": "LORA", "r": r, "lora_alpha": r, "use_rslora": False, "lora_dropout": 0.0}
