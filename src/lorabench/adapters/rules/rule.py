"""The optimisation-rule interface: ``Rule`` (hooks), ``RuleOptions`` (every rule's options) and
the rule registry (``register_rule``, ``get_rule``). The rules themselves are in ``basic.py``
and ``projected.py``; the package face (``__init__.py``) imports them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ...errors import VariantError, check

#: name -> Rule class, in registration order.
RULES: dict[str, type["Rule"]] = {}


def register_rule(name: str):
    """Class decorator: make a Rule subclass available as ``optimizer=name``."""

    def wrap(cls):
        cls.name = name
        RULES[name] = cls
        return cls

    return wrap


def get_rule(name: str) -> type["Rule"]:
    if name not in RULES:
        raise VariantError(f"unknown optimizer {name!r}; choose one of: {', '.join(RULES)} (`lorabench variants` lists them)")
    return RULES[name]


@dataclass
class RuleOptions:
    """The optimisation rule and the options of every rule (mixed into ``LoRAOptions``)."""

    optimizer: str = "adamw"  # adamw | lora_plus | lora_fa | allora | lora_pro | stable | altlora
    lr_ratio: float = 16.0  # lora_plus: lr of B / lr of A (the paper's suggested 2^4)
    eta: float = 2.0  # allora: a row at 0 gets eta x its gradient
    shrink_ratio: float = 5e-4  # stable: A <- (1 - shrink_ratio) A per early step (official example)
    alt_beta: float = 0.9  # altlora: momentum of the low-rank momenta (official runs: 0.9)

    def __post_init__(self):
        get_rule(self.optimizer)
        check(self.lr_ratio > 0, f"lr_ratio (lr of B / lr of A) must be > 0, got {self.lr_ratio!r}; LoRA+ recommends lr_ratio=16")
        check(self.eta > 0, f"eta must be > 0, got {self.eta!r}; e.g. eta=2")
        check(0 <= self.shrink_ratio < 1, f"shrink_ratio must be in [0, 1), got {self.shrink_ratio!r}; Stable-LoRA uses 5e-4")
        check(0 <= self.alt_beta < 1, f"alt_beta must be in [0, 1), got {self.alt_beta!r}; AltLoRA uses 0.9")


def check_unused_options(variant_cls: type, opts: Any) -> None:
    """An option of another rule, changed from its default, would be silently ignored: refuse it."""
    if not isinstance(opts, RuleOptions):
        return
    rule_fields = [f.name for f in fields(RuleOptions)]
    active = RULES[opts.optimizer].options
    for f in fields(RuleOptions):
        owner = next((n for n, r in RULES.items() if f.name in r.options), None)
        if owner and f.name not in active and getattr(opts, f.name) != f.default:
            own = [g.name for g in fields(opts) if g.name not in rule_fields] + ["optimizer", *active]
            raise VariantError(
                f"variant {variant_cls.name!r} has no option {f.name!r} with optimizer={opts.optimizer!r} "
                f"({f.name} belongs to optimizer={owner!r}: add optimizer={owner!r} or drop {f.name}); "
                f"its options are: {', '.join(own)}"
            )


class Rule:
    """Hooks with do-nothing defaults; one instance per adapted layer (it may keep state)."""

    name: ClassVar[str] = ""
    #: One line for ``lorabench variants``: what it does and the paper.
    description: ClassVar[str] = ""
    #: Names of its fields in ``RuleOptions``.
    options: ClassVar[tuple[str, ...]] = ()
    #: Factor roles it reads or changes; structures without them are refused.
    needs: ClassVar[tuple[str, ...]] = ("A", "B")
    #: Factor roles that never train (LoRA-FA: A); the structure freezes them.
    frozen: ClassVar[tuple[str, ...]] = ()

    def __init__(self, opts: Any):
        self.opts = opts

    @classmethod
    def check(cls, variant_cls: type, opts: Any) -> None:
        """Raise VariantError for a combination that makes no sense (called by make_options)."""
        check_unused_options(variant_cls, opts)

    def param_groups(self, adapter, lr: float, weight_decay: float) -> list[dict]:
        params = [p for p in adapter.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}] if params else []

    def before_step(self, adapter) -> None:
        """After the gradients are complete (unscaled) and clipped, before the optimizer step (where
        the papers' optimizers act: the training loop clips first)."""

    def on_step(self, adapter, step: int, total: int) -> None:
        """After the optimizer step."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What the rule has learnt during training (saved with the adapter). Default: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict()`` (``lorabench.load_adapter`` calls it)."""
        if state:
            raise VariantError(f"rule {self.name!r} keeps no state, got {sorted(state)[:3]}; the adapter file "
                               "was saved with another optimizer option")
