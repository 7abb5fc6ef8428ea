"""The ``recycle`` kind as a run: one arm of the recycling study on one target task.

    lorabench train --kind recycle --task rte --scenario pool=runs/merge-glue --scenario hold_out_target=true \
        --scenario arm=adaptive --scenario n_examples=64

Liu et al. 2026 (arXiv 2602.12323, ``merging.adaptive``) ask whether adaptive merging helps through
the pool's knowledge. Each arm gets the same N target training examples (a seeded subset of the
target's train split), the same ``steps`` optimizer steps over them in the same order, the same
freshly initialised classification head (trained at ``--lr`` in every arm) and is reported on the
target's dev split, measured once after the last step (``metric.selected_on`` "last"; the official
code selects its checkpoint on 20 held-out target examples, which we do not hold out):

- ``adaptive``: learned coefficients over the pool (``scenario.lr``, per layer by default);
- ``uniform``: the pool's uniform average (w_k = 1/K, the ``linear`` merge), only the head trains;
- ``best_single``: each pool adapter alone, head trained as above; the one with the lowest training
  loss on the N examples after that is kept (selected on the N training examples, never on dev);
- ``random_pool``: ``adaptive`` over random LoRAs of the pool's shapes and scale (seeded by --seed);
- ``fresh``: a new LoRA of the pool's rank, alpha and targets trained on the N examples (``--lr``).

The pool never holds the target's own adapter (``read_pool``). The loop is
``transfer.loop.train`` (training parts: device, autocast, divergence guard, meter); the official
cosine schedule with 10% warmup is replaced by its linear warmup (``--warmup-ratio``) and decay.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import inject, models
from ..data import build_loaders, get_task
from ..data.fingerprint import read_record
from ..errors import ConfigError
from ..precision import autocast
from ..results import TIME_KEYS
from ..seeding import set_seed
from ..targets import head_modules
from ..training.guard import DivergenceGuard
from ..training.meter import Meter
from ..training.placement import autocast_dtype, device_of, to_device
from ..transfer.loop import epochs_of, evaluate, train
from .adaptive import (
    attach,
    check_fits,
    detach,
    learned_weights,
    random_like,
)
from .merge import Source, check_sources, pool_folders, read_source
from .recycle_settings import LEARNS, RecycleSettings


def read_pool(paths: list[str], target: str, hold_out: bool) -> tuple[list[Source], list[str]]:
    """(the pool's adapters, the folders dropped as trained on ``target``). An adapter trained on the
    target task is refused (its knowledge is not recycled: it is the task) unless ``hold_out``."""
    sources = [read_source(d) for d in pool_folders(paths)]
    mine = [s for s in sources if s.task == target]
    if mine and not hold_out:
        raise ConfigError(f"the pool holds an adapter trained on the target task {target} ({mine[0].directory}); "
                          "recycling must not see the target's own adapter: drop it from scenario pool, or set "
                          "--scenario hold_out_target=true to leave it out")
    sources = [s for s in sources if s.task != target]
    if not sources:
        raise ConfigError(f"the pool has no adapter left that was trained on a task other than {target}; add some")
    if len(sources) > 1:
        check_sources(sources)  # one base, architecture and target layers; no adapter twice
    return sources, [str(s.directory) for s in mine]


def step_batches(loader, steps: int):
    """``batches(epoch)`` yielding exactly ``steps`` batches: passes over the N examples, each pass in
    the loader's seeded order (``transfer.loop.epochs_of``), so every arm sees the same sequence."""
    passes = epochs_of(loader)

    def batches(_epoch: int):
        done, e = 0, 0
        while done < steps:
            for b in passes(e):
                yield b
                done += 1
                if done == steps:
                    return
            e += 1

    return batches


@torch.no_grad()
def mean_loss(model, loader, precision: str) -> float:
    """The mean training loss of ``model`` (eval mode) over the N examples of ``loader``."""
    model.eval()
    device = device_of(model)
    amp = autocast_dtype(precision, device)
    total, n = 0.0, 0
    for b in loader:
        b = to_device(b, device)
        with autocast(device, amp):
            total += float(model(**b).loss.float()) * len(b["labels"])
        n += len(b["labels"])
    return total / max(n, 1)


def head_state(model) -> dict[str, dict[str, torch.Tensor]]:
    return {h: {k: v.detach().clone() for k, v in getattr(model, h).state_dict().items()} for h in head_modules(model)}


def set_head(model, state: dict[str, dict[str, torch.Tensor]]) -> None:
    for h, tensors in state.items():
        getattr(model, h).load_state_dict(tensors)


def head_group(model, lr: float) -> dict:
    return {"params": [p for h in head_modules(model) for p in getattr(model, h).parameters()], "lr": lr}


def fit(model, groups: list[dict], batches, cfg, progress: bool, desc: str) -> dict:
    return train(model, batches, groups, lr=cfg.lr, epochs=1, weight_decay=cfg.weight_decay,
                 warmup_ratio=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, progress=progress,
                 desc=desc, precision=cfg.precision)


def best_single(model, pool, s: RecycleSettings, batches, loader, cfg, progress: bool) -> tuple[dict, dict]:
    """Each adapter alone (w = 1) with the head trained; keep the lowest training loss on the N examples."""
    start, heads, candidates, outcomes = head_state(model), [], [], []
    for k, source in enumerate(pool):
        set_head(model, start)
        attach(model, [source.factors], per_layer=False, activation="linear", init=[1.0], trainable=False)
        out = fit(model, [head_group(model, cfg.lr)], batches, cfg, progress, f"best_single {k + 1}/{len(pool)}")
        loss = mean_loss(model, loader, cfg.precision) if out["status"] == "ok" else float("inf")
        candidates.append({"adapter": str(source.directory), "task": source.task, "train_loss": loss,
                           "status": out["status"]})
        heads.append(head_state(model))
        outcomes.append(out)
        detach(model)
    best = min(range(len(pool)), key=lambda i: candidates[i]["train_loss"])
    set_head(model, heads[best])
    attach(model, [pool[best].factors], per_layer=False, activation="linear", init=[1.0], trainable=False)
    train_s = sum(o["time"]["train_s"] for o in outcomes)  # the arm's cost: every candidate's training
    outcome = {**outcomes[best], "time": {**outcomes[best]["time"], "train_s": train_s}}
    return outcome, {"candidates": candidates, "selected": candidates[best]["adapter"], "selected_on": "train"}


def run(cfg: Any, result: dict, *, progress: bool = True) -> None:
    """Run one arm of ``cfg`` (kind recycle) and fill ``result`` in place."""
    s = RecycleSettings(**cfg.scenario)
    task = get_task(cfg.task)
    pool, held_out = read_pool(s.pool, task.name, s.hold_out_target)  # refused before any compute
    set_seed(cfg.seed)  # the head (and a fresh LoRA) are initialised randomly
    model, tokenizer = models.load_model(cfg.model, task, head=cfg.head, layers=cfg.layers, pooling=cfg.pooling,
                                         trust_remote_code=cfg.trust_remote_code, dropout=cfg.model_dropout)
    check_fits(model, pool)
    batch_size = min(cfg.batch_size, s.n_examples)
    loader, dev = build_loaders(task, tokenizer, data_dir=cfg.data_dir, max_length=cfg.max_length,
                                batch_size=batch_size, eval_batch_size=cfg.eval_batch_size, train_limit=s.n_examples,
                                eval_limit=cfg.eval_limit, data_revision=cfg.data_revision, seed=cfg.seed,
                                progress=not cfg.quiet)
    batches = step_batches(loader, s.steps)
    factors = [p.factors for p in pool]
    details: dict[str, Any] = {
        "arm": s.arm, "pool": [{"adapter": str(p.directory), "task": p.task, "run_id": p.result.get("run_id"),
                                "digest": p.digest} for p in pool],
        "held_out": held_out, "n_examples": len(loader.dataset), "steps": s.steps, "batch_size": batch_size,
        "lr_head": cfg.lr}
    if s.arm == "best_single":
        details["train_loss_before"] = None
        outcome, chosen = best_single(model, pool, s, batches, loader, cfg, progress)
        details.update(chosen)
    else:
        if s.arm == "fresh":
            opts = pool[0].config["options"]
            inject.apply(model, "lora", targets=pool[0].config["targets"], r=opts["r"], alpha=opts.get("alpha", opts["r"]))
            groups = inject.param_groups(model, cfg.lr, cfg.weight_decay)
            details.update(rank=opts["r"], alpha=opts.get("alpha", opts["r"]))
        else:
            learns = s.arm in LEARNS
            if s.arm == "random_pool":
                factors = random_like(factors, torch.Generator().manual_seed(cfg.seed))
            coefs = attach(model, factors, per_layer=s.per_layer and learns, activation=s.activation if learns else
                           "linear", init=s.init if learns else [1.0 / len(pool)] * len(pool), trainable=learns)
            groups = [head_group(model, cfg.lr)] + ([{"params": coefs, "lr": s.lr, "weight_decay": 0.0}] if learns else [])
            details.update(lr_coefficients=s.lr if learns else None, per_layer=s.per_layer and learns,
                           activation=s.activation if learns else "linear", init=s.init if learns else "uniform")
        details["train_loss_before"] = mean_loss(model, loader, cfg.precision)
        outcome = fit(model, groups, batches, cfg, progress, s.arm)
    details["train_loss_after"] = mean_loss(model, loader, cfg.precision) if outcome["status"] == "ok" else None
    if s.arm != "fresh":
        details["weights"] = learned_weights(model)
    meter = Meter(device_of(model))
    with meter.evaluating():
        metrics = evaluate(model, dev, task, cfg.precision)
    status, error = outcome["status"], outcome["error"]
    if status == "ok":
        error = DivergenceGuard(steps=outcome["steps"]).check_metrics(metrics, task.primary_metric)
        status = "ok" if error is None else "diverged"
    steps = outcome["steps"]
    point = {"step": steps, "epoch": round(steps * batch_size / max(len(loader.dataset), 1), 4), "metrics": metrics}
    losses = [[1, outcome["first_loss"]], [steps, outcome["last_loss"]]] if outcome["first_loss"] is not None else []
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters()) + sum(b.numel() for n, b in model.named_buffers()
                                                            if n.endswith(("lora_A", "lora_B")))
    result["data"]["examples"] = read_record({"train": loader.dataset.examples,
                                              **{k: v.dataset.examples for k, v in dev.items()}})
    result.update({
        "status": status, "error": error, "best": point, "final": dict(point),
        "history": [{**point, "train_loss": outcome["last_loss"]}], "train_loss": losses,
        "params": {"trainable": trainable, "total": total},
        "time": {**result["time"], **{k: outcome["time"].get(k) for k in TIME_KEYS},
                 "eval_s": meter.time()["eval_s"]},
        "memory": {**result["memory"], **outcome["memory"], "micro_batch_size": batch_size, "grad_accum_steps": 1},
        "details": details,
    })
    result["env"] = {**result["env"], "precision": outcome["precision"]}
    result["metric"] = {"name": result["primary_metric"], "selected_on": "last", "reported_on": next(iter(metrics), None)}
