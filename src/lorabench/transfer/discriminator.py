"""The discriminator filter of Trans-LoRA (Wang et al. 2024, arXiv 2405.17258, Sec. 3.2), small.

The paper trains a discriminator (a LoRA on the source model) to tell the real seed examples from
synthetic ones and keeps the synthetic samples it judges real. Ours is logistic regression on the
source model's features (the input of its classification head: the pooled last hidden state),
standardized; classes are balanced by weighting the few real examples up (``pos_weight`` =
#synthetic / #real) and the weights have an L2 penalty ``l2``. With only a few real seeds, the
synthetic samples are scored by cross-fitting (``folds`` folds: each fold is scored by a model
fitted on the seeds and the other folds), so no sample is scored by a discriminator that saw it
labelled "synthetic". The ``keep`` fraction with the highest p(real) is kept: exactly
``round(keep * N)`` of N (at least 1), ties broken by generation order.

``keep_top_per_class`` keeps that fraction within each class the teacher predicts instead (our
addition, not in the paper): a discriminator fitted on five seeds can find "looks like a seed" to
mean "has the seeds' label" and keep one class only, and a student distilled on one class learns a
constant. Per-class keeping leaves the teacher's class mix of the synthetic inputs as it was.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .loop import head_module


@torch.no_grad()
def head_features(model: nn.Module, batches) -> torch.Tensor:
    """The input of ``model``'s classification head per example (N, H): mean-pooled (or [CLS]) states."""
    head = head_module(model)
    seen: list[torch.Tensor] = []

    def grab(module, args):
        x = args[0]
        seen.append((x[:, 0] if x.ndim == 3 else x).detach().float())  # (B, H); RoBERTa-style heads get (B, T, H)

    handle = head.register_forward_pre_hook(grab)
    model.eval()
    try:
        for b in batches:
            model(**{k: v for k, v in b.items() if k != "labels"})
    finally:
        handle.remove()
    return torch.cat(seen)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-2, steps: int = 100) -> tuple[torch.Tensor, ...]:
    """(mean, std, w, b): p(real | x) = sigmoid(w . (x - mean) / std + b), fitted by L-BFGS on the
    class-balanced logistic loss + l2 ||w||^2 (y = 1: real, 0: synthetic)."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    pos = float((y == 0).sum()) / max(float((y == 1).sum()), 1.0)
    weight = torch.where(y == 1, pos, 1.0)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z @ w + b, y.float(), weight=weight) + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, w.detach(), b.detach()


def p_real(params: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    mean, std, w, b = params
    return torch.sigmoid(((x - mean) / std) @ w + b)


def cross_fit_scores(real: torch.Tensor, synthetic: torch.Tensor, *, folds: int = 2, l2: float = 1e-2,
                     seed: int = 0) -> torch.Tensor:
    """p(real) of every synthetic row, each scored by a discriminator that did not train on it
    (rows go to folds by a seeded random permutation, so each fold is a sample of all of them)."""
    n = len(synthetic)
    if n < folds:
        raise ConfigError(f"{n} synthetic inputs cannot be split into {folds} folds; generate at least {folds}")
    scores = torch.empty(n)
    fold_of = torch.empty(n, dtype=torch.long)
    fold_of[torch.randperm(n, generator=torch.Generator().manual_seed(seed))] = torch.arange(n) % folds
    for k in range(folds):
        train = synthetic[fold_of != k]
        x = torch.cat([real, train])
        y = torch.cat([torch.ones(len(real)), torch.zeros(len(train))])
        scores[fold_of == k] = p_real(fit_logistic(x, y, l2=l2), synthetic[fold_of == k])
    return scores


def keep_count(n: int, keep: float) -> int:
    """How many of ``n`` the ``keep`` fraction keeps: round(keep * n), at least 1."""
    return max(1, min(n, round(keep * n)))


def keep_top(scores: torch.Tensor, keep: float) -> list[int]:
    """Indices of the ``keep_count`` highest scores, in generation order (a stable sort breaks ties by index)."""
    k = keep_count(len(scores), keep)
    order = torch.sort(-scores, stable=True).indices[:k]
    return sorted(order.tolist())


def keep_top_per_class(scores: torch.Tensor, classes: torch.Tensor, keep: float) -> list[int]:
    """``keep_top`` within each class: of the inputs whose ``classes`` (e.g. the teacher's argmax) is c,
    the ``keep_count`` highest-scoring, for every c present; the union in generation order."""
    if classes.shape != scores.shape:
        raise ValueError(f"one class per score: got {tuple(classes.shape)} classes for {tuple(scores.shape)} scores")
    kept: list[int] = []
    for c in torch.unique(classes).tolist():
        rows = torch.nonzero(classes == c).flatten()
        kept += rows[keep_top(scores[rows], keep)].tolist()
    return sorted(kept)
