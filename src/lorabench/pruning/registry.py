"""The pruning-method registry: ``register`` (where a method is defined), ``get`` and ``names``.

A method trains a LoRA adapter and prunes attention heads and FFN channels of a BERT-family
encoder somewhere in the process (``Method.run``): during training from LoRA-guided importance
(``loraprune``), or before it, on the copy of the base it trains on (``loram``); ``lora`` is the
unpruned baseline. Method files import this module, never the package face.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError
from ..registries import Registry

#: The registered pruning methods: ``register(name)`` in each method file, ``get``, ``names``.
METHODS = Registry("pruning method", lambda name, known: ConfigError(
    f"unknown pruning method {name!r}; choose one of: {', '.join(known)}"))
register, get, names = METHODS.register, METHODS.get, METHODS.names


@dataclass
class Outcome:
    """What one method's run measured (``pruning.record`` turns it into the result JSON)."""

    dev: dict  # {split: {metric: value}} of the model the method delivers for inference
    plan: dict  # {block: {"heads": [...], "channels": [...]}} pruned (empty for lora)
    params: dict  # {"full": n, "train_base": n, "inference": n}: plain-model parameters (adapter merged)
    train: dict  # train.fit's summary (time, memory, history, steps ...)
    eval_s: dict  # {"pruned": s or None, "full": s or None}: one pass over the dev sets
    extra: dict = field(default_factory=dict)  # method-specific figures


class Method:
    """One pruning method: its options (paper / official-code defaults) and ``run``."""

    name: ClassVar[str] = ""
    #: One line for ``lorabench prune --help``: what it does and the paper.
    description: ClassVar[str] = ""
    #: False for the unpruned baseline (it runs once, at sparsity 0).
    prunes: ClassVar[bool] = True

    @dataclass
    class Options:
        pass

    @classmethod
    def make_options(cls, **options: Any) -> Any:
        """``Options`` from the keys this method has (others are ignored: they belong to another method)."""
        known = {f.name for f in dataclasses.fields(cls.Options)}
        return cls.Options(**{k: v for k, v in options.items() if k in known})

    @classmethod
    def option_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls.Options)}

    def run(self, job: Any, opts: Any, sparsity: float = 0.0) -> Outcome:
        """Train and prune at ``sparsity`` (the fraction of heads and channels pruned per pruned layer)."""
        raise NotImplementedError
