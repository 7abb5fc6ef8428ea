"""One short training loop for a multi-task run, and its per-task evaluation.

Not ``train.fit``: that loop reads one task (one head, ``model(**batch)``) from a ``RunConfig``,
while here every batch names its task and a router may need its own objective (ReMix runs M
sampled selections of each batch, ``Router.objective``). AdamW, linear warmup then decay
(``seeding.linear_warmup_decay``), gradient clipping (the routers' norm apart from the rest, so ReMix's
policy gradient, summed over every token and block, cannot shrink the experts' step); dev metrics per task (``metrics.compute``)
after every epoch, with the expert usage recorded during the final evaluation.

What every loop owes its run comes from ``lorabench.training``, as in ``train.fit``: the model on the
GPU when there is one, every forward (training and evaluation) under the config's ``precision``,
a loss that turns NaN or explodes stops the run as "diverged" before its update (and the trainable
tensors, a last batch's loss and the dev metrics are checked after the last step), training time
without the evaluations, and peak memory.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..precision import autocast
from ..seeding import linear_warmup_decay, set_seed
from ..training.evaluate import evaluate as evaluate_split
from ..training.guard import DivergenceGuard
from ..training.meter import Meter
from ..training.placement import device_of, grad_scaler, placement, to_device
from . import registry
from .config import MixtureConfig
from .usage import usage_report


def objective(model, task: str, batch: dict, cfg: MixtureConfig) -> torch.Tensor:
    if model.routing is None:
        return model(task, **batch).loss
    router_cls = registry.get(cfg.method)
    return router_cls.objective(model, task, batch, router_cls.make_options(cfg.experts, **cfg.router_options()))


def evaluate(model, dev: dict[str, dict], record: bool = False, amp: torch.dtype | None = None,
             device: torch.device | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {split: {metric: value}}} (``training.evaluate``, the model called ``model(task, **inputs)``);
    ``record``: count expert usage (into ``model.routing``). ``device``: the model's by default."""
    device = device if device is not None else device_of(model)
    if model.routing is not None:
        model.routing.recording = record
        model.routing.usage.clear()
    out = {}
    try:
        for task, loaders in dev.items():
            out[task] = evaluate_split(model, loaders, model.specs[task], device, amp,
                                       forward=lambda m, inputs, task=task: m(task, **inputs))
    finally:
        if model.routing is not None:
            model.routing.recording = False
    return out


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def fit(model, batches, dev: dict[str, dict], cfg: MixtureConfig, progress: bool = True) -> dict:
    """Train ``model`` on ``batches`` (``interleave.Interleaved``), evaluate on ``dev`` ({task: {split:
    loader}}) after every epoch; returns {status ("ok" | "diverged"), error, history, final (None when
    it diverged before any evaluation), usage, train_s, steps, time, memory, precision}."""
    set_seed(cfg.seed)
    device, precision, amp = placement(cfg.precision)
    model.to(device)
    meter, guard, scaler = Meter(device), DivergenceGuard(), grad_scaler(device, precision)
    optimizer = torch.optim.AdamW(trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    routed = {id(p) for p in model.routers.parameters()}
    clip_groups = [g for g in ([p for p in trainable(model) if id(p) in routed],
                               [p for p in trainable(model) if id(p) not in routed]) if g]
    total = cfg.epochs * len(batches)
    warmup = int(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup, total))
    history, losses, step, error, last = [], [], 0, None, None
    bar = tqdm(total=total, disable=not progress, unit="step", desc=f"{cfg.method} {'+'.join(cfg.tasks)}")
    model.train()
    meter.start()
    try:
        for epoch in range(cfg.epochs):
            epoch_losses = []
            for task, batch in batches:
                batch = to_device(batch, device)
                meter.count(batch)
                with autocast(device, amp):
                    loss = objective(model, task, batch, cfg)
                value = loss.item()
                error = guard.check(value)
                if error is not None:  # stop before the bad update is applied
                    break
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # true gradients for the clip (a no-op unless fp16)
                if cfg.max_grad_norm > 0:  # routers apart: ReMix's policy gradient sums over every token and block,
                    for group in clip_groups:  # and must not shrink the experts' step under one shared clip
                        torch.nn.utils.clip_grad_norm_(group, cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                last = task, batch
                epoch_losses.append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{sum(epoch_losses[-20:]) / len(epoch_losses[-20:]):.4f}")
            if error is not None:
                break
            losses.append(sum(epoch_losses) / max(len(epoch_losses), 1))
            with meter.evaluating():
                metrics = evaluate(model, dev, record=epoch == cfg.epochs - 1, amp=amp, device=device)
            history.append({"epoch": epoch + 1, "step": step, "train_loss": losses[-1], "tasks": metrics})
    finally:
        meter.stop()
        bar.close()
    if error is None and last is not None:
        error = after_training(model, guard, last, history[-1]["tasks"], amp, device)
    usage = usage_report(model.routing.usage) if model.routing is not None else None
    time = meter.time()
    return {"status": "ok" if error is None else "diverged", "error": error, "history": history,
            "final": history[-1]["tasks"] if history else None, "usage": usage, "train_s": time["train_s"],
            "steps": step, "time": time, "memory": meter.memory(), "precision": precision}


@torch.no_grad()
def after_training(model, guard: DivergenceGuard, last: tuple[str, dict], final: dict, amp, device) -> str | None:
    """With the trained weights: trainable tensors finite, the task loss on the last step's batch not
    diverged, each task's primary dev metric a number; the divergence message, or None."""
    error = guard.check_params(list((n, p) for n, p in model.named_parameters() if p.requires_grad))
    if error is None:
        task, batch = last
        was_training = model.training
        model.eval()
        try:
            with autocast(device, amp):
                error = guard.check_final_loss(model(task, **batch).loss.float().item())
        finally:
            model.train(was_training)
    for task, metrics in final.items():
        error = error or guard.check_metrics(metrics, model.specs[task].primary_metric)
    return error
