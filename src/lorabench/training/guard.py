"""When a run has diverged, said one way for every loop (``train.fit``'s final checks use it too,
through ``divergence.check_after_training``).

A loss that became NaN, or exploded past ``DIVERGENCE_FACTOR`` times the first step's,
stops the run before the bad update is applied; after the last update the trainable tensors, the
loss on a last batch and the dev metrics are checked once more, because one last step can blow the
weights up without any step's loss (measured before its own update) showing it. A diverged run is
recorded with status "diverged" and the message, never as normal metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

HINT = "lower the learning rate"
#: A run has diverged when its training loss is not finite, or exceeds this many times its first
#: step's loss (and 10): checked before every optimizer step and once more after the last one,
#: with the trained weights, so a final update that blew the model up is never recorded "ok".
DIVERGENCE_FACTOR = 100.0


def divergence(loss: float, first: float | None) -> str | None:
    """Why a training loss means divergence (``DIVERGENCE_FACTOR``), or None when it does not."""
    if not math.isfinite(loss):
        return f"became {loss}"
    if first is not None and loss > max(10.0, DIVERGENCE_FACTOR * first):
        return f"exploded to {loss:.4g} (first step: {first:.4g})"
    return None


class DivergenceGuard:
    """Counts the steps it checks; each ``check_*`` returns the message of a divergence, or None."""

    def __init__(self, first: float | None = None, steps: int = 0):
        self.first = first  #: the first step's loss, the yardstick of "exploded"
        self.steps = steps  #: steps checked so far

    def message(self, what: str, step: int | None = None) -> str:
        return f"{what} at step {self.steps if step is None else step}; {HINT}"

    def check(self, loss: float) -> str | None:
        """A training step's loss, before its update (the first call's loss is the yardstick)."""
        self.steps += 1
        loss = float(loss)
        self.first = loss if self.first is None else self.first
        why = divergence(loss, self.first)
        return None if why is None else self.message(f"training loss {why}")

    def check_final_loss(self, loss: float) -> str | None:
        """The training loss on a batch after the last update, with the trained weights."""
        why = divergence(float(loss), self.first)
        return None if why is None else self.message(f"training loss after the last update {why}")

    def check_params(self, params: Iterable) -> str | None:
        """Non-finite trainable tensors: ``params`` holds tensors or (name, tensor) pairs."""
        bad = []
        for i, item in enumerate(params):
            name, p = item if isinstance(item, tuple) else (f"tensor {i}", item)
            if p.requires_grad and not torch.isfinite(p.detach()).all():
                bad.append(name)
        return None if not bad else self.message(f"trainable tensors became non-finite ({', '.join(bad[:3])})")

    def check_metrics(self, metrics: dict[str, dict[str, float]], metric: str) -> str | None:
        """The primary ``metric`` on the first split of ``metrics`` ({split: {metric: value}}) is a
        number (no dev sets, an empty ``metrics``: nothing to check)."""
        if not metrics:
            return None
        value = (next(iter(metrics.values())) or {}).get(metric)
        if value is not None and math.isfinite(value):
            return None
        return self.message(f"dev {metric} is {value} after the last update (a constant or non-finite prediction)")
