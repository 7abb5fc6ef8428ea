"""QLoRA-style 4-bit base weights for a whole model: ``quantize_model``.

The storage format (NF4/FP4 blocks through bitsandbytes) and the per-layer functions are in
``fourbit.py``, re-exported here so that ``lorabench.quant`` is the one place users look.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import VariantError
from .fourbit import (  # noqa: F401  (the public 4-bit API)
    BLOCKSIZE,
    COMPUTE_DTYPES,
    NF4_CODE,
    QUANT_TYPES,
    available,
    bitsandbytes,
    check_options,
    dense_linear,
    dequantize,
    is_quantized,
    quantize_linear,
    stored_bytes,
)
from .targets import find_targets, set_module


def quantize_model(
    model: nn.Module,
    targets: Any = "all-linear",
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: str = "auto",
) -> nn.Module:
    """Replace the ``targets`` linear layers of ``model`` (in place) by 4-bit ones.

    ``targets`` as in ``lorabench.apply``: ``"all-linear"`` (default: every linear layer but
    the task head and ``lm_head``, QLoRA's setting), a regex or a list of name suffixes.
    Returns the same model; its outputs change by the quantisation error.

    On a model adapted by ``lorabench.apply`` the frozen linear layers are quantized, the base
    layers under the adapters included: after a residual init (PiSSA, OLoRA) that stores the
    exact residual W - s B0 A0 in 4 bits, as QPiSSA does (Meng et al. 2024, arXiv 2404.02948).
    Linear layers that train (the adapters' own, full fine-tuning) are never quantized.
    """
    modules = dict(model.named_modules())
    names = find_targets(model, targets)
    if getattr(model, "lorabench_state", None) is not None:
        names = [n for n in names if not modules[n].weight.requires_grad]
        if not names:
            raise VariantError(
                f"variant {model.lorabench_state.variant!r} trains every targeted linear layer, and 4 bits "
                "cannot hold a trained weight; drop the quantization (--quantize)"
            )
    for name in names:
        set_module(model, name, quantize_linear(modules[name], quant_type, double_quant, compute_dtype))
    return model
