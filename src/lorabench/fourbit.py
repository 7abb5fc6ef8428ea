"""4-bit NF4 base weights (QLoRA) through bitsandbytes.

``lorabench.quant.quantize_model(model)`` replaces the target linear layers (default: every linear layer
but the task head and ``lm_head``) with ``bitsandbytes.nn.Linear4bit``; the ``qlora``
variant does the same to the layers it adapts. bitsandbytes >= 0.50 (tested: 0.50.2) runs
NF4 on CPU too: ``pip install 'lorabench[quant]'``. On CUDA the same code uses its GPU kernels.

Storage (Dettmers et al. 2023, arXiv 2305.14314, Sec. 3): the weight is cut into blocks of
64 values, each block is scaled by its absmax into [-1, 1] and every value is stored as the
4-bit index of the nearest NF4 level (``NF4_CODE``). With double quantisation the fp32
absmax constants are themselves quantised to 8 bits in blocks of 256 (minus their mean):
4 + 8/64 + 32/(64*256) ~ 4.127 bits per weight instead of 32 (4.5 without).

This module holds the 4-bit layers' storage; ``quant.py`` the model-level pass. The rest of
lorabench touches a 4-bit layer only through the functions below
(``is_quantized``, ``dequantize``, ``dense_linear``), so bitsandbytes is imported only
when a model holds such a layer.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .choices import QUANT_TYPES
from .errors import VariantError

#: The 16 NormalFloat4 levels of the QLoRA paper (Appendix E): quantiles of N(0, 1) with an
#: exact zero, normalised to [-1, 1].
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
COMPUTE_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BLOCKSIZE = 64  # QLoRA: block size 64 for the weights, 256 for the double-quantised constants


def bitsandbytes():
    """The bitsandbytes module, or a VariantError that says how to install it."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise VariantError(
            "4-bit base weights need bitsandbytes, which is not installed; "
            "pip install 'lorabench[quant]' (bitsandbytes >= 0.50 also runs NF4 on CPU)"
        ) from None
    return bnb


def available() -> bool:
    try:
        bitsandbytes()
    except VariantError:
        return False
    return True


def is_quantized(layer: nn.Module) -> bool:
    """True for a bitsandbytes 4-bit linear layer (never imports bitsandbytes itself)."""
    bnb = sys.modules.get("bitsandbytes")
    return bnb is not None and isinstance(layer, bnb.nn.Linear4bit)


def check_options(quant_type: str, compute_dtype: str) -> None:
    if quant_type not in QUANT_TYPES:
        raise VariantError(f"quant_type must be one of {', '.join(QUANT_TYPES)}, got {quant_type!r}; QLoRA uses 'nf4'")
    if compute_dtype not in COMPUTE_DTYPES:
        raise VariantError(
            f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}; "
            "'auto' computes in the input's dtype, QLoRA uses 'bfloat16' on GPUs"
        )


@torch.no_grad()
def quantize_linear(
    layer: nn.Module, quant_type: str = "nf4", double_quant: bool = True, compute_dtype: str = "auto"
) -> nn.Module:
    """A ``bitsandbytes.nn.Linear4bit`` holding ``layer``'s weight in 4 bits (its bias as is).

    ``layer`` is an ``nn.Linear`` or a GPT-2 ``Conv1D`` (stored ``(in, out)``, transposed
    here). A layer that is already 4-bit is returned unchanged.
    """
    if is_quantized(layer):
        return layer
    check_options(quant_type, compute_dtype)
    bnb = bitsandbytes()
    w = layer.weight.detach()
    weight = w if isinstance(layer, nn.Linear) else w.t()  # (out, in)
    if weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise VariantError(f"cannot quantize a {weight.dtype} weight to 4 bits; load the model in float32, bfloat16 or float16")
    out_f, in_f = weight.shape
    bias = getattr(layer, "bias", None)
    q = bnb.nn.Linear4bit(
        in_f, out_f, bias=bias is not None, compute_dtype=COMPUTE_DTYPES[compute_dtype],
        compress_statistics=double_quant, quant_type=quant_type, device="meta",
    )
    q.weight = bnb.nn.Params4bit(
        weight.contiguous(), requires_grad=False, blocksize=BLOCKSIZE,
        compress_statistics=double_quant, quant_type=quant_type, module=q,
    ).to(weight.device)  # quantisation happens on this move
    if bias is not None:
        q.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    # bitsandbytes' CPU inference path re-packs the weight in place with bf16 constants the
    # first time it runs in eval mode on AVX512-BF16 machines; that changes results between
    # train and eval and is not exactly invertible, so lorabench keeps the one layout.
    q.support_avx512bf16_for_cpu = False
    q.train(layer.training)
    return q


def dequantize(layer: nn.Module) -> torch.Tensor:
    """The 4-bit weight as a float tensor, ``(out, in)``, in the dtype it was quantized from."""
    bnb = bitsandbytes()
    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)


@torch.no_grad()
def dense_linear(layer: nn.Module, weight: torch.Tensor) -> nn.Linear:
    """A full-precision ``nn.Linear`` with ``weight`` (out, in) and the 4-bit ``layer``'s bias."""
    out_f, in_f = weight.shape
    dense = nn.Linear(in_f, out_f, bias=layer.bias is not None, device="meta")
    dense.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if layer.bias is not None:
        dense.bias = layer.bias  # shared: a merge never changes the bias
    dense.train(layer.training)
    return dense


def stored_bytes(layer: nn.Module) -> int:
    """Bytes of everything the 4-bit weight is stored as: the packed 4-bit codes, the absmax
    constants (8-bit + their own fp32 constants and code book with double quantisation) and
    the 16-entry code book. The bias is not counted."""
    state = layer.weight.quant_state
    tensors = [layer.weight.data, state.absmax, state.code]
    if state.nested:
        tensors += [state.state2.absmax, state.state2.code, state.offset]
    return sum(t.numel() * t.element_size() for t in tensors)
