"""The U-Net's training loop and evaluation, shared by source pretraining and the target arms.

Built from ``lorabench.training``: the device and autocast of ``placement``, ``DivergenceGuard``
(a NaN or exploding loss ends the run as "diverged" before its update), ``Meter`` (training time
without evaluation, peak memory). One optimizer step per batch: AdamW on the trainable tensors
(an adapter's own groups through ``inject.param_groups``), linear warmup then linear decay, the
gradient norm clipped, the variant's ``before_step`` / ``on_step`` hooks.

Loss: binary cross-entropy on the logits plus the soft Dice loss (``loss`` "bce_dice", the usual
pairing for thin, unbalanced foregrounds), or either alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast
from ..seeding import linear_warmup_decay
from ..training.guard import DivergenceGuard
from ..training.meter import Meter
from .data import Pair
from .metrics import mean_scores, scores, soft_dice_loss

Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, 1, h, w), masks (B, 1, h, w) float 0/1


def seg_loss(name: str, logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, truth)
    if name == "bce":
        return bce
    dice = soft_dice_loss(logits, truth)
    return dice if name == "dice" else bce + dice


@dataclass
class Hooks:
    """What an adapter arm adds to a step (``inject.before_step`` / ``on_step``); none for the others."""
    before_step: Callable[[], None] = lambda: None
    on_step: Callable[[int, int], None] = lambda step, total: None


@dataclass
class Outcome:
    status: str = "ok"
    error: str | None = None
    steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    train_loss: list[list[float]] = field(default_factory=list)  # [step, mean loss] every log_every steps


def fit(model: nn.Module, epochs: list[Callable[[], Iterable[Batch]]], groups: list[dict], *, steps: int,
        device: torch.device, amp: torch.dtype | None, meter: Meter, loss: str = "bce_dice",
        warmup_ratio: float = 0.0, max_grad_norm: float = 1.0, log_every: int = 10, hooks: Hooks | None = None,
        progress: Callable[[str], None] | None = None) -> Outcome:
    """Train ``model`` over ``epochs`` (each a callable giving that epoch's batches, ``steps`` in all);
    the history holds each epoch's mean loss and its training patches' Dice (no evaluation)."""
    hooks = hooks or Hooks()
    optimizer = torch.optim.AdamW(groups)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(int(warmup_ratio * steps), steps))
    params = [p for g in groups for p in g["params"]]
    guard, out, window, last = DivergenceGuard(), Outcome(), [], None
    model.train()
    with meter:
        for epoch, make in enumerate(epochs, 1):
            losses, dice = [], []
            for x, y in make():
                x, y = x.to(device), y.to(device)
                with autocast(device, amp):
                    logits = model(x)  # (B, 1, h, w)
                step_loss = seg_loss(loss, logits, y)
                why = guard.check(step_loss.item())
                if why is not None:
                    out.status, out.error = "diverged", why
                    return out
                optimizer.zero_grad(set_to_none=True)
                step_loss.backward()
                if max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                hooks.before_step()
                optimizer.step()
                schedule.step()
                out.steps += 1
                hooks.on_step(out.steps, steps)
                losses.append(step_loss.item())
                window.append(step_loss.item())
                last = (x, y)
                dice += [scores(p, t)[0] for p, t in zip(logits.detach() > 0, y.bool())]
                if out.steps % log_every == 0:
                    out.train_loss.append([out.steps, sum(window) / len(window)])
                    window = []
            mean = sum(losses) / max(len(losses), 1)
            out.history.append({"step": out.steps, "epoch": float(epoch), "train_loss": mean,
                                "train_patch_dice": sum(dice) / max(len(dice), 1), "metrics": {}})
            if progress is not None:
                progress(f"epoch {epoch}/{len(epochs)}: loss {mean:.4f}")
    if window and out.status == "ok":  # the steps since the last record (all of them when fewer than log_every)
        out.train_loss.append([out.steps, sum(window) / len(window)])
    why = guard.check_params((n, p) for g in groups for n, p in enumerate(g["params"]))
    if why is None and last is not None:  # the loss with the trained weights: a last update that blew up shows
        with torch.no_grad(), autocast(device, amp):
            why = guard.check_final_loss(seg_loss(loss, model(last[0]), last[1]).item())
    if why is not None:
        out.status, out.error = "diverged", why
    return out


def batches(x: torch.Tensor, y: torch.Tensor, size: int, generator: torch.Generator) -> Iterator[Batch]:
    """(x, y) shuffled into batches of ``size`` (the last one smaller)."""
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), size):
        idx = order[i:i + size]
        yield x[idx], y[idx]


@torch.no_grad()
def predict(model: nn.Module, image: torch.Tensor, multiple: int, device: torch.device,
            amp: torch.dtype | None) -> torch.Tensor:
    """The boolean mask (H, W) of one whole image (H, W): reflect-padded to a multiple of
    ``multiple``, then cropped back."""
    h, w = image.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    x = F.pad(image.view(1, 1, h, w), (0, pw, 0, ph), mode="reflect") if ph or pw else image.view(1, 1, h, w)
    with autocast(device, amp):
        logits = model(x.to(device)).float()
    return (logits[0, 0, :h, :w] > 0).cpu()


def evaluate(model: nn.Module, pairs: list[Pair], multiple: int, device: torch.device, amp: torch.dtype | None,
             meter: Meter | None = None) -> dict[str, float]:
    """{"dice", "iou"}: means over ``pairs`` of the per-image scores of the whole images."""
    was = model.training
    model.eval()
    try:
        if meter is None:
            preds = [predict(model, p.image, multiple, device, amp) for p in pairs]
        else:
            with meter.evaluating():
                preds = [predict(model, p.image, multiple, device, amp) for p in pairs]
    finally:
        model.train(was)
    return mean_scores(preds, [p.mask for p in pairs])
