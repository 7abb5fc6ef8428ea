"""When a run has diverged: the checks ``train.fit`` makes before every optimizer step and once
more after the last one (a diverged run is recorded as such, never "ok", and the report never
picks it)."""

from __future__ import annotations

import math

import torch
from accelerate.utils import send_to_device

from .precision import autocast

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


@torch.no_grad()
def check_after_training(model, core, batch: dict, first_loss: float | None, accelerator, amp, state,
                         task) -> None:
    """After the last update, with the trained weights: trainable tensors finite, the loss on
    ``batch`` (a micro-batch of the last step) not diverged, the dev metrics not NaN. Marks ``state``
    diverged otherwise."""
    bad = [n for n, p in core.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    why = f"trainable tensors became non-finite ({', '.join(bad[:3])})" if bad else None
    if why is None:
        training = model.training
        model.eval()
        try:  # one micro-batch, without gradients: it fits where the training step did
            with autocast(accelerator.device, amp):
                loss = float(model(**send_to_device(batch, accelerator.device)).loss.float())
        except torch.cuda.OutOfMemoryError:
            loss = first_loss if first_loss is not None else 0.0  # not measurable here: the other checks decide
        finally:
            model.train(training)
        if accelerator.num_processes > 1:  # the ranks decide together
            loss = accelerator.reduce(torch.tensor(loss, device=accelerator.device), "mean").item()
        reason = divergence(loss, first_loss)
        why = f"training loss after the last update {reason}" if reason else None
    if why is None and state.final is not None and state.final["metrics"]:  # a run without dev sets: no metric check
        primary = (next(iter(state.final["metrics"].values()), {}) or {}).get(task.primary_metric)
        if primary is None or not math.isfinite(primary):
            why = f"dev {task.primary_metric} is {primary} after the last update (a constant or non-finite prediction)"
    if why is not None:
        state.status, state.error = "diverged", f"{why} at step {state.step}; lower the learning rate"
