"""LoRA-FA: LoRA with the down-projection A frozen at its init (the ``lora_fa`` rule as a variant)."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import register
from .lora import LoRA, LoRAOptions
from .rules import ZERO_A_INITS  # noqa: F401  (inits that LoRA-FA refuses: A = 0)


@dataclass
class LoRAFAOptions(LoRAOptions):
    optimizer: str = "lora_fa"  # refuses inits with A = 0 (the rule's check)


@register("lora_fa")
class LoRAFA(LoRA):
    """LoRA-FA: Memory-efficient Low-rank Adaptation for LLMs Fine-tuning.
    Zhang, Zhang, Shi, Chu & Li 2023, arXiv 2308.03303.

        h = W0 x + s B A x,   A frozen at its random init,   only B trains (r * out per layer)

    A fixed random projection keeps the activation memory of the down path out of the
    backward pass (Sec. 3); A is a frozen parameter, so it is saved with the adapter. The
    ``lora`` structure with ``optimizer="lora_fa"`` (``adapters.rules``), which freezes A.
    """

    description = "LoRA-FA: LoRA with A frozen at its random init, only B trains (Zhang et al. 2023, arXiv 2308.03303)"
    Options = LoRAFAOptions
