"""CP-LoRA: a CP (CANDECOMP/PARAFAC) decomposed update of a convolution kernel.

Minoccheri, Hodgman, Ma, Merchant, Wittrup, Williamson & Najarian 2025, "LoRA-based methods on Unet for
transfer learning in Subarachnoid Hematoma Segmentation", arXiv 2508.01772. Its code is not public (no
repository found); this is lorabench's reading of the paper's CP-LoRA: the kernel update, a 4-way tensor
(out, in, kh, kw), is a rank-r CP decomposition instead of LoRA-C's matrix product,

    dW[o, i, h, w] = s * sum_r U_out[o, r] U_in[i, r] U_h[h, r] U_w[w, r],   s = alpha / r,

with r * (out + in + kh + kw) trainable numbers (LoRA-C: r * (in*kh*kw + out)). A conv layer computed
from CP factors is the classic CP-decomposed convolution (Lebedev, Ganin, Rakhuba, Oseledets &
Lempitsky 2015, "Speeding-up convolutional neural networks using fine-tuned CP-decomposition", arXiv
1412.6553): a 1x1 conv (in -> r), a depthwise (kh x 1) and a depthwise (1 x kw) conv, a 1x1 conv (r ->
out). Here it carries only the update, beside the frozen kernel (as LoRA-C / CoLoRA carry a low-rank one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import check
from .conv import ConvVariant
from .registry import register


@dataclass
class CPLoRAOptions:
    r: int = 8  # CP rank (rank-one terms); lorabench's LoRA default (the paper sweeps ranks, favouring high ones)
    alpha: float = 8.0  # s = alpha / r: scale 1 at the default, as lorabench's LoRA
    dropout: float = 0.0  # on the adapter's input, as LoRA's

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=8")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}; alpha = r gives scale 1")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")


@register("cp_lora")
class CPLoRA(ConvVariant):
    """CP-LoRA (Minoccheri et al. 2025, arXiv 2508.01772): nn.Conv2d only.

        h = conv(x; W0) + b + s * sum_r U_out[:, r] (U_in, U_h, U_w)-separable conv of x,   s = alpha / r

    Computed as four convolutions (1x1 in -> r; depthwise kh x 1 with the base's vertical stride,
    padding and dilation; depthwise 1 x kw with the horizontal ones; 1x1 r -> out), never by building
    dW. Init (lorabench's reading; the paper's code is not public): U_out = 0, so the output equals
    the base at init (as LoRA's B = 0); U_in, U_h, U_w ~ U(-1/sqrt(dim), 1/sqrt(dim)), so their product
    has the scale of LoRA-C's Kaiming-uniform A, U(-1/sqrt(in*kh*kw), ...).
    """

    description = ("CP-LoRA: conv kernel update as a rank-r CP decomposition, r*(out+in+kh+kw) params; nn.Conv2d "
                   "only (Minoccheri et al. 2025, arXiv 2508.01772)")
    Options = CPLoRAOptions

    def __init__(self, in_features, out_features, opts, shared=None, kernel_size=(1, 1)):
        super().__init__(in_features, out_features, opts, shared, kernel_size)
        r, (kh, kw) = opts.r, self.kernel_size
        self.U_out = nn.Parameter(torch.zeros(out_features, r))  # (out, r): zero, so dW = 0 at init
        self.U_in = nn.Parameter(torch.empty(self.in_channels, r))  # (in, r)
        self.U_h = nn.Parameter(torch.empty(kh, r))  # (kh, r)
        self.U_w = nn.Parameter(torch.empty(kw, r))  # (kw, r)
        for U in (self.U_in, self.U_h, self.U_w):
            bound = 1.0 / math.sqrt(U.shape[0])
            nn.init.uniform_(U, -bound, bound)
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()

    @property
    def scale(self) -> float:
        return self.opts.alpha / self.opts.r

    def conv_forward(self, x, layer):
        b = layer.base_layer
        r, (kh, kw), dtype = self.opts.r, self.kernel_size, self.dtype
        (sh, sw), (dh, dw) = b.stride, b.dilation
        # 'same' / 'valid' apply per spatial dim, so each separable stage takes the string itself.
        pad_h, pad_w = (b.padding, b.padding) if isinstance(b.padding, str) else ((b.padding[0], 0), (0, b.padding[1]))
        z = F.conv2d(self.dropout(x.to(dtype)), self.U_in.t().reshape(r, -1, 1, 1))  # (N, r, H, W)
        # A 1x1 conv without bias maps zero padding to zero padding, so padding after it is the same.
        z = F.conv2d(z, self.U_h.t().reshape(r, 1, kh, 1), None, (sh, 1), pad_h, (dh, 1), groups=r)  # (N, r, H', W)
        z = F.conv2d(z, self.U_w.t().reshape(r, 1, 1, kw), None, (1, sw), pad_w, (1, dw), groups=r)  # (N, r, H', W')
        delta = F.conv2d(z, self.U_out.reshape(-1, r, 1, 1)) * self.scale  # (N, out, H', W')
        return b(x) + delta.to(x.dtype)

    def kernel_delta(self) -> torch.Tensor:
        """dW as a kernel (out, in, kh, kw)."""
        return self.scale * torch.einsum("or,ir,hr,wr->oihw", self.U_out, self.U_in, self.U_h, self.U_w)

    def delta_weight(self):
        return self.kernel_delta().reshape(self.out_features, -1)  # (out, in*kh*kw)

    @classmethod
    def num_trainable_conv(cls, in_channels, out_channels, kh, kw, opts):
        return opts.r * (out_channels + in_channels + kh + kw)
