"""Find target layers, wrap them with a variant, freeze the rest.

``apply(model, "lora", targets=["query", "value"], r=8)`` is the whole entry point; the
functions below it (merge, unmerge, unload, param_groups, ...) act on a model that
``apply`` has adapted.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from . import adapters
from .adapters.base import AdaptedLinear, Variant, VariantError

#: Default targets per ``config.model_type`` (the LoRA paper adapts W_q and W_v).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}
#: Task heads of ``*ForSequenceClassification`` models: trained with every variant.
HEAD_NAMES = ("classifier", "score")
#: Output layers never adapted by "all-linear".
OUTPUT_NAMES = ("lm_head",)


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


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def head_modules(model: nn.Module) -> list[str]:
    return [n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)]


def _in_head(name: str, heads: list[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)


def default_targets(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        raise VariantError(
            f"no default targets for model type {model_type!r}; pass targets explicitly, "
            f'e.g. targets=["q_proj", "v_proj"] or targets="all-linear"'
        )
    return DEFAULT_TARGETS[model_type]


def find_targets(model: nn.Module, targets: Any = None) -> list[str]:
    """Names of the linear layers selected by ``targets``.

    ``targets``: None (the architecture's default), ``"all-linear"``, a regex matched
    against the full module name, or a list of module-name suffixes.
    """
    heads = head_modules(model)
    linear = [
        n for n, m in model.named_modules()
        if is_linear(m) and not _in_head(n, heads) and n.split(".")[-1] not in OUTPUT_NAMES
    ]
    if targets is None:
        targets = default_targets(model)
    if targets == "all-linear":
        found = linear
    elif isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise VariantError(f"targets {targets!r} is not a valid regular expression ({e})") from None
        found = [n for n in linear if pattern.fullmatch(n)]
    elif isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets):
        found = [n for n in linear if any(n == t or n.endswith("." + t) for t in targets)]
    else:
        raise VariantError(
            f"targets must be a list of module-name suffixes, a regex string or 'all-linear', got {targets!r}"
        )
    if not found:
        suffixes = sorted({n.split(".")[-1] for n in linear})
        raise VariantError(
            f"targets {targets!r} match no linear layer of {type(model).__name__}; "
            f"candidate names: {', '.join(suffixes)} (e.g. {linear[0] if linear else 'none'})"
        )
    return found


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


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, AdaptedLinear):
            yield name, module


def state_of(model: nn.Module) -> AdapterState:
    state = getattr(model, "lorabench_state", None)
    if state is None:
        raise VariantError("this model has no lorabench adapter; call lorabench.apply(model, variant) first")
    return state


def variant_class(model: nn.Module) -> type[Variant]:
    return adapters.get(state_of(model).variant)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply(model: nn.Module, variant: str, targets: Any = None, *, initialize: bool = True, **options: Any) -> nn.Module:
    """Wrap the target layers of ``model`` in place with ``variant`` and freeze the rest.

    The task head (``classifier`` / ``score``) of a sequence-classification model stays
    trainable. ``initialize=False`` skips the data-free init (used when loading saved weights).
    Returns the same model.
    """
    if getattr(model, "lorabench_state", None) is not None:
        raise VariantError("this model already has a lorabench adapter; call lorabench.unload(model) first")
    cls = adapters.get(variant)
    opts = cls.make_options(**options)
    heads = head_modules(model)
    names = find_targets(model, targets) if cls.wraps_layers else []
    modules = dict(model.named_modules())
    shapes = [AdaptedLinear.shape_of(modules[n]) for n in names]
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
        adapter = cls(*shape, opts, shared)
        adapter.to(device=base.weight.device)
        layer = AdaptedLinear(base, adapter)
        layer.train(base.training)  # a new adapter follows the model's train/eval mode
        if initialize:
            adapter.init_from_base(layer.weight.detach().float())
            _subtract_offset(layer)
        _set_module(model, name, layer)
    model.lorabench_state = AdapterState(
        variant=cls.name,
        options=asdict(opts),
        targets=names,
        fingerprint=fp,
        head=heads,
    )
    return model


@torch.no_grad()
def _subtract_offset(layer: AdaptedLinear) -> None:
    offset = layer.adapter.base_offset()
    if offset is not None:
        layer.set_weight(layer.weight.float() - offset.float())


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
        _set_module(model, name, layer.base_layer)
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
    cls = adapters.get(state.variant)
    start = time.perf_counter()
    cls.prepare(model, batches, cls.make_options(**state.options))
    model.lorabench_prepare_s = time.perf_counter() - start


def needs_data(model: nn.Module) -> bool:
    """Whether the model's variant initialises from training batches (``prepare``)."""
    return adapters.get(state_of(model).variant).needs_data()


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
