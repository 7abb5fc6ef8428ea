"""FedSmoothLoRA: round-matching + gradient-aligned client starts, full-rank aggregation merged into the backbone."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..adapters.lora_ga import weight_gradients
from ..errors import ConfigError
from .registry import Aggregation, register, weighted_product

ZETA_MODES = ("auto", "constant", "decay")


@dataclass
class FedSmoothOptions:
    # Round-Matching coefficient zeta: "constant" keeps zeta (the official README: IID), "decay" a
    # cosine from zeta down to min_zeta over the rounds (Non-IID); "auto" (ours): constant when
    # beta = inf, else decay. Official defaults: zeta = 1.0, min_zeta = 0.5.
    zeta: float = 1.0
    zeta_mode: str = "auto"
    min_zeta: float = 0.5
    # The Gradient-Aligned matrix's stable scale gamma (Eq. 8 of the paper; official default 64)
    # and the calibration examples its gradient is estimated on (official: sample_size 128).
    stable_gamma: float = 64.0
    ga_examples: int = 128

    def __post_init__(self):
        if self.zeta_mode not in ZETA_MODES:
            raise ConfigError(f"fedsmooth zeta_mode must be one of {', '.join(ZETA_MODES)}, got {self.zeta_mode!r}")
        if not (self.zeta >= 0 and self.min_zeta >= 0):
            raise ConfigError(f"fedsmooth zeta and min_zeta must be >= 0, got {self.zeta!r}, {self.min_zeta!r}")
        if not self.stable_gamma > 0:
            raise ConfigError(f"fedsmooth stable_gamma must be > 0, got {self.stable_gamma!r}; the official code uses 64")
        if not (isinstance(self.ga_examples, int) and self.ga_examples >= 1):
            raise ConfigError(f"fedsmooth ga_examples must be a positive integer, got {self.ga_examples!r}; e.g. 128")


def truncated_svd(M: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B = U_r S_r (out, r), A = V_r^T (r, in)): the best rank-r factors of M (the official split)."""
    U, S, Vh = torch.linalg.svd(M.float(), full_matrices=False)
    return U[:, :r] * S[:r], Vh[:r]


