"""The small training loop and evaluation every transfer arm shares.

``train`` is plain AdamW with linear warmup + decay (as ``lorabench train``) and gradient clipping over whatever parameter groups the arm trains (a LoRA's groups, a
head, an organ), with the loss a function of (model, batch): the task loss for real data, the
distillation loss for synthetic data. ``lorabench.train.fit`` needs an adapter on the model and a
RunConfig, which an organ or a distillation run does not have; this loop is the part of it they need.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..metrics import compute
from ..seeding import linear_warmup_decay, set_seed

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def task_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's own training loss on labelled data (its head: CE, or CE over the vocabulary for head lm)."""
    return model(**batch).loss


def train(model: nn.Module, batches: Callable[[int], Iterable[Batch]], groups: list[dict], *, lr: float,
          epochs: int, loss_fn: LossFn = task_loss, weight_decay: float = 0.0, warmup_ratio: float = 0.06,
          max_grad_norm: float = 1.0, seed: int = 0, progress: bool = True, desc: str = "train") -> dict[str, Any]:
    """Train the parameters in ``groups`` for ``epochs`` passes; ``batches(epoch)`` yields one epoch.
    Returns {steps, train_s, first_loss, last_loss}."""
    set_seed(seed)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    per_epoch = sum(1 for _ in batches(0))
    total = max(1, per_epoch * epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(math.ceil(warmup_ratio * total), total))
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    with tqdm(total=total, desc=desc, disable=not progress, unit="step", dynamic_ncols=True) as bar:
        for epoch in range(epochs):
            for batch in batches(epoch):
                loss = loss_fn(model, batch)
                loss.backward()
                if max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return {"steps": len(losses), "train_s": round(time.perf_counter() - start, 2),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def epochs_of(loader) -> Callable[[int], Iterable[Batch]]:
    """``batches(epoch)`` for a DataLoader: epoch e's order comes from its sampler's ``set_epoch(e)``
    (``data.ShuffledBatches``), so every arm trained on one loader sees the same order in epoch e,
    however many passes earlier arms (or a counting pass) made."""
    sampler = next((s for s in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None))
                    if hasattr(s, "set_epoch")), None)

    def batches(epoch: int) -> Iterable[Batch]:
        if sampler is not None:
            sampler.set_epoch(epoch)
        return iter(loader)

    return batches


def inputs(batch: Batch) -> Batch:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def logits_of(model: nn.Module, batches: Iterable[Batch]) -> torch.Tensor:
    """The model's logits (N, C) over ``batches``, in order, in eval mode."""
    model.eval()
    return torch.cat([model(**inputs(b)).logits.float() for b in batches])


@torch.no_grad()
def evaluate(model: nn.Module, loaders: dict, task) -> dict[str, dict[str, float]]:
    """{split: {metric: value}} of ``model`` on each dev loader."""
    out = {}
    for split, loader in loaders.items():
        preds, labels = [], []
        for batch in loader:
            logits = model(**inputs(batch)).logits.float()
            preds.append(logits.squeeze(-1) if task.is_regression else logits.argmax(-1))
            labels.append(batch["labels"])
        out[split] = {k: float(v) for k, v in compute(task, torch.cat(preds).tolist(), torch.cat(labels).tolist()).items()}
    return out


def head_module(model: nn.Module) -> nn.Module:
    """The classification head of a head-cls model: ``head`` (MeanPoolClassifier), ``classifier`` or ``score``."""
    for name in ("head", "classifier", "score"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"{type(model).__name__} has no classification head (classifier / score)")


def head_only(model: nn.Module) -> list[dict]:
    """Freeze everything but the head; its parameter group."""
    for p in model.parameters():
        p.requires_grad_(False)
    head = head_module(model)
    for p in head.parameters():
        p.requires_grad_(True)
    return [{"params": list(head.parameters())}]
