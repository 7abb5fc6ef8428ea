"""Cut the training loader into optimizer steps and micro-batches (``train.fit`` and ``pack.fit``)."""

from __future__ import annotations

import torch

from .measure import batch_size


def step_groups(loader, size: int):
    """Consecutive lists of ``size`` batches (the last may be shorter): one optimizer step each."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def split_batch(batch: dict, micro: int) -> list[dict]:
    """Cut a batch into micro-batches of at most ``micro`` examples."""
    if batch_size(batch) <= micro:
        return [batch]
    keys = [k for k, v in batch.items() if torch.is_tensor(v)]
    chunks = zip(*(batch[k].split(micro) for k in keys))
    return [{**batch, **dict(zip(keys, c))} for c in chunks]
