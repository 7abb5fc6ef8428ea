"""GLUE metrics with numpy only: accuracy, macro-F1, binary F1, MCC, Pearson, Spearman.

Every function takes ``(preds, labels)`` as lists, numpy arrays or CPU/GPU tensors and
returns a Python float. They agree with scikit-learn / scipy (tested against them) except
in the degenerate cases, where we return a number instead of nan:

- MCC with a constant prediction or constant labels (zero denominator) is 0.0, as sklearn.
- Pearson / Spearman with a constant input (zero variance) is 0.0, not scipy's nan: a
  constant predictor carries no correlation, and a number keeps "best checkpoint" selection
  and averages over seeds well defined. Non-finite predictions (a diverged run) give nan.
- Binary F1 with no positive among labels and predictions is 0.0 (sklearn's zero_division).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .choices import METRIC_NAMES


def _array(x, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on GPU
        x = x.detach().float().cpu() if x.is_floating_point() else x.detach().cpu()
    return np.asarray(x, dtype=dtype)


def _pair(preds, labels, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    p, y = _array(preds, dtype).reshape(-1), _array(labels, dtype).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"got {p.size} predictions for {y.size} labels; pass one prediction per example")
    if p.size == 0:
        raise ValueError("no predictions to score; evaluate on a non-empty split")
    return p, y


def accuracy(preds, labels) -> float:
    p, y = _pair(preds, labels)
    return float(np.mean(p == y))


def _confusion(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(K, K) counts, rows = label, columns = prediction, over the classes seen in either."""
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    yi, pi = inv[: len(y)], inv[len(y):]
    return np.bincount(yi * k + pi, minlength=k * k).reshape(k, k).astype(np.float64)


def f1_macro(preds, labels) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions
    (sklearn's ``f1_score(average="macro")``). Per class F1 = 2 tp / (2 tp + fp + fn)."""
    c = _confusion(*_pair(preds, labels, np.int64))
    tp = np.diag(c)
    denom = 2 * tp + (c.sum(0) - tp) + (c.sum(1) - tp)  # > 0 for every class seen
    return float(np.mean(2 * tp / denom))


def f1_binary(preds, labels, pos_label: int = 1) -> float:
    """F1 of the positive class (GLUE's MRPC / QQP F1; 1 = paraphrase / duplicate)."""
    p, y = _pair(preds, labels, np.int64)
    tp = np.sum((p == pos_label) & (y == pos_label))
    fp = np.sum((p == pos_label) & (y != pos_label))
    fn = np.sum((p != pos_label) & (y == pos_label))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def mcc(preds, labels) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004); 0.0 when undefined."""
    c = _confusion(*_pair(preds, labels, np.int64))
    n, correct = c.sum(), np.trace(c)
    t, p = c.sum(1), c.sum(0)  # per-class label / prediction counts
    cov_ty = correct * n - t @ p
    denom = math.sqrt((n * n - p @ p) * (n * n - t @ t))
    return float(cov_ty / denom) if denom else 0.0


def pearson(preds, labels) -> float:
    p, y = _pair(preds, labels, np.float64)
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(y))):
        return float("nan")
    p, y = p - p.mean(), y - y.mean()
    denom = math.sqrt(float(p @ p) * float(y @ y))
    return float(np.clip((p @ y) / denom, -1.0, 1.0)) if denom else 0.0


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get the average of the ranks they span (scipy's ``rankdata``)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.concatenate([[True], xs[1:] != xs[:-1]])
    starts = np.flatnonzero(new)
    ends = np.concatenate([starts[1:], [len(x)]])
    ranks = np.empty(len(x))
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(new) - 1]
    return ranks


def spearman(preds, labels) -> float:
    p, y = _pair(preds, labels, np.float64)
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(y))):
        return float("nan")
    return pearson(_rank(p), _rank(y))


METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "f1_macro": f1_macro,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
}
assert tuple(METRICS) == METRIC_NAMES  # task files name metrics through choices.METRIC_NAMES


def _spec(task):
    from .data.glue import get_task

    return get_task(task)


def primary(task) -> str:
    """The task's headline metric: "accuracy", "mcc" (CoLA) or "pearson" (STS-B)."""
    return _spec(task).primary_metric


def predictions(task, outputs) -> np.ndarray:
    """Model outputs -> predictions: argmax over logits ``(N, C)`` for classification,
    the score ``(N,)`` or ``(N, 1)`` for regression; 1-D class indices pass through."""
    spec = _spec(task)
    out = _array(outputs)
    if spec.is_regression:
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 1:
            raise ValueError(f"{spec.display} is a regression task: expected (N,) or (N, 1) scores, got {out.shape}")
        return out.astype(np.float64)
    if out.ndim == 2:
        return out.argmax(axis=1)
    if out.ndim != 1:
        raise ValueError(f"expected (N,) class indices or (N, {spec.num_labels}) logits, got shape {out.shape}")
    return out.astype(np.int64)


def compute(task_or_spec, preds, labels) -> dict[str, float]:
    """Every metric of the task, e.g. ``{"accuracy": .91, "f1_macro": .90}``. ``preds`` may be
    class indices, logits (argmax is taken) or regression scores."""
    spec = _spec(task_or_spec)
    p = predictions(spec, preds)
    y = _array(labels).reshape(-1)
    y = y.astype(np.float64) if spec.is_regression else y.astype(np.int64)
    return {name: METRICS[name](p, y) for name in spec.metrics}


def aurac(ranks, scores, scale: str = "linear") -> float:
    """Area Under the Rank-Accuracy Curve of a rank-flexible adapter (MatryoshkaLoRA, Modoranu,
    Safaryan & Alistarh 2026, arXiv 2605.07850): the trapezoid area under ``score(rank)`` over the
    evaluated ranks, divided by the rank range, so it lies between the smallest and largest score
    (a flat curve gives that score). ``scale="linear"`` integrates over the rank itself
    (``AURAC_v1`` of the official code), ``"log2"`` over log2(rank), weighting every doubling
    equally (``AURAC_v2``). One evaluated rank gives its score.
    """
    r, s = _array(ranks, np.float64).reshape(-1), _array(scores, np.float64).reshape(-1)
    if r.shape != s.shape or r.size == 0:
        raise ValueError(f"aurac needs one score per rank and at least one rank, got {r.size} ranks and {s.size} scores")
    if scale not in ("linear", "log2"):
        raise ValueError(f"unknown aurac scale {scale!r}; use 'linear' or 'log2'")
    if np.any(r <= 0) or np.any(np.diff(r) <= 0):
        raise ValueError(f"ranks must be positive and strictly increasing, got {r.tolist()}; sort them first")
    if r.size == 1:
        return float(s[0])
    x = np.log2(r) if scale == "log2" else r
    area = np.sum(np.diff(x) * (s[1:] + s[:-1]) / 2.0)  # trapezoid rule
    return float(area / (x[-1] - x[0]))
