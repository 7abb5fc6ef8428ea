"""E LoRA experts in one adapted layer, and the routing state the layers of a block share.

``MixtureLoRA`` is a lorabench ``Variant`` living in an ``AdaptedLinear`` (the frozen base layer
kept as ``base_layer``), so wrapping, freezing and the adapted-layer walk are the adapters' own:

    h = W0 x + sum_e g_e(x) * s * B_e A_e x,   A_e: (r, in), B_e: (out, r), s = alpha / r

The gates ``g (..., E)`` come from the block's router (``registry.Router``) through
``RoutingState``: the first expert layer of a block called in a forward pass (the attention's q,
k, v read the same input) computes them from its input, and every other layer of that block (k, v
and the output projection o) reuses them -- LoRA-Mixer's serial attention routing. One expert
with gate 1 is exactly a LoRA layer with the same factors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.base import AdaptedLinear, Variant
from ..errors import ConfigError, VariantError
from ..targets import find_targets, set_module

#: q, k, v and o of the attention, per model type (name suffixes, as ``targets=`` reads them).
ATTENTION_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "attention.output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense"],
    "mpnet": ["attn.q", "attn.k", "attn.v", "attn.o"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
_BLOCK = re.compile(r"^(.*?\.\d+)\.")  # "bert.encoder.layer.0.attention.self.query" -> "bert.encoder.layer.0"


def attention_targets(model: nn.Module) -> list[str]:
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in ATTENTION_TARGETS:
        raise ConfigError(f"no default q,k,v,o targets for model type {kind!r}; pass --targets NAME,NAME,...")
    return ATTENTION_TARGETS[kind]


def block_of(name: str) -> str:
    """The transformer block a layer name belongs to: its name up to the first numbered part."""
    m = _BLOCK.match(name)
    if m is None:
        raise ConfigError(f"layer {name!r} sits in no numbered transformer block; routing is per block, "
                          "so target layers inside the blocks (e.g. the attention projections)")
    return m.group(1)


@dataclass
class ExpertOptions:
    experts: int = 4
    r: int = 8
    alpha: float = 16.0

    def __post_init__(self):
        for key in ("experts", "r"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha!r}")


@dataclass
class RoutingState:
    """What the expert layers of one forward pass share: each block's router and its gates, the
    real-token mask, and (while ``recording``) the expert-usage counts per task and block."""

    routers: dict[str, nn.Module]
    mask: torch.Tensor | None = None
    task: str | None = None
    recording: bool = False
    gates: dict[str, torch.Tensor] = field(default_factory=dict)
    #: task -> block -> {"selected": (E,) tokens routed to each expert, "weight": (E,) summed gates,
    #: "ess": summed 1/sum_e g_e^2, "tokens": real tokens}
    usage: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def begin(self, mask: torch.Tensor | None, task: str | None) -> None:
        """A new forward pass: forget the gates of the last one."""
        self.gates.clear()
        self.mask, self.task = mask, task

    def gates_for(self, block: str, x: torch.Tensor) -> torch.Tensor:
        g = self.gates.get(block)
        if g is None:
            g = self.gates[block] = self.routers[block].route(x, self.mask)  # (..., E)
            if self.recording:
                self.record(block, g.detach())
        if g.shape[:-1] != x.shape[:-1]:
            raise VariantError(f"block {block!r}: gates for {tuple(g.shape[:-1])} tokens, layer input "
                               f"{tuple(x.shape[:-1])}; the routed layers of a block must see the same tokens")
        return g

    def record(self, block: str, g: torch.Tensor) -> None:
        flat = g.reshape(-1, g.shape[-1]).float()  # (N, E)
        real = (torch.ones(flat.shape[0], device=g.device) if self.mask is None
                else self.mask.reshape(-1).float())  # (N,)
        flat = flat[real > 0]
        slot = self.usage.setdefault(self.task or "all", {}).setdefault(
            block, {"selected": torch.zeros(g.shape[-1]), "weight": torch.zeros(g.shape[-1]), "ess": 0.0, "tokens": 0})
        slot["selected"] += (flat > 0).float().sum(0).cpu()
        slot["weight"] += flat.sum(0).cpu()
        slot["ess"] += float((1.0 / (flat ** 2).sum(-1)).sum())  # effective number of experts per token
        slot["tokens"] += int(flat.shape[0])


class MixtureLoRA(Variant):
    """E LoRA experts, mixed by the gates of the block's router (see the module docstring)."""

    description = "a mixture of E LoRA experts routed per token (lorabench.mixtures)"
    mergeable = False  # the update depends on the input through the gates

    def __init__(self, in_features, out_features, opts: ExpertOptions, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        E, r = opts.experts, opts.r
        self.lora_A = nn.Parameter(torch.empty(E, r, in_features))  # (E, r, in)
        self.lora_B = nn.Parameter(torch.zeros(E, out_features, r))  # (E, out, r): B = 0, so h = W0 x at init
        for e in range(E):  # LoRA's init per expert (Hu et al. 2021): A Kaiming-uniform
            nn.init.kaiming_uniform_(self.lora_A[e], a=math.sqrt(5))
        self.block = ""
        self.__dict__["routing"] = None  # a plain reference (RoutingState), set by apply_experts

    @property
    def scale(self) -> float:
        return self.opts.alpha / self.opts.r

    def delta(self, x):
        E, r = self.opts.experts, self.opts.r
        g = self.routing.gates_for(self.block, x).to(x.dtype)  # (..., E)
        z = F.linear(x, self.lora_A.reshape(E * r, -1))  # (..., E*r): every expert's A_e x
        z = z.reshape(*z.shape[:-1], E, r) * (g.unsqueeze(-1) * self.scale)  # (..., E, r)
        B = self.lora_B.permute(1, 0, 2).reshape(self.out_features, E * r)  # (out, E*r)
        return F.linear(z.reshape(*z.shape[:-2], E * r), B)  # (..., out)

    def delta_weight(self):
        raise VariantError("a routed mixture has no single weight update: its gates depend on the input")

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        return opts.experts * opts.r * (in_features + out_features)


def apply_experts(model: nn.Module, backbone: nn.Module, targets: Any, opts: ExpertOptions, router_cls: type,
                  router_opts: Any) -> list[str]:
    """Wrap ``targets`` of ``backbone`` (inside ``model``) in ``MixtureLoRA`` layers, one router per
    block in ``model.routers``; freeze the backbone. Returns the wrapped layer names (full names in
    ``model``)."""
    names = find_targets(backbone, targets if targets is not None else attention_targets(backbone))
    prefix = next(n for n, m in model.named_modules() if m is backbone)
    modules = dict(backbone.named_modules())
    for p in backbone.parameters():
        p.requires_grad_(False)
    routers: dict[str, nn.Module] = {}
    state = RoutingState(routers)
    for name in names:
        full = f"{prefix}.{name}" if prefix else name
        block = block_of(full)
        in_f, out_f = AdaptedLinear.shape_of(modules[name])
        if block not in routers:
            routers[block] = router_cls(in_f, opts.experts, router_opts)
        adapter = MixtureLoRA(in_f, out_f, opts)
        adapter.block = block
        adapter.__dict__["routing"] = state
        adapter.to(device=modules[name].weight.device)
        set_module(backbone, name, AdaptedLinear(modules[name], adapter))
    model.routers = nn.ModuleDict({b.replace(".", "-"): r for b, r in routers.items()})
    model.routing = state
    return [f"{prefix}.{n}" if prefix else n for n in names]
