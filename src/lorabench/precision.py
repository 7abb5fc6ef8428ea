"""What a training step computes in: the autocast precision of a run (``resolve_precision``,
``autocast``) and activation checkpointing (``enable_grad_checkpointing``)."""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """The autocast precision a run trains in.

    ``auto`` is bf16 on a CUDA GPU that supports it, else fp32 (so CPU runs stay exactly
    repeatable by default). On CPU, ``bf16`` is honoured: autocast runs the matmuls in bf16
    (oneDNN), ~1.6x the fp32 throughput on CPUs with native bf16 (AVX512-BF16 or AMX); fp16
    needs a GPU's loss scaling and falls back to fp32 with a warning.
    """
    if device.type != "cuda":
        if precision == "fp16":
            warnings.warn(f"precision fp16 needs CUDA; training in fp32 on {device.type} "
                          "(use --precision bf16 for half-precision matmuls on CPU)", stacklevel=2)
            return "fp32"
        if precision == "bf16" and not cpu_has_native_bf16():
            warnings.warn("this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 autocast is emulated "
                          "and slower than fp32; use --precision fp32", stacklevel=2)
        return "bf16" if precision == "bf16" else "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return precision


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def enable_grad_checkpointing(model: torch.nn.Module) -> bool:
    """Turn on activation checkpointing in the first transformers model inside ``model``."""
    for module in model.modules():
        if not getattr(module, "supports_gradient_checkpointing", False):
            continue
        kwargs = {"use_reentrant": False}
        if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5
            module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif hasattr(module, "gradient_checkpointing_enable"):
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            continue
        if hasattr(module, "enable_input_require_grads"):
            module.enable_input_require_grads()  # frozen embeddings: make checkpointed inputs need grad
        return True
    warnings.warn(f"{type(model).__name__} does not support gradient checkpointing; training without it", stacklevel=2)
    return False


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the forward pass (nothing when ``dtype`` is None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def autocast_state(device: torch.device) -> tuple[str, torch.dtype] | None:
    """The autocast a custom autograd Function's forward runs under (None: off), for its backward."""
    kind = device.type
    return (kind, torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else None


def same_autocast(state: tuple[str, torch.dtype] | None):
    """Run a custom backward under the forward's autocast (as ``torch.amp.custom_bwd`` does, for any
    device): its matmuls then see the same dtypes as the forward saved, bf16 with bf16."""
    return torch.autocast(state[0], dtype=state[1]) if state is not None else nullcontext()
