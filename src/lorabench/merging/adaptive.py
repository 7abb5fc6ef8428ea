"""Adaptive merging of recycled LoRAs: merge coefficients learned on target data over a frozen pool.

Liu, Je, Ciccone, Xu, YSS, Raffel 2026, "The Appeal and Reality of Recycling LoRAs with Adaptive
Merging", ICML 2026, arXiv 2602.12323; official code r-three/realistic-adaptive-merging
(``peft_extension/lorahub/layers.py`` LorahubLinear, ``model.py``). Each target layer computes

    y = W0 x + sum_k f(c_k) s_k B_k A_k x          # k over the K pool adapters, factors frozen

and only the coefficients c (and, here, the target's classification head) train. ``per_layer``:
one c per adapter per adapted layer (official ``weight_granularity=per_module``, the paper's
"Ours"); else one c per adapter shared by every layer (``per_expert``, LoRAHub's granularity:
Huang et al. 2023, arXiv 2307.13269, who search it gradient-free). f is the official router
activation: leaky_relu ("Ours", slope 0.01), linear (AdaMerging: Yang et al. 2024, arXiv
2310.02575) or squared; init ``zero`` (the official "target" init when no target adapter is in
the pool, ``force_routing=0``) or ``equal`` (1/sqrt(K)). After training the merged update of a
layer is exactly the linear merge with the learned weights w_k = f(c_k), rank-stacked as
``merging.linear`` stores it: ``[w1 s1 B1 | ...]``, ``[A1; ...]`` (``merged_factors``).
The official optimiser is AdamW (betas 0.9/0.999, no weight decay on the coefficients), lr 5e-2,
100 steps, effective batch 8, cosine schedule with 10% warmup (``jobs/run_tuning.py``).

``random_like``: the paper's random-LoRA control (official ``reinit_case=all_experts``): per layer,
A_k ~ N(0, std(A of the pool)) and B_k ~ N(0, std(B of the pool)), same shapes and ranks, both
nonzero, seeded (the scale s is folded into B here, so std(s B) is matched).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checkpoint import architecture
from ..errors import ConfigError
from ..inject import fingerprint
from ..targets import head_modules, set_module

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer -> (B (out, r) with the scale folded in, A (r, in))
ACTIVATE = {"leaky_relu": lambda c: nn.functional.leaky_relu(c, 0.01), "linear": lambda c: c,
            "squared": lambda c: c * c}


def check_fits(model: nn.Module, pool: list) -> None:
    """The pool (``merge.Source`` list) was trained on this very base (architecture and target-layer weights)."""
    config = pool[0].config
    saved = (config.get("architecture") or {}).get("digest")
    if saved is not None and saved != architecture(model)["digest"]:
        layers = (config.get("architecture") or {}).get("layers")
        raise ConfigError(f"the pool adapters ({pool[0].directory}) were saved from another architecture "
                          f"({layers} layers); run with --layers {layers} or the base they were trained on")
    if fingerprint(model, config["targets"]) != config["fingerprint"]:
        raise ConfigError(f"the pool adapters were trained on other base weights ({config.get('base_model')}); "
                          "run on that base model")


def random_like(pool: list[Factors], generator: torch.Generator) -> list[Factors]:
    """Random LoRAs of the pool's shapes: per layer N(0, std) with the pool's std of A and of B."""
    out: list[Factors] = [{} for _ in pool]
    for layer in pool[0]:
        std_b = torch.cat([f[layer][0] for f in pool], dim=1).std().item()
        std_a = torch.cat([f[layer][1] for f in pool], dim=0).std().item()
        for k, f in enumerate(pool):
            B, A = f[layer]
            out[k][layer] = (torch.randn(B.shape, generator=generator) * std_b,
                             torch.randn(A.shape, generator=generator) * std_a)
    return out


class PooledLinear(nn.Module):
    """``W0 x + sum_k f(c_k) B_k A_k x``; the pool's factors are buffers, ``coefficients`` (K,) train."""

    def __init__(self, base: nn.Module, factors: list[tuple[torch.Tensor, torch.Tensor]], coefficients: nn.Parameter,
                 activation: str):
        super().__init__()
        self.base, self.coefficients, self.activation = base, coefficients, activation
        dev = base.weight.device
        self.register_buffer("lora_B", torch.cat([B for B, _ in factors], dim=1).to(dev))  # (out, R)
        self.register_buffer("lora_A", torch.cat([A for _, A in factors], dim=0).to(dev))  # (R, in)
        owner = [k for k, (_, A) in enumerate(factors) for _ in range(A.shape[0])]
        self.register_buffer("owner", torch.tensor(owner, device=dev))  # (R,): the adapter of each rank row

    def weights(self) -> torch.Tensor:
        return ACTIVATE[self.activation](self.coefficients)  # (K,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weights()[self.owner].to(x.dtype)  # (R,)
        h = x @ self.lora_A.to(x.dtype).T  # (..., R)
        return self.base(x) + (h * scale) @ self.lora_B.to(x.dtype).T  # (..., out)

    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rank-stacked pair of the merged update: ``(B diag(w_owner), A)``."""
        w = self.weights().detach().float()[self.owner]
        return self.lora_B.float() * w, self.lora_A.float()


def attach(model: nn.Module, pool: list[Factors], *, per_layer: bool, activation: str, init: str | list[float],
           trainable: bool = True) -> list[nn.Parameter]:
    """Replace each pool target layer by a ``PooledLinear``; freeze everything but the head and the
    coefficients (``trainable``); return the distinct coefficient tensors. ``init``: zero, equal, or
    the K starting values."""
    k = len(pool)
    if isinstance(init, str):
        init = [0.0] * k if init == "zero" else [1.0 / math.sqrt(k)] * k
    for p in model.parameters():
        p.requires_grad_(False)
    for h in head_modules(model):
        for p in getattr(model, h).parameters():
            p.requires_grad_(True)
    modules = dict(model.named_modules())
    made: list[nn.Parameter] = []
    for name in pool[0]:
        if not made or per_layer:
            made.append(nn.Parameter(torch.tensor(init, dtype=torch.float32), requires_grad=trainable))
        base = modules[name]
        set_module(model, name, PooledLinear(base, [f[name] for f in pool], made[-1], activation))
    return made


def detach(model: nn.Module) -> None:
    """Put back the plain layers ``attach`` wrapped."""
    for name, m in list(model.named_modules()):
        if isinstance(m, PooledLinear):
            set_module(model, name, m.base)


def pooled_layers(model: nn.Module) -> dict[str, PooledLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PooledLinear)}


def learned_weights(model: nn.Module) -> dict[str, list[float]]:
    """{layer: [w_1 .. w_K]}, the weights f(c) each layer applies (one entry when shared)."""
    out: dict[str, list[float]] = {}
    seen: set[int] = set()
    for name, m in pooled_layers(model).items():
        if id(m.coefficients) not in seen:
            seen.add(id(m.coefficients))
            out[name] = [round(float(w), 6) for w in m.weights().detach().cpu()]
    return out


def merged_factors(model: nn.Module) -> Factors:
    """{layer: (B, A)} of the merged update (``PooledLinear.merged``), e.g. for ``write_adapter``."""
    return {n: tuple(t.cpu() for t in m.merged()) for n, m in pooled_layers(model).items()}
