"""One short training loop for a multi-task run, and its per-task evaluation.

Not ``train.fit``: that loop reads one task (one head, ``model(**batch)``) from a ``RunConfig``,
while here every batch names its task and a router may need its own objective (ReMix runs M
sampled selections of each batch, ``Router.objective``). AdamW, linear warmup then decay
(``seeding.linear_warmup_decay``), gradient clipping (the routers' norm apart from the rest, so ReMix's
policy gradient, summed over every token and block, cannot shrink the experts' step); dev metrics per task (``metrics.compute``)
after every epoch, with the expert usage recorded during the final evaluation.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..metrics import compute
from ..seeding import linear_warmup_decay, set_seed
from . import registry
from .config import MixtureConfig
from .usage import usage_report


def objective(model, task: str, batch: dict, cfg: MixtureConfig) -> torch.Tensor:
    if model.routing is None:
        return model(task, **batch).loss
    router_cls = registry.get(cfg.method)
    return router_cls.objective(model, task, batch, router_cls.make_options(cfg.experts, **cfg.router_options()))


@torch.no_grad()
def evaluate(model, dev: dict[str, dict], record: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {split: {metric: value}}}; ``record``: count expert usage (into ``model.routing``)."""
    model.eval()
    if model.routing is not None:
        model.routing.recording = record
        model.routing.usage.clear()
    out = {}
    for task, loaders in dev.items():
        spec = model.specs[task]
        out[task] = {}
        for split, loader in loaders.items():
            preds, labels = [], []
            for batch in loader:
                logits = model(task, **{k: v for k, v in batch.items() if k != "labels"}).logits.float()
                preds.append(logits.squeeze(-1) if spec.is_regression else logits.argmax(-1))
                labels.append(batch["labels"])
            out[task][split] = {k: float(v) for k, v in compute(spec, torch.cat(preds).tolist(),
                                                                  torch.cat(labels).tolist()).items()}
    if model.routing is not None:
        model.routing.recording = False
    model.train()
    return out


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def fit(model, batches, dev: dict[str, dict], cfg: MixtureConfig, progress: bool = True) -> dict:
    """Train ``model`` on ``batches`` (``interleave.Interleaved``), evaluate on ``dev`` ({task: {split:
    loader}}) after every epoch; returns {history, final, usage, train_s, steps}."""
    set_seed(cfg.seed)
    optimizer = torch.optim.AdamW(trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    routed = {id(p) for p in model.routers.parameters()}
    clip_groups = [g for g in ([p for p in trainable(model) if id(p) in routed],
                               [p for p in trainable(model) if id(p) not in routed]) if g]
    total = cfg.epochs * len(batches)
    warmup = int(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup, total))
    history, losses, train_s, step = [], [], 0.0, 0
    bar = tqdm(total=total, disable=not progress, unit="step", desc=f"{cfg.method} {'+'.join(cfg.tasks)}")
    model.train()
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        epoch_losses = []
        for task, batch in batches:
            loss = objective(model, task, batch, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:  # routers apart: ReMix's policy gradient sums over every token and block,
                for group in clip_groups:  # and must not shrink the experts' step under one shared clip
                    torch.nn.utils.clip_grad_norm_(group, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            epoch_losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{sum(epoch_losses[-20:]) / len(epoch_losses[-20:]):.4f}")
        train_s += time.perf_counter() - start
        losses.append(sum(epoch_losses) / max(len(epoch_losses), 1))
        last = epoch == cfg.epochs - 1
        metrics = evaluate(model, dev, record=last)
        history.append({"epoch": epoch + 1, "step": step, "train_loss": losses[-1], "tasks": metrics})
    bar.close()
    usage = usage_report(model.routing.usage) if model.routing is not None else None
    return {"history": history, "final": history[-1]["tasks"], "usage": usage, "train_s": train_s, "steps": step}
