"""FFA-LoRA: A frozen at a shared random init, only B trained and averaged."""

from __future__ import annotations

import torch

from .registry import Aggregation, register, weighted_mean


@register("ffa_lora")
class FFALoRA(Aggregation):
    """FFA-LoRA (Federated Freeze-A LoRA). Sun, Li, Li & Ding 2024 (ICLR), arXiv 2403.12313.

        A: one shared random init (LoRA's Kaiming-uniform), frozen;   B_glob = sum_i p_i B_i

    Every client trains lorabench's ``ffa_lora`` variant (``adapters/ffa_lora.py``: only B has
    gradients), starting from the same A (the one model of the simulation is adapted once, with
    the run's seed, and A is never changed). Aggregation is exact: sum_i p_i B_i A = B_glob A, so
    the aggregation error is 0 (up to float rounding), and only B travels (half LoRA's upload).
    The shared A is sent once, in round 1 (a real deployment could send its seed instead).
    Defaults: the variant's (r = alpha = 8, Sec. 5 of the paper).
    """

    description = "A frozen at a shared random init, only B trained and averaged: exact (Sun et al. 2024, arXiv 2403.12313)"
    variant = "ffa_lora"
    sends_up = ("B",)
    sends_down = ("B",)

    def aggregate_layer(self, Bs, As, p) -> tuple[torch.Tensor, torch.Tensor]:
        return weighted_mean(Bs, p), As[0]  # every A_i is the shared A

    def download(self, fed) -> dict[str, torch.Tensor]:
        sent = super().download(fed)
        if fed.round_index == 0:  # the shared frozen A, once
            sent.update({f"{layer}.lora_A": A for layer, (_, A) in fed.global_factors.items()})
        return sent
