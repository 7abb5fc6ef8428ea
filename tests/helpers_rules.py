"""Shared by the rule tests: the first adapter of a model, and a single linear layer with a LoRA
and a loss whose full-weight gradient G is known in closed form."""

from __future__ import annotations

import torch
from torch import nn

import lorabench
from lorabench.inject import adapted_layers


def first_adapter(model):
    return next(iter(adapted_layers(model)))[1].adapter



# ---- a single linear layer with a known full-weight gradient G ------------------------------
def single_layer(optimizer: str, r: int = 2, alpha: float = 4.0, seed: int = 0, **opts):
    """nn.Linear(5 -> 6) in float64 with a LoRA whose A and B are both random, and a loss
    L = sum(C * y) whose full-weight gradient is G = C^T x (out, in)."""
    torch.manual_seed(seed)
    model = lorabench.apply(nn.Sequential(nn.Linear(5, 6)), "lora", targets=["0"], r=r, alpha=alpha,
                            optimizer=optimizer, **opts).double()
    v = first_adapter(model)
    with torch.no_grad():
        v.lora_A.normal_()
        v.lora_B.normal_()
    x, C = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 6, dtype=torch.float64)
    return model, v, x, C, C.T @ x
