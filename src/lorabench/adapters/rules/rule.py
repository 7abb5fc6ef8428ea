"""The optimisation-rule interface: ``Rule`` (hooks), ``RuleOptions`` (every rule's options) and
the rule registry (``register_rule``, ``get_rule``). The rules themselves are in ``basic.py``
``projected.py`` and ``altlora.py``; the package face (``__init__.py``) imports them.

Rules whose update is not an AdamW step (LoRA-Pro's Adam on the full equivalent gradient, AltLoRA's
momentum step) set ``steps_itself``: their factors go into groups marked ``RULE_STEP``, and the rule
moves them itself, inside ``optimizer.step()`` (a pre-hook of every torch optimizer, registered
below), with that group's current learning rate and weight decay; the optimizer then finds no
gradient on them and leaves them alone. So the same loop works with any torch optimizer, the
learning-rate schedule reaches the rule, and a step GradScaler skips (fp16 overflow) is skipped
by the rule too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
import weakref
from typing import Any, ClassVar

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

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
    # altlora: "both" = A, then B (projected with the new A), every step (the released optimizer);
    # "alternate" = one factor per step, B first
    alt_schedule: str = "both"
    # altlora: "momentum" = W moves by -lr times the bias-corrected momentum (the paper's Algorithm 1,
    # the released optimizer_new.altlora); "adamw" = the momentum becomes the gradient of AdamW with
    # beta1 = 0 (lorabench before issue 14; with alt_schedule="alternate" only)
    alt_update: str = "momentum"
    # lora_pro: "full" = Adam moments of the full (out, in) equivalent gradient, re-projected every
    # step (the paper's Algorithm 2, the official optimizer); "factors" = AdamW on the adjusted
    # g_A, g_B (r x (in + out) state: cheaper, not the paper's)
    pro_moments: str = "full"


    def __post_init__(self):
        get_rule(self.optimizer)
        check(self.lr_ratio > 0, f"lr_ratio (lr of B / lr of A) must be > 0, got {self.lr_ratio!r}; LoRA+ recommends lr_ratio=16")
        check(self.eta > 0, f"eta must be > 0, got {self.eta!r}; e.g. eta=2")
        check(0 <= self.shrink_ratio < 1, f"shrink_ratio must be in [0, 1), got {self.shrink_ratio!r}; Stable-LoRA uses 5e-4")
        check(0 <= self.alt_beta < 1, f"alt_beta must be in [0, 1), got {self.alt_beta!r}; AltLoRA uses 0.9")
        check(self.alt_schedule in ("both", "alternate"),
              f"alt_schedule must be 'both' (A then B every step) or 'alternate', got {self.alt_schedule!r}")
        check(self.alt_update in ("momentum", "adamw"),
              f"alt_update must be 'momentum' (Algorithm 1) or 'adamw', got {self.alt_update!r}")
        check(self.alt_update == "momentum" or self.alt_schedule == "alternate",
              "alt_update='adamw' (lorabench's earlier AltLoRA) moves one factor per step; add "
              "alt_schedule='alternate', or use alt_update='momentum'")
        check(self.pro_moments in ("full", "factors"),
              f"pro_moments must be 'full' (the official optimizer) or 'factors', got {self.pro_moments!r}")


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
    #: True when ``step`` moves the factors itself (see the module docstring); may depend on options.
    steps_itself: ClassVar[bool] = False

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

    def step(self, adapter, lr: float, weight_decay: float) -> None:
        """Move the factors (``steps_itself`` rules), inside ``optimizer.step()``; must leave their
        ``.grad`` None so that the optimizer does not step them again."""
        raise NotImplementedError

    def own_groups(self, adapter, groups: list[dict], **marks: Any) -> list[dict]:
        """``groups`` with the factors A, B split off into one group carrying ``marks`` (default: the
        ``RULE_STEP`` mark of ``steps_itself`` rules' ``param_groups``)."""
        marks = marks or {RULE_STEP: True}
        ids = {id(p) for p in adapter.factors().values()}
        out = []
        for g in groups:
            rest = [p for p in g["params"] if id(p) not in ids]
            mine = [p for p in g["params"] if id(p) in ids]
            out += [{**g, "params": rest}] if rest else []
            out += [{**g, "params": mine, **marks}] if mine else []
        return out

    def pending(self, adapter) -> None:
        """Called by ``before_step`` of a ``steps_itself`` rule: the next optimizer step moves this
        adapter's factors through ``step``."""
        for p in adapter.factors().values():
            _PENDING[id(p)] = adapter

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What the rule has learnt during training (saved with the adapter). Default: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict()`` (``lorabench.load_adapter`` calls it)."""
        if state:
            raise VariantError(f"rule {self.name!r} keeps no state, got {sorted(state)[:3]}; the adapter file "
                               "was saved with another optimizer option")


#: Key of the optimizer groups whose parameters a rule steps itself.
RULE_STEP = "lorabench_rule_step"
#: id(factor) -> its adapter, from before_step until the optimizer step (weak: no leak if none comes).
_PENDING: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()


def _rule_step_hook(optimizer, args, kwargs) -> None:
    """Pre-hook of every torch optimizer's ``step()``: the ``RULE_STEP`` groups' factors are moved by
    their rule (with the group's current lr and weight decay), then hidden from the optimizer."""
    for group in optimizer.param_groups:
        if not group.get(RULE_STEP):
            continue
        for p in group["params"]:
            if p.grad is None:
                continue
            adapter = _PENDING.get(id(p))
            if adapter is None or not any(q is p for q in adapter.factors().values()):
                raise VariantError(
                    "an optimizer stepped factors of a rule that moves them itself (optimizer='lora_pro' or "
                    "'altlora') without lorabench.before_step(model): call it after backward (and clipping), "
                    "right before optimizer.step()"
                )
            for q in adapter.factors().values():
                _PENDING.pop(id(q), None)
            adapter.rule.step(adapter, group["lr"], group.get("weight_decay", 0.0))
            for q in adapter.factors().values():
                q.grad = None


_HOOK = register_optimizer_step_pre_hook(_rule_step_hook)
