"""Find target layers, wrap them with a variant, freeze the rest.

``apply(model, "lora", targets=["query", "value"], r=8)`` is the whole entry point; the
functions below it (merge, unmerge, unload, param_groups, ...) act on a model that
``apply`` has adapted.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .adapters import registry
from .adapters.base import AdaptedLinear, Variant, adapted_layers  # noqa: F401  (AdaptedLinear: part of inject's face)
from .adapters.conv import check_targets, conv_support, layer_shape, wrap_layer
from .errors import VariantError
from .targets import (  # noqa: F401  (part of inject's public face)
    DEFAULT_TARGETS,
    HEAD_NAMES,
    OUTPUT_NAMES,
    default_targets,
    find_targets,
    head_modules,
    in_head,
    is_linear,
    set_module,
)

#: ``<layer>.rule.<key>``: an optimisation rule's state in ``adapter_tensors`` (present once it has some).
RULE_INFIX = ".rule."


@dataclass
class AdapterState:
    """What ``apply`` did to a model, kept on it as ``model.lorabench_state``."""

    variant: str
    options: dict[str, Any]
    targets: list[str]  # resolved module names
    fingerprint: str  # of the base weights before apply
    head: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class SharedState(nn.Module):
    """Tensors shared by all adapted layers (VeRA's projections), stored once on the model."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for k, t in tensors.items():
            if isinstance(t, nn.Parameter):
                self.register_parameter(k, t)
            else:
                self.register_buffer(k, t)


@torch.no_grad()
def fingerprint(model: nn.Module, names: list[str]) -> str:
    """A short hash of the named layers' weights, stable across fp32/bf16/fp16 copies.

    Samples up to 4096 values per weight and rounds them to bf16, so a model loaded in
    another float dtype has the same fingerprint while a different model does not.
    """
    h = hashlib.sha256()
    modules = dict(model.named_modules())
    for name in names:
        w = modules[name].weight
        flat = w.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].float().to(torch.bfloat16).float().cpu()
        h.update(name.encode())
        h.update(str(tuple(w.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def state_of(model: nn.Module) -> AdapterState:
    state = getattr(model, "lorabench_state", None)
    if state is None:
        raise VariantError("this model has no lorabench adapter; call lorabench.apply(model, variant) first")
    return state


def variant_class(model: nn.Module) -> type[Variant]:
    return registry.get(state_of(model).variant)


def apply(model: nn.Module, variant: str, targets: Any = None, *, initialize: bool = True, **options: Any) -> nn.Module:
    """Wrap the target layers of ``model`` in place with ``variant`` and freeze the rest.

    The task head (``classifier`` / ``score``) of a sequence-classification model stays
    trainable. ``initialize=False`` skips the data-free init (used when loading saved weights).
    Returns the same model.
    """
    if getattr(model, "lorabench_state", None) is not None:
        raise VariantError("this model already has a lorabench adapter; call lorabench.unload(model) first")
    cls = registry.get(variant)
    opts = cls.make_options(**options)
    heads = head_modules(model)
    names = _find_targets(model, targets, cls) if cls.wraps_layers else []
    modules = dict(model.named_modules())
    check_targets(cls, modules, names)  # conv layers: a variant that adapts them, groups=1 ...
    shapes = [layer_shape(modules[n]) for n in names]  # (in*kh*kw, out) for a conv
    for n, (fan_in, fan_out) in zip(names, shapes):
        cls.check_layer(fan_in, fan_out, opts, n)  # every layer checked before any is changed
    fp = fingerprint(model, names or [n for n, m in model.named_modules() if is_linear(m)][:8])

    for p in model.parameters():
        p.requires_grad_(cls.trains_base)
    for h in heads:
        for p in getattr(model, h).parameters():
            p.requires_grad_(True)

    shared_tensors = cls.shared_state(shapes, opts) if names else None
    shared = None
    if shared_tensors:
        shared = SharedState(shared_tensors).to(next(model.parameters()).device)
        model.lorabench_shared = shared
    for name, shape in zip(names, shapes):
        base = cls.wrap_base(modules[name], opts)  # the layer itself; a 4-bit copy for QLoRA
        layer = wrap_layer(cls, base, shape, cls.layer_options(opts, name), shared)  # AdaptedLinear / AdaptedConv2d
        adapter = layer.adapter
        layer.train(base.training)  # a new adapter follows the model's train/eval mode
        if initialize:
            adapter.init_from_base(layer.weight.detach().float())
            layer.subtract_base_offset()
        set_module(model, name, layer)
    model.lorabench_state = AdapterState(
        variant=cls.name,
        options=asdict(opts),
        targets=names,
        fingerprint=fp,
        head=heads,
    )
    return model


def _find_targets(model: nn.Module, targets: Any, cls: type[Variant]) -> list[str]:
    """``find_targets``, with the nn.Conv2d layers for a variant that adapts them. For one that does not,
    targets that match only conv layers get the VariantError naming the variants that do."""
    if conv_support(cls) is None:
        return find_targets(model, targets, conv=True)
    try:
        return find_targets(model, targets)
    except VariantError as no_linear:
        try:
            names = find_targets(model, targets, conv=True)
        except VariantError:
            raise no_linear from None
        check_targets(cls, dict(model.named_modules()), names)  # raises: conv layers, which cls cannot adapt
        raise


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor needed to rebuild the adapted model from its base: adapter state,
    shared state and all other trainable parameters (task head; everything for ``full``)."""
    tensors: dict[str, torch.Tensor] = {}
    owned: set[int] = set()
    for name, layer in adapted_layers(model):
        for key, t in layer.adapter.state_dict().items():
            tensors[f"{name}.adapter.{key}"] = t
        for key, t in layer.adapter.rule.state_dict().items():  # AltLoRA's momentum, Stable-LoRA's stop
            tensors[f"{name}{RULE_INFIX}{key}"] = t
        owned.update(id(p) for p in layer.adapter.parameters())
    shared = getattr(model, "lorabench_shared", None)
    if shared is not None:
        for key, t in shared.state_dict().items():
            tensors[f"lorabench_shared.{key}"] = t
        owned.update(id(p) for p in shared.parameters())
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in owned:
            tensors[name] = p
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (outputs unchanged, no adapter compute)."""
    state_of(model)
    for _, layer in adapted_layers(model):
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo ``merge``: base weights restored, adapters active again."""
    state_of(model)
    for _, layer in adapted_layers(model):
        layer.unmerge()
    return model


def unload(model: nn.Module) -> nn.Module:
    """Merge the adapters and return the plain transformers model (no lorabench modules)."""
    state_of(model)
    for name, layer in list(adapted_layers(model)):
        layer.merge()
        set_module(model, name, layer.base_layer)
    if hasattr(model, "lorabench_shared"):
        del model.lorabench_shared
    del model.lorabench_state
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _other_groups(params: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> list[dict]:
    # Weights decay; biases and norm gains (1-d) do not — the usual transformer recipe.
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups: each variant's own (LoRA+, LoRA-FA ...) plus the rest.

    Groups with the same hyperparameters are merged, so the optimizer sees few groups.
    """
    cls = variant_class(model)
    groups: list[dict] = []
    owned: set[int] = set()
    for _, layer in adapted_layers(model):
        for g in layer.adapter.param_groups(lr, weight_decay):
            groups.append(g)
        owned.update(id(p) for p in layer.adapter.parameters())
    shared = getattr(model, "lorabench_shared", None)
    if shared is not None:
        groups.extend(cls.shared_param_groups(shared, lr, weight_decay))
        owned.update(id(p) for p in shared.parameters())
    rest = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
    groups.extend(_other_groups(rest, lr, weight_decay))
    merged: dict[tuple, dict] = {}
    for g in groups:
        key = tuple(sorted((k, v) for k, v in g.items() if k != "params"))
        if key in merged:
            merged[key]["params"].extend(g["params"])
        else:
            merged[key] = {**g, "params": list(g["params"])}
    return [g for g in merged.values() if g["params"]]


def before_step(model: nn.Module) -> None:
    """Let each adapter's optimisation rule act on the finished gradients (LoRA-Pro, AltLoRA,
    ALLoRA) or factors (Stable-LoRA). Call once per optimizer step: after backward,
    ``GradScaler.unscale_`` and gradient clipping, right before ``optimizer.step()`` (where the
    papers' own optimizers act, and where PEFT's AdaLoRA reads the gradients). Rules whose update is
    not an AdamW step (lora_pro, altlora) then move their factors inside that ``optimizer.step()``
    (``adapters.rules``), which refuses to run without this call."""
    for _, layer in adapted_layers(model):
        layer.adapter.before_step()


def extra_loss(model: nn.Module) -> torch.Tensor | float:
    """The variant's term for the training loss (AdaLoRA's orthogonality regulariser), summed over
    the layers; 0.0 for variants without one. Add it to the loss of every forward pass:
    ``loss = model(**batch).loss + lorabench.inject.extra_loss(model)``."""
    terms = [t for _, layer in adapted_layers(model) if (t := layer.adapter.extra_loss()) is not None]
    return torch.stack(terms).sum() if terms else 0.0


def on_step(model: nn.Module, step: int, total: int) -> None:
    """Tell every adapter that an optimizer step finished (DyLoRA, AdaLoRA ...).

    The variant's own schedule and its optimisation rule's are separate hooks, so a variant
    that overrides ``on_step`` cannot silence the rule."""
    for _, layer in adapted_layers(model):
        layer.adapter.on_step(step, total)
        layer.adapter.rule.on_step(layer.adapter, step, total)


def prepare(model: nn.Module, batches: Any) -> None:
    """Run the variant's data-driven initialisation (LoRA-GA ...) before training.
    Afterwards ``model.lorabench_prepare_s`` holds the seconds it took, so ``is_prepared(model)``
    is True (``lorabench.train.fit`` then does not repeat it)."""
    import time

    state = state_of(model)
    cls = registry.get(state.variant)
    start = time.perf_counter()
    cls.prepare(model, batches, cls.make_options(**state.options))
    model.lorabench_prepare_s = time.perf_counter() - start


def needs_data(model: nn.Module) -> bool:
    """Whether the model's variant initialises from training batches (``prepare``)."""
    return registry.get(state_of(model).variant).needs_data()


def is_prepared(model: nn.Module) -> bool:
    return getattr(model, "lorabench_prepare_s", None) is not None


def set_rank(model: nn.Module, rank: int) -> nn.Module:
    """Evaluate (and export) a rank-flexible adapter (DyLoRA) at rank ``rank``."""
    layers = [layer for _, layer in adapted_layers(model)]
    if not layers or not all(hasattr(layer.adapter, "set_rank") for layer in layers):
        raise VariantError(
            f"variant {state_of(model).variant!r} has a fixed rank; set_rank needs a rank-flexible variant such as dylora"
        )
    for layer in layers:
        layer.adapter.set_rank(rank)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; shared tensors counted once, a 4-bit weight by the values it
    stands for (bitsandbytes packs two per byte: its ``numel`` is half of them)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(_logical_numel(p) for p in seen.values())


def _logical_numel(p: torch.Tensor) -> int:
    shape = getattr(getattr(p, "quant_state", None), "shape", None)  # bitsandbytes Params4bit
    return math.prod(shape) if shape is not None else p.numel()
