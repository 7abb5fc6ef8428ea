"""The small training loop and evaluation every transfer arm shares.

``train`` is plain AdamW with linear warmup + decay (as ``lorabench train``) and gradient clipping over whatever parameter groups the arm trains (a LoRA's groups, a
head, an organ), with the loss a function of (model, batch): the task loss for real data, the
distillation loss for synthetic data. ``lorabench.train.fit`` needs an adapter on the model and a
RunConfig, which an organ or a distillation run does not have; this loop is the part of it they need,
built from ``lorabench.training`` as that loop is: the model on the GPU when there is one, autocast
in ``precision``, a NaN or exploding loss (or non-finite weights after the last step) ends the arm
as "diverged" instead of a normal-looking dev number, training time and peak memory recorded.
``evaluate`` is ``training.evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..precision import autocast
from ..seeding import linear_warmup_decay, set_seed
from ..training.evaluate import evaluate as evaluate_on
from ..training.guard import DivergenceGuard
from ..training.meter import Meter
from ..training.placement import (
    autocast_dtype,
    device_of,
    grad_scaler,
    placement,
    to_device,
)

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def task_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's own training loss on labelled data (its head: CE, or CE over the vocabulary for head lm)."""
    return model(**batch).loss


def check_lr(value: Any, flag: str) -> None:
    """A learning rate is a finite number > 0, or a ConfigError naming ``flag`` (lr 0 trains nothing and
    reports the untrained model; a negative one is refused by AdamW only once training starts)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{flag} must be a learning rate > 0, got {value!r}; e.g. {flag} 1e-4")


def train(model: nn.Module, batches: Callable[[int], Iterable[Batch]], groups: list[dict], *, lr: float,
          epochs: int, loss_fn: LossFn = task_loss, weight_decay: float = 0.0, warmup_ratio: float = 0.06,
          max_grad_norm: float = 1.0, seed: int = 0, progress: bool = True, desc: str = "train",
          precision: str = "fp32") -> dict[str, Any]:
    """Train the parameters in ``groups`` for ``epochs`` passes; ``batches(epoch)`` yields one epoch.
    The model moves to the run's device (``training.placement``) and stays there; each forward runs
    under ``precision``'s autocast. Returns {steps, train_s, first_loss, last_loss, status ("ok" |
    "diverged"), error, time, memory, precision}; a diverged arm stops at the step whose loss diverged."""
    set_seed(seed)
    device, precision, amp = placement(precision)
    model.to(device)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    per_epoch = sum(1 for _ in batches(0))
    total = max(1, per_epoch * epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(math.ceil(warmup_ratio * total), total))
    meter, guard, scaler = Meter(device), DivergenceGuard(), grad_scaler(device, precision)
    model.train()
    losses: list[float] = []
    error, last = None, None
    with meter, tqdm(total=total, desc=desc, disable=not progress, unit="step", dynamic_ncols=True) as bar:
        for epoch in range(epochs):
            for batch in batches(epoch):
                batch = to_device(batch, device)
                meter.count(batch)
                with autocast(device, amp):
                    loss = loss_fn(model, batch)
                error = guard.check(float(loss.detach()))
                if error is not None:  # stop before the bad update is applied
                    break
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # true gradients for the clip (a no-op unless fp16)
                if max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                last = batch
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if error is not None:
                break
    model.eval()
    if error is None and last is not None:  # after the last update, with the trained weights
        error = guard.check_params(params)
        if error is None:
            with torch.no_grad(), autocast(device, amp):
                error = guard.check_final_loss(float(loss_fn(model, last).detach().float()))
    time = meter.time()
    return {"steps": len(losses), "train_s": round(time["train_s"], 2),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "status": "ok" if error is None else "diverged", "error": error, "time": time,
            "memory": meter.memory(), "precision": precision}


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
def logits_of(model: nn.Module, batches: Iterable[Batch], precision: str = "fp32") -> torch.Tensor:
    """The model's logits (N, C) over ``batches``, in order, in eval mode, on the CPU (the batches go to
    the model's device; the forward runs under ``precision``'s autocast)."""
    model.eval()
    device = device_of(model)
    amp = autocast_dtype(precision, device)
    out = []
    for b in batches:
        with autocast(device, amp):
            out.append(model(**inputs(to_device(b, device))).logits.float().cpu())
    return torch.cat(out)


def evaluate(model: nn.Module, loaders: dict, task, precision: str = "fp32") -> dict[str, dict[str, float]]:
    """{split: {metric: value}} of ``model`` on each dev loader (``training.evaluate`` on the model's
    device, in eval mode, under ``precision``'s autocast: the arm's own)."""
    return timed_evaluate(model, loaders, task, precision)[0]


def timed_evaluate(model: nn.Module, loaders: dict, task, precision: str = "fp32") -> tuple[dict, float]:
    """(``evaluate``'s metrics, its wall seconds: the meter's evaluation clock, the device synchronised)."""
    device = device_of(model)
    meter = Meter(device)
    with meter, meter.evaluating():
        metrics = evaluate_on(model, loaders, task, device, autocast_dtype(precision, device))
    return metrics, meter.time()["eval_s"]


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
