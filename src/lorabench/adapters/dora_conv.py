"""DoRA-C: DoRA on an ``nn.Conv2d`` (variant ``dora`` targeted at a conv layer).

Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv 2402.09353 (NVlabs/DoRA), in
the conv form of huggingface/peft (``tuners/lora/dora.py``, ``_DoraConvNdLayer``):

    h = (m / n) * (conv(x; W0) + s * B(A(x))) + b,   n = ||W0 + s dW||_(1,2,3)  (one per output channel)

with ``dW = B A`` the LoRA-C update as an (out, in*kh*kw) matrix, ``m`` (out,) initialised to
``||W0||_(1,2,3)``, the norm detached from the graph (Sec. 4.3), and the bias added after the scaling,
not scaled. With dropout, as PEFT: h = conv(x; W0) + b + (m/n - 1) conv(x_d; W0) + (m/n) s B(A(x_d)).
Merge and unmerge are DoRA's own (``DoRA.merged_weight``): the row norm of the (out, in*kh*kw) matrix
is the norm over dims (1, 2, 3) of the kernel.
"""

from __future__ import annotations

import torch

from .base import Variant
from .conv import AdaptedConv2d, lowrank_conv


def dora_conv_forward(v: Variant, x: torch.Tensor, layer: AdaptedConv2d) -> torch.Tensor:
    W, s, dtype = layer.weight, v.scale, x.dtype  # W: (out, in*kh*kw), frozen
    with torch.no_grad():  # n detached (Sec. 4.3), in fp32 so that a small s B A is not rounded away
        n = torch.linalg.vector_norm(torch.addmm(W.float(), v.lora_B.float(), v.lora_A.float(), alpha=s), dim=1)
    dropout = v.training and v.opts.dropout > 0
    x_d = v.dropout(x) if dropout else x
    wx = layer.conv(x_d, W.to(dtype))  # (N, out, H', W'), no bias
    u = wx + lowrank_conv(v.lora_A.to(dtype), v.lora_B.to(dtype), s, x_d, layer)  # (N, out, H', W')
    scale = (v.magnitude / n).to(u.dtype)[None, :, None, None]  # (1, out, 1, 1)
    bias = layer.bias
    if dropout:
        return layer.base_layer(x) + u * scale - wx
    return u * scale if bias is None else u * scale + bias.to(u.dtype)[None, :, None, None]
