"""LoRA-LEGO: rank-wise clustering of Minimal Semantic Units. Zhao et al. 2024/2025, "Merging LoRAs
like Playing LEGO: Pushing the Modularity of LoRA to Extremes Through Rank-Wise Clustering",
arXiv 2409.16167 (ICLR 2025).

An MSU is one rank of a LoRA: column b_i of B (scale and the adapter's weight folded in) with row
a_i of A; B A = sum_i b_i a_i^T, so MSUs can be permuted and pooled. Per layer, the MSUs
of all N adapters (sum_t r_t of them) are clustered into k groups by k-means on the concatenated
vectors [b_i; a_i] (k-means++ seeding and Lloyd steps, from a torch.Generator seeded with ``--seed``);
each centroid (b_j, a_j) becomes one rank of the merged rank-k LoRA. Dual reweighting, as we
implement it:

    parameter reweighting (norm decay: a mean of non-parallel vectors is shorter than they are):
        b_j <- b_j * mean_{i in j} ||b_i|| / ||b_j||,   a_j likewise with ||a_i||
    output reweighting (variance expansion: the cluster's m_j units add their outputs):
        dW = sum_j sqrt(m_j) b_j a_j^T

Both are the identity for a cluster of one MSU, so k = sum_t r_t reproduces concatenation
(up to the order of the ranks). NOTE: this is our reading of the paper's dual reweighting; its
exact equations were not checked against the paper's text or official code.
Default k: the largest rank of the inputs ("default the adapters' rank r").
"""

from __future__ import annotations

import torch

from .registry import Method, register


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, steps: int = 100) -> torch.Tensor:
    """Cluster index of every row of ``x`` (n, d): k-means++ seeding (Arthur & Vassilvitskii 2007),
    then Lloyd steps until the assignment stops changing."""
    n = x.shape[0]
    centers = x[torch.randint(n, (1,), generator=generator)]  # (1, d)
    while centers.shape[0] < k:
        d2 = torch.cdist(x, centers).min(dim=1).values ** 2  # (n,)
        pick = torch.multinomial(d2 if d2.sum() > 0 else torch.ones(n), 1, generator=generator)
        centers = torch.cat([centers, x[pick]])
    assign = torch.cdist(x, centers).argmin(dim=1)  # (n,)
    for _ in range(steps):
        for j in range(k):
            if (assign == j).any():  # an emptied cluster keeps its centre
                centers[j] = x[assign == j].mean(dim=0)
        new = torch.cdist(x, centers).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


@register("lego")
class LoRALEGO(Method):
    description = "LoRA-LEGO: k-means of the rank-1 units [b_i; a_i] of all adapters, centroids as a rank-k LoRA, dual reweighting (Zhao et al. 2024, arXiv 2409.16167)"
    uses = frozenset({"k", "seed"})

    @classmethod
    def merge_layer(cls, factors, weights, rank, density, generator):
        b = torch.cat([w * B for (B, _), w in zip(factors, weights)], dim=1).T.double()  # (N r, out): one b_i a row
        a = torch.cat([A for _, A in factors], dim=0).double()  # (N r, in)
        assign = kmeans(torch.cat([b, a], dim=1), rank, generator)
        Bs, As = [], []
        for j in range(rank):
            members = assign == j
            if not members.any():  # fewer distinct MSUs than k: an empty rank
                Bs.append(torch.zeros_like(b[0]))
                As.append(torch.zeros_like(a[0]))
                continue
            bj, aj = b[members].mean(dim=0), a[members].mean(dim=0)
            bj = bj * b[members].norm(dim=1).mean() / bj.norm().clamp(min=1e-12)  # parameter reweighting
            aj = aj * a[members].norm(dim=1).mean() / aj.norm().clamp(min=1e-12)
            Bs.append(bj * members.sum().double().sqrt())  # output reweighting
            As.append(aj)
        return torch.stack(Bs, dim=1).float(), torch.stack(As).float()  # (out, k), (k, in)
