"""Which layers of a model an adapter (or 4-bit storage) targets: the task head, the linear
layers, the architecture's default targets, and ``set_module`` to replace one of them.

With ``conv=True`` (``inject.apply`` for a variant that adapts them, ``adapters.conv``) ``nn.Conv2d``
layers are targets too: when named (a list of suffixes or a regex), with ``targets="all-conv"``, and by
default on a model that has no default targets and no linear layer outside its head (a plain CNN or
U-Net). ``"all-linear"`` never selects a conv layer; without ``conv`` nothing changes for anyone."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from .errors import VariantError

#: Default targets per ``config.model_type`` (the LoRA paper adapts W_q and W_v).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],  # MPNetSelfAttention: q, k, v, o
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


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def is_conv(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` (transposed convs are another class and never targets)."""
    return isinstance(module, nn.Conv2d)


def head_modules(model: nn.Module) -> list[str]:
    return [n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)]


def in_head(name: str, heads: list[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)


def default_targets(model: nn.Module, conv_only: bool = False) -> list[str] | str:
    """The architecture's defaults; ``"all-conv"`` for a model without them whose only candidate
    layers are convolutions (``conv_only``)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        if conv_only:
            return "all-conv"
        raise VariantError(
            f"no default targets for model type {model_type!r}; pass targets explicitly, "
            f'e.g. targets=["q_proj", "v_proj"], targets="all-linear" or targets="all-conv"'
        )
    return DEFAULT_TARGETS[model_type]


def find_targets(model: nn.Module, targets: Any = None, conv: bool = False) -> list[str]:
    """Names of the linear layers (and with ``conv``, the nn.Conv2d layers) selected by ``targets``.

    ``targets``: None (the architecture's default), ``"all-linear"``, ``"all-conv"``, a regex
    matched against the full module name, or a list of module-name suffixes.
    """
    heads = head_modules(model)
    linear, convs = [], []
    for n, m in model.named_modules():
        if not in_head(n, heads) and n.split(".")[-1] not in OUTPUT_NAMES:
            if is_linear(m):
                linear.append(n)
            elif conv and is_conv(m):
                convs.append(n)
    candidates = set(linear) | set(convs)
    named = [n for n, _ in model.named_modules() if n in candidates]  # module order
    if targets is None:
        targets = default_targets(model, conv_only=bool(convs) and not linear)
    if targets == "all-linear":
        found = linear
    elif targets == "all-conv":
        found = convs
    elif isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise VariantError(f"targets {targets!r} is not a valid regular expression ({e})") from None
        found = [n for n in named if pattern.fullmatch(n)]
    elif isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets):
        found = [n for n in named if any(n == t or n.endswith("." + t) for t in targets)]
    else:
        raise VariantError(
            f"targets must be a list of module-name suffixes, a regex string, 'all-linear' or 'all-conv', got {targets!r}"
        )
    if not found:
        pool, kind = {"all-linear": (linear, "linear"), "all-conv": (convs, "conv")}.get(
            targets if isinstance(targets, str) else "", (named, "linear or conv" if convs else "linear"))
        suffixes = sorted({n.split(".")[-1] for n in pool})
        raise VariantError(
            f"targets {targets!r} match no {kind} layer of {type(model).__name__}; "
            f"candidate names: {', '.join(suffixes)} (e.g. {pool[0] if pool else 'none'})"
        )
    return found


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
