"""DoRA: weight-decomposed low-rank adaptation.

A subclass of ``LoRA``, so every LoRA init (``init="pissa"``, ``"olora"`` ...) and
option (``rslora``, ``dropout``) combines with it.

Speed: in fp32, W + sBA is formed once per step (an (out, in) matrix, cheap next to the
(T, in) activations) and serves the norm, the forward matmul and dL/dx, with a hand-written
backward (``_DoRALinear``); per token this costs about what LoRA does. Low-precision weights
keep the LoRA term apart instead (a small sBA would round away in bf16 W + sBA) and get the
norm from a cached ||W||^2 without an (out, in) temporary (``DoRA.weight_norm``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast_state, same_autocast
from .registry import register
from .base import VariantError
from .dora_conv import dora_conv_forward
from .lora import LoRA, LoRAOptions


@dataclass
class DoRAOptions(LoRAOptions):
    # False (default): the magnitude m is not weight-decayed (see DoRA.param_groups); True: it decays
    # with the run's weight decay, as PEFT + the HF Trainer (and the official DoRA runs built on them) do.
    magnitude_weight_decay: bool = False


class _DoRALinear(torch.autograd.Function):
    """y = scale * u + b,  u = x V^T,  V = W + s B A (formed once, without grad),
    scale = m / n (out,). Gradients as if the LoRA term were kept apart (n constant, Sec. 4.3):

        dL/dx = g (scale * V),  dL/dA = s (g (scale * B))^T x,  dL/dB = s scale * (g^T (x A^T)),
        dL/dscale = sum_t g * u

    One (T, in) x (in, out) matmul each way, as for the frozen layer, plus rank-r products.
    """

    @staticmethod
    def forward(ctx, x, V, bias, A, B, scale, s):
        z = F.linear(x, A)  # (T, r)
        u = F.linear(x, V)  # (T, out)
        ctx.save_for_backward(x, V, A, B, scale, z)
        ctx.s, ctx.u = s, u  # u is consumed in place by the first backward (no (T, out) temporary)
        ctx.amp = autocast_state(x.device)  # bf16 under autocast: the backward computes in it too
        return u * scale if bias is None else torch.addcmul(bias, u, scale)

    @staticmethod
    def backward(ctx, g):
        with same_autocast(ctx.amp):
            return _DoRALinear.gradients(ctx, g)

    @staticmethod
    def gradients(ctx, g):
        x, V, A, B, scale, z = ctx.saved_tensors
        s = ctx.s
        need_x, _, need_b, need_A, need_B, need_scale, _ = ctx.needs_input_grad
        grad_x = g @ (scale[:, None] * V) if need_x else None  # (T, in)
        grad_b = g.sum(0) if need_b else None  # (out,)
        grad_A = ((g @ (scale[:, None] * B)).t() @ x).mul_(s) if need_A else None  # (r, in)
        # (z^T g)^T, not g^T z: the same numbers, but MKL is ~15x slower at the latter on CPU
        grad_B = (z.t() @ g).t() * (s * scale[:, None]) if need_B else None  # (out, r)
        grad_scale = None
        if need_scale:
            u = ctx.u if ctx.u is not None else F.linear(x, V)  # recomputed on a retained graph
            ctx.u = None
            grad_scale = u.mul_(g).sum(0) if u.dtype == g.dtype else (u * g).sum(0)  # (out,) = sum_t g * u
        return grad_x, None, grad_b, grad_A, grad_B, grad_scale, None


@register("dora")
class DoRA(LoRA):
    """DoRA: Weight-Decomposed Low-Rank Adaptation. Liu et al. 2024, arXiv 2402.09353.

        W' = m * (W + s B A) / ||W + s B A||_row,   m: (out,) initialised to ||W||_row

    The row norm (one per output feature, the paper's column norm of W in (in, out)
    orientation) is treated as a constant and detached from the graph (Sec. 4.3).

    Weight decay: by default the magnitude m is excluded (``magnitude_weight_decay=False``), a
    lorabench choice. PEFT's DoRA (``lora_magnitude_vector``) under the HF Trainer decays m like every
    weight that is not a bias or a LayerNorm; ``magnitude_weight_decay=True`` does the same. (The
    official commonsense script, NVlabs/DoRA commonsense_reasoning/finetune.py, trains with the
    Trainer at weight_decay = 0, where the two agree.)
    """

    description = ("DoRA: magnitude m * direction (W+sBA)/||W+sBA||; m not weight-decayed (magnitude_weight_decay=True: "
                   "decayed, as PEFT + HF Trainer) (Liu et al. 2024, arXiv 2402.09353)")
    Options = DoRAOptions

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        self.magnitude = nn.Parameter(torch.ones(out_features))  # (out,)
        self._w_norm_sq_cache: tuple | None = None  # (key, weakref to W, ||W||_row^2)
        self._merge_norm: torch.Tensor | None = None  # n at merge time, for unmerge

    def init_from_base(self, weight):
        super().init_from_base(weight)
        # ``apply`` subtracts base_offset() (PiSSA/OLoRA residual) only after this call,
        # so m is the row norm of what forward will see: (W - offset) + s B A.
        offset = self.base_offset()
        V = weight if offset is None else weight - offset.to(weight)
        with torch.no_grad():
            V = V + self.scale * (self.lora_B @ self.lora_A)  # (out, in)
            self.magnitude.copy_(torch.linalg.vector_norm(V, dim=1))

    # ---- the detached row norm n = ||W + s B A||_row ----------------------------------
    def _weight_norm_sq(self, W: torch.Tensor) -> torch.Tensor:
        """||W||_row^2 (fp32), cached: W is frozen, so it changes only when written in place
        (merge, residual subtraction, load: its version counter moves) or replaced (a new tensor)."""
        owner = W if W._base is None else W._base  # the Parameter behind a transposed view
        try:
            key = (owner.data_ptr(), owner._version, W.dtype, W.device, tuple(W.shape), W.stride())
        except RuntimeError:  # inference tensors have no version counter: no cache
            key = None
        cached = self._w_norm_sq_cache
        if key is not None and cached is not None and cached[0] == key and cached[1]() is owner:
            return cached[2]
        norm_sq = W.float().square().sum(dim=1)  # (out,)
        self._w_norm_sq_cache = None if key is None else (key, weakref.ref(owner), norm_sq)
        return norm_sq

    @torch.no_grad()
    def weight_norm(self, W: torch.Tensor) -> torch.Tensor:
        """n = ||W + s B A||_row, (out,) fp32, without forming an (out, in) matrix; W is
        frozen, so ||W||^2 is cached and each step costs one (out, in) x (in, r) product:

            ||W + sBA||^2 = ||W||^2 + rowsum(B * (2s W A^T + s^2 B (A A^T)))
        """
        A, B, s = self.lora_A.float(), self.lora_B.float(), self.scale
        M = torch.addmm(W.float() @ A.t(), B, A @ A.t(), beta=2 * s, alpha=s * s)  # (out, r)
        return (self._weight_norm_sq(W) + torch.linalg.vecdot(B, M)).clamp_min_(0).sqrt_()

    # ---- compute ---------------------------------------------------------------------
    def forward(self, x, layer):
        W = layer.weight  # (out, in), frozen
        lead, dtype, s = x.shape[:-1], x.dtype, self.scale
        x = x.reshape(-1, self.in_features)  # (T, in)
        dropout = self.training and self.opts.dropout > 0
        if dtype == W.dtype == self.lora_A.dtype == torch.float32 and not dropout:
            # fp32: V = W + sBA once per step serves the norm, the forward and dL/dx.
            with torch.no_grad():
                V = torch.addmm(W, self.lora_B, self.lora_A, alpha=s)  # (out, in)
            scale = self.magnitude / torch.linalg.vector_norm(V, dim=1)  # (out,); n detached (Sec. 4.3)
            y = _DoRALinear.apply(x, V, layer.bias, self.lora_A, self.lora_B, scale, s)
            return y.reshape(*lead, self.out_features)
        # Low precision keeps the LoRA term apart, so that a small sBA is not rounded away in W + sBA.
        A, B = self.lora_A.to(dtype), self.lora_B.to(dtype)
        scale = (self.magnitude / self.weight_norm(W)).to(dtype)  # (out,); n detached (Sec. 4.3)
        if not dropout:
            u = torch.addmm(F.linear(x, W), F.linear(x, A), B.t(), alpha=s)  # (T, out)
            y = u * scale if layer.bias is None else torch.addcmul(layer.bias, u, scale)
        else:
            # Dropout on the adapter input, as in the official implementation:
            # y = W x + b + (m/n - 1) W x_d + (m/n) s B A x_d
            x_d = self.dropout(x)
            wx_d = F.linear(x_d, W)  # (T, out)
            u = torch.addmm(wx_d, F.linear(x_d, A), B.t(), alpha=s)  # (T, out)
            y = F.linear(x, W, layer.bias) + u * scale - wx_d
        return y.reshape(*lead, self.out_features)

    def pack_scale(self, weight):
        """c = m / ||W + s B A||_row (n detached, Sec. 4.3), computed as ``forward`` computes it: in a
        pack the run's output is c * (W x_d + s B A x_d) + W (x - x_d) + b, its ``forward`` above."""
        fp32 = weight.dtype == self.lora_A.dtype == torch.float32 and not (self.training and self.opts.dropout > 0)
        if fp32:
            with torch.no_grad():
                n = torch.linalg.vector_norm(torch.addmm(weight, self.lora_B, self.lora_A, alpha=self.scale), dim=1)
            return self.magnitude / n  # (out,)
        return self.magnitude / self.weight_norm(weight)

    def conv_forward(self, x, layer):
        """DoRA-C: (m / ||W0 + s dW||) * (conv(x; W0) + s B(A(x))) + b (adapters/dora_conv.py)."""
        return dora_conv_forward(self, x, layer)

    def merged_weight(self, weight):
        V = weight + self.delta_weight().to(weight.dtype)  # (out, in)
        n = torch.linalg.vector_norm(V, dim=1)  # (out,)
        self._merge_norm = n
        return (self.magnitude.to(weight.dtype) / n)[:, None] * V

    def unmerged_weight(self, merged):
        if self._merge_norm is None:
            raise VariantError(
                "DoRA can only unmerge a weight it merged itself in this session; "
                "reload the base model and load the adapter instead"
            )
        V = merged * (self._merge_norm / self.magnitude.to(merged.dtype))[:, None]
        self._merge_norm = None
        return V - self.delta_weight().to(merged.dtype)

    # ---- optimisation ----------------------------------------------------------------
    def param_groups(self, lr, weight_decay):
        # By default the magnitude is not decayed: decay would pull every row of W' towards 0 (not
        # towards the pretrained weight, as decay on B does), and m plays the part of a norm gain,
        # which the usual transformer recipe exempts. (PEFT + HF Trainer do decay it.)
        if self.opts.magnitude_weight_decay:
            return super().param_groups(lr, weight_decay)
        groups = []
        for g in super().param_groups(lr, weight_decay):
            rest = [p for p in g["params"] if p is not self.magnitude]
            if rest:
                groups.append({**g, "params": rest})
        if self.magnitude.requires_grad:
            groups.append({"params": [self.magnitude], "lr": lr, "weight_decay": 0.0})
        return groups

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        return super().num_trainable_formula(in_features, out_features, opts) + out_features  # + magnitude (out,)

    # ---- PEFT export: LoRA factors + PEFT's magnitude vector ---------------------------
    def peft_tensors(self):
        return {**super().peft_tensors(), "lora_magnitude_vector": self.magnitude.detach().contiguous()}

    def peft_config(self):
        return {**super().peft_config(), "use_dora": True}

    # ---- PEFT import: a LoRA folder with use_dora --------------------------------------
    peft_method = "DORA"
    peft_names = {**LoRA.peft_names, "lora_magnitude_vector": "magnitude"}
