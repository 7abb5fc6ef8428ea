"""Optimisation rules: how the gradients of a LoRA-family adapter become an update.

``basic.py``: adamw, lora_plus, lora_fa, allora, stable; ``projected.py``: lora_pro; ``altlora.py``: altlora.

The third axis next to structure (the variant class) and initialisation (``INITS``)::

    lorabench.apply(model, "dora", init="pissa", optimizer="lora_plus", lr_ratio=16)

A rule is a small class with hooks; its options live on ``LoRAOptions`` (``RuleOptions``
below), so every LoRA-family structure takes any rule. One optimizer step of ``train.fit``:

    backward -> unscale (fp16) -> clip -> before_step (rule: gradients, factors)
             -> AdamW.step over param_groups (rule: learning rates, betas) -> on_step

(the rule acts on the clipped gradients, as the papers' optimizers do inside ``step()``).

A rule reads the factors by role, ``adapter.factors() == {"A": (r, in), "B": (out, r)}``;
rules that need them are refused for structures without (VeRA, LoRA-XS, LoLDU).
"""

from __future__ import annotations

# The rules register on import, in the order `lorabench variants` lists them.
from . import basic  # noqa: F401,I001
from . import projected  # noqa: F401
from . import altlora  # noqa: F401
from .basic import ZERO_A_INITS, row_coefficients
from .rule import RULE_STEP, RULES, Rule, RuleOptions, check_unused_options, get_rule, register_rule

__all__ = ["RULE_STEP", "RULES", "Rule", "RuleOptions", "ZERO_A_INITS", "check_unused_options", "get_rule", "register_rule",
           "row_coefficients"]
