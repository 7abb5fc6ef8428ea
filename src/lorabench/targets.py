"""Which layers of a model an adapter (or 4-bit storage) targets: the task head, the linear
layers, the architecture's default targets, and ``set_module`` to replace one of them."""

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


def head_modules(model: nn.Module) -> list[str]:
    return [n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)]


def in_head(name: str, heads: list[str]) -> bool:
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
        if is_linear(m) and not in_head(n, heads) and n.split(".")[-1] not in OUTPUT_NAMES
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


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
