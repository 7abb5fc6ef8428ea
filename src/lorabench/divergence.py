"""When a run has diverged: the checks ``train.fit`` makes before every optimizer step and once
more after the last one (a diverged run is recorded as such, never "ok", and the report never
picks it)."""

from __future__ import annotations

import torch
from accelerate.utils import send_to_device

from .precision import autocast
from .training.guard import DIVERGENCE_FACTOR, DivergenceGuard, divergence  # noqa: F401  (divergence.divergence)


@torch.no_grad()
def check_after_training(model, core, batch: dict, first_loss: float | None, accelerator, amp, state,
                         task) -> None:
    """After the last update, with the trained weights: trainable tensors finite, the loss on
    ``batch`` (a micro-batch of the last step) not diverged, the dev metrics not NaN
    (``training.guard``'s checks, which every loop shares). Marks ``state`` diverged otherwise."""
    guard = DivergenceGuard(first=first_loss, steps=state.step)
    why = guard.check_params(core.named_parameters())
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
        why = guard.check_final_loss(loss)
    if why is None and state.final is not None:  # a run without dev sets: no metric check
        why = guard.check_metrics(state.final["metrics"], task.primary_metric)
    if why is not None:
        state.status, state.error = "diverged", why