def gradient_aligned(G: torch.Tensor, r: int, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-GA's factors of a weight gradient G (out, in) (Wang et al. 2024, arXiv 2407.05000, as
    lorabench's ``lora_ga`` with its default direction ArB2r): A0 = c V[:, :r]^T, B0 = c U[:, r:2r],
    c = d_out^(1/4) / sqrt(gamma)."""
    U, _, Vh = torch.linalg.svd(G.float(), full_matrices=False)
    c = G.shape[0] ** 0.25 / gamma**0.5
    return c * U[:, r : 2 * r], c * Vh[:r]


def zeta_at(opts: FedSmoothOptions, round_index: int, rounds: int, beta: float) -> float:
    """zeta of round t (0-indexed): constant, or min + (zeta - min)(1 + cos(pi t / R)) / 2."""
    decay = opts.zeta_mode == "decay" or (opts.zeta_mode == "auto" and not math.isinf(beta))
    if not decay:
        return opts.zeta
    return opts.min_zeta + 0.5 * (opts.zeta - opts.min_zeta) * (1 + math.cos(math.pi * round_index / rounds))


@register("fedsmooth")
class FedSmoothLoRA(Aggregation):
    """FedSmoothLoRA: Toward Smoother and Faster Convergence in Federated Low-Rank Adaptation.
    Wang, Yang, Zeng, Xu, Zhang, Zuo & Feng 2026, arXiv 2605.29460. Read: the abstract and the
    official code, github.com/wangzehao0704/FedSmoothLoRA, ``NLG_exp/fedsmoothlora.py`` (Algorithm 2)
    and ``NLG_exp/utils.py`` (defaults, zeta schedule, aggregation, SVD).

        server:  dW = sum_i p_i B_i A_i;  (B_s, A_s) = SVD_r(dW);  W <- W + s B_s A_s   (merged)
        client c, round t:
            W_rm = zeta_t (B_c A_c [its last upload] - B_s A_s [the last global update])   Round-Matching
            G    = dL/dW at W + s W_rm on ga_examples of c's data;  W_ga = B0 A0 (LoRA-GA of G)  Gradient-Aligned
            start: base W - s W_ga,  (B, A) = SVD_r(W_ga + W_rm)   i.e. ~ W + s W_rm + (B A - W_ga)
            upload (B_c, A_c) = SVD_r(B A - W_ga) after training

    Limited update space: each round's aggregate is merged into the backbone, so the model's
    update is not one rank-r pair. Inter-round state mismatch: with zeta = 1 a client restarts
    from its own last local model (W_rm), not from the global one. Client-agnostic start: the
    gradient-aligned part points the fresh factors along the client's own full-weight gradient.

    Deviations: exact SVD (the code uses ``torch.svd_lowrank``, q = 4r, 8 iterations); a client
    not sampled before has W_rm = 0 (the code, where every client takes part in every round,
    would use its initial state); the calibration batches are the client's own training
    batches (the code: 2 examples a batch); the per-round cosine learning rate of the code is
    not used (every method trains with the run's schedule). Aggregation error: that of the rank-r
    SVD of dW (the global update is rank r). Sent: (B, A) both ways.
    """

    description = "Round-Matching + Gradient-Aligned client starts, SVD aggregation merged into the backbone (Wang et al. 2026, arXiv 2605.29460)"
    Options = FedSmoothOptions

    def __init__(self, opts=None):
        super().__init__(opts)
        self.backbone: dict[str, torch.Tensor] = {}  # W of each adapted layer (merged updates included)
        self.last: dict[int, dict] = {}  # client -> its last upload (B_c, A_c) per layer
        self.ga: dict[str, torch.Tensor] = {}  # this client's W_ga per layer

    def _backbone(self, fed) -> dict[str, torch.Tensor]:
        if not self.backbone:
            self.backbone = {n: layer.weight.detach().float().clone() for n, layer in fed.layers.items()}
        return self.backbone

    def begin_client(self, fed, client, loader) -> None:
        W, s, r = self._backbone(fed), fed.scale, fed.rank
        zeta = zeta_at(self.opts, fed.round_index, fed.settings.rounds, fed.settings.beta)
        rm = {}
        for n, layer in fed.layers.items():
            if client in self.last:
                Bc, Ac = self.last[client][n]
                Bs, As = fed.global_factors[n]
                rm[n] = zeta * (Bc @ Ac - Bs @ As)
            else:
                rm[n] = torch.zeros_like(W[n])
            layer.set_weight(W[n] + s * rm[n])
            layer.adapter.lora_B.data.zero_()  # the model is exactly W + s W_rm for the gradient
        G = weight_gradients(fed.model, list(fed.layers.values()), calibration_batches(loader, self.opts.ga_examples))
        for (n, layer), g in zip(fed.layers.items(), G):
            B0, A0 = gradient_aligned(g.cpu(), r, self.opts.stable_gamma)
            self.ga[n] = B0 @ A0
            B, A = truncated_svd(self.ga[n] + rm[n], r)
            layer.set_weight(W[n] - s * self.ga[n])
            layer.adapter.lora_B.data.copy_(B)
            layer.adapter.lora_A.data.copy_(A)

    def end_client(self, fed, client):
        upload = {}
        for n, (B, A) in fed.get_factors().items():
            upload[n] = truncated_svd(B @ A - self.ga[n], fed.rank)
            fed.layers[n].set_weight(self.backbone[n])
        self.last[client] = upload
        return upload

    def aggregate(self, uploads, p, fed=None):
        r = fed.rank if fed is not None else uploads[0][next(iter(uploads[0]))][0].shape[1]
        return {n: truncated_svd(weighted_product([u[n][0] for u in uploads], [u[n][1] for u in uploads], p), r)
                for n in uploads[0]}

    def end_round(self, fed, new_global) -> None:
        fed.global_factors = new_global
        for n, (Bs, As) in new_global.items():
            self.backbone[n] = self.backbone[n] + fed.scale * (Bs @ As)
            fed.layers[n].set_weight(self.backbone[n])

    def load_global(self, fed) -> None:
        for layer in fed.layers.values():  # the global model is the merged backbone alone
            layer.adapter.lora_B.data.zero_()

    def download(self, fed) -> dict[str, torch.Tensor]:
        if fed.round_index == 0:  # nothing merged yet: every client starts from the base model
            return {}
        return super().download(fed)


def calibration_batches(loader, examples: int) -> list[dict]:
    """The loader's first batches covering ``examples`` examples (the loader rewound afterwards)."""
    batches, seen = [], 0
    for batch in itertools.islice(loader, len(loader)):
        batches.append(batch)
        seen += len(batch["labels"])
        if seen >= examples:
            break
    sampler = getattr(loader, "batch_sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(0)
    return batches
