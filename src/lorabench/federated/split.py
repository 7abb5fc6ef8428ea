"""Split one training set over N simulated clients: Dirichlet label skew, or IID.

    parts = dirichlet_split(labels, clients=10, beta=0.5, seed=0)   # [[example index, ...], ...]
    picked = sample_clients(10, fraction=0.5, round_index=0, seed=0)  # sorted client ids

Dirichlet(beta) label skew (Hsu, Qi & Brown 2019, arXiv 1909.06335; the NIID-Bench recipe, Li
et al. 2022, arXiv 2102.02079): for each class c, the proportions q_c ~ Dir(beta 1_N) cut that
class's shuffled examples into N pieces, one per client. Small beta: each client holds few
classes; large beta: every client near the global mix. beta = inf is the IID split: one random
permutation cut into N equal parts (sizes differ by at most one). As NIID-Bench does, a draw
that leaves a client with fewer than ``min_size`` examples is redrawn (up to 1,000 times).
Regression labels (STS-B) are binned into 5 quantiles for the split only.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError

#: Redraws before a Dirichlet split that keeps leaving a client (nearly) empty gives up.
MAX_DRAWS = 1000


def check_split(n_examples: int, clients: int, beta: float, fraction: float) -> None:
    """Bad split settings -> ConfigError naming the fix (before any compute)."""
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ConfigError(f"--clients must be a positive integer, got {clients!r}; e.g. --clients 10")
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool)) or math.isnan(beta) or beta <= 0:
        raise ConfigError(f"--beta must be > 0 (small: skewed labels; inf: IID), got {beta!r}; e.g. --beta 0.5")
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ConfigError(f"--fraction must be in (0, 1] (the share of clients sampled per round), got {fraction!r}; "
                          "e.g. --fraction 0.5")
    if clients > n_examples:
        raise ConfigError(f"--clients {clients} is more than the {n_examples} training examples: every client needs "
                          f"at least one; use --clients {max(1, n_examples // 10)} or a larger --train-limit")


def class_ids(labels: list) -> np.ndarray:
    """Integer class of each example (regression targets: their quantile bin, 5 bins)."""
    y = np.asarray(labels)
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        edges = np.quantile(y, [0.2, 0.4, 0.6, 0.8])
        return np.searchsorted(edges, y, side="right")
    return y.astype(np.int64)


def default_min_size(n_examples: int, clients: int) -> int:
    """NIID-Bench's 10 examples per client, less where the data is too small for that."""
    return max(1, min(10, n_examples // (2 * clients)))


def dirichlet_split(labels: list, clients: int, beta: float, seed: int,
                    min_size: int | None = None) -> list[list[int]]:
    """Example indices of each client (each list sorted); every index in exactly one list."""
    n = len(labels)
    check_split(n, clients, beta, 1.0)
    rng = np.random.default_rng(seed)
    if math.isinf(beta):
        return [sorted(part.tolist()) for part in np.array_split(rng.permutation(n), clients)]
    y = class_ids(labels)
    min_size = default_min_size(n, clients) if min_size is None else min_size
    for _ in range(MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            q = rng.dirichlet(np.full(clients, float(beta)))  # (N,) this class's share per client
            cuts = (np.cumsum(q)[:-1] * len(idx)).astype(int)
            for k, piece in enumerate(np.split(idx, cuts)):
                parts[k].extend(piece.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [sorted(p) for p in parts]
    raise ConfigError(f"a Dirichlet(beta={beta}) split of {n} examples over {clients} clients left a client with "
                      f"fewer than {min_size} examples in {MAX_DRAWS} draws; use a larger --beta, fewer --clients "
                      "or a larger --train-limit")


def label_histograms(labels: list, parts: list[list[int]]) -> list[list[int]]:
    """Examples of each class (columns, in class order) held by each client (rows)."""
    y = class_ids(labels)
    classes = np.unique(y)
    return [[int(np.sum(y[p] == c)) for c in classes] if p else [0] * len(classes) for p in parts]


def sample_clients(clients: int, fraction: float, round_index: int, seed: int) -> list[int]:
    """The clients of one round: max(1, round(fraction N)) drawn without replacement, seeded by
    (seed, round) so a round's draw does not depend on what ran before it."""
    m = max(1, round(fraction * clients))
    rng = np.random.default_rng([seed, round_index])
    return sorted(rng.choice(clients, size=m, replace=False).tolist())
