"""The two pieces every training loop in lorabench shares, on the lowest floor so that any loop can
import them: ``set_seed`` (Python, numpy and torch) and ``linear_warmup_decay`` (the learning-rate
multiplier of ``lorabench train``). ``lorabench.train`` re-exports both."""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too


def linear_warmup_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: 0 -> 1 linearly over ``warmup_steps``, then linearly to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor
