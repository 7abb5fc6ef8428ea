"""LoRA+: LoRA with a larger learning rate for B than for A (the ``lora_plus`` rule as a variant)."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import register
from .lora import LoRA, LoRAOptions


@dataclass
class LoRAPlusOptions(LoRAOptions):
    # lambda = lr_B / lr_A = lr_ratio (default 16 = 2^4, the paper's suggested default and PEFT's
    # documented starting point; the paper's GLUE runs use larger ratios, 20-80).
    optimizer: str = "lora_plus"


@register("lora_plus")
class LoRAPlus(LoRA):
    """LoRA+: Efficient Low Rank Adaptation of Large Models.
    Hayou, Ghosh & Yu 2024, arXiv 2402.12354.

        h = W0 x + s B A x  (as LoRA);  A steps with lr,  B steps with lr_ratio * lr

    In the infinite-width limit equal learning rates make feature learning inefficient
    (Sec. 3); B needs a larger step than A. The ``lora`` structure with ``optimizer="lora_plus"``
    (``adapters.rules``); any LoRA-family variant takes the same rule.
    """

    description = "LoRA+: LoRA with lr of B = lr_ratio * lr of A (Hayou, Ghosh & Yu 2024, arXiv 2402.12354)"
    Options = LoRAPlusOptions
