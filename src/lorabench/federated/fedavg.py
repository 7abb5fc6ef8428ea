"""FedAvg of the LoRA factors (FedIT)."""

from __future__ import annotations

import torch

from .registry import Aggregation, register, weighted_mean


@register("fedavg")
class FedAvg(Aggregation):
    """FedAvg on LoRA: the server averages A and B separately, weighted by the clients' example
    counts p_i = n_i / sum_j n_j (McMahan et al. 2017, arXiv 1602.05629; for LoRA: FedIT, Zhang
    et al. 2024, arXiv 2305.05644).

        B_glob = sum_i p_i B_i,   A_glob = sum_i p_i A_i

    The baseline and its known bias: the global update B_glob A_glob is not the average of the
    clients' updates sum_i p_i B_i A_i (the mean of products is not the product of means), so
    the aggregation error ||sum_i p_i B_i A_i - B_glob A_glob||_F is > 0 once the clients differ.
    Clients start every round from (B_glob, A_glob); both factors go up and down.
    """

    description = "average B and A separately by example counts (FedIT; biased: mean(B_i)mean(A_i) != mean(B_i A_i))"

    def aggregate_layer(self, Bs, As, p) -> tuple[torch.Tensor, torch.Tensor]:
        return weighted_mean(Bs, p), weighted_mean(As, p)
