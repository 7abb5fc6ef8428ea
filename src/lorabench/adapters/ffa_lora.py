"""FFA-LoRA: Federated Freeze-A LoRA, LoRA with the random A fixed for federated / DP training."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import register
from .lora_fa import LoRAFA, LoRAFAOptions


@dataclass
class FFALoRAOptions(LoRAFAOptions):
    # Sec. 5 of the paper: rank 8 and scaling factor alpha = 8 for both LoRA and FFA-LoRA
    # (RoBERTa-large on GLUE); what changes is the learning rate, about 10x LoRA's
    # (SGD / DP-SGD: LoRA 0.01-0.1, FFA-LoRA 0.1-1.0). With A fixed, alpha is redundant with
    # the learning rate (see the class docstring), so FFA-LoRA keeps LoRA's alpha.
    r: int = 8
    alpha: float = 8.0


@register("ffa_lora")
class FFALoRA(LoRAFA):
    """FFA-LoRA, from "Improving LoRA in Privacy-preserving Federated Learning".
    Sun, Li, Li & Ding 2024 (ICLR), arXiv 2403.12313.

        h = W0 x + s B A x,   A random (LoRA's Kaiming-uniform) and frozen,   B = 0 trained

    The same update as LoRA-FA (``lora_fa``); the paper comes to it from federated learning
    with differential privacy, not from activation memory:

    * aggregation is exact: with A shared and fixed, the server's average of the clients' B
      gives mean_i(s B_i A) = s mean_i(B_i) A, which averaging both factors of LoRA does not;
    * DP-SGD noise enters linearly (only B is noised), not through the product of two noisy
      factors; and half the parameters are sent per round;
    * the scaling factor is redundant: with B0 = 0 and only B trained, SGD with (alpha, lr)
      and (k alpha, lr / k^2) give the same model (Adam: (k alpha, lr / k)), so FFA-LoRA is
      tuned through the learning rate alone and is robust to alpha, unlike LoRA (Sec. 4).

    Defaults follow the paper's GLUE setting (r = alpha = 8); expect to need a larger learning
    rate than LoRA's.
    """

    description = "FFA-LoRA: A fixed random, only B trains; exact FedAvg, DP-friendly (Sun et al. 2024, arXiv 2403.12313)"
    Options = FFALoRAOptions
