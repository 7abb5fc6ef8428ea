"""Where a loop computes, and in what precision.

A loop that never moves its model trains on the CPU of a GPU machine, and one that never autocasts
ignores the precision it was asked for; ``placement`` answers both once, the way ``train.fit`` does:
CUDA when there is one, ``precision.resolve_precision`` for the name (``auto`` is bf16 on a GPU that
has it, fp32 on CPU; fp16 falls back to fp32 off CUDA), and the autocast dtype for it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..precision import resolve_precision

#: The autocast dtype of each resolved precision name (fp32: no autocast).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def placement(precision: str = "auto") -> tuple[torch.device, str, torch.dtype | None]:
    """(device, resolved precision name, autocast dtype or None) for a run asked to train in ``precision``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = resolve_precision(precision, device)
    return device, name, amp_dtype(name, device)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a resolved precision name on ``device`` (fp16 only on CUDA)."""
    if precision == "fp16" and device.type != "cuda":
        return None
    return AMP_DTYPES.get(precision)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a run asked to compute in ``precision`` gets on ``device`` (a model already
    placed: its evaluation, a forward pass)."""
    return amp_dtype(resolve_precision(precision, device), device)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (its 5-bit exponent underflows small gradients); a no-op otherwise,
    so fp32 and bf16 steps are exactly the unscaled ones."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (the same tensors when they are there already)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))
