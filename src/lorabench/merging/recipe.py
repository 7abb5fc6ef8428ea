"""The ``merge`` kind as a run: merge a pool of per-task LoRAs and evaluate one of its tasks.

    lorabench train --kind merge --task mrpc --scenario pool=runs/merge-glue --scenario method=ties

The pool holds one saved LoRA per task (``lorabench train --save-adapter``; LoRA-form variants,
``merge.why_not_mergeable``). When it holds several adapters of one task (a pool trained at several
seeds), the run's ``--seed`` picks, for every task, the adapter trained with that seed: a sweep over
seeds then merges independently trained pools, so its intervals cover the adapters' training noise.
The method (``merging.registry``: linear, TIES, DARE, concat, LoRA-LEGO) merges every layer's update
into one LoRA-form pair (``merge.compute``; DARE's drop masks and LEGO's k-means draw from ``--seed``).
The target task (``--task``) must be a pool task: its own classification head sits on the merged
update, as in ``lorabench merge``, and its dev split is evaluated three ways in one process:

- ``merged``: the merged update with the task's head (the run's metric; ``selected_on`` "last": a merge
  is evaluated once and selects nothing);
- ``own``: the task's own adapter (the single-task upper bound), in ``details.own``;
- ``no_adapter``: the base with the task's head and no update (the lower bound), in ``details.no_adapter``.

Nothing trains, so every training setting is refused (``kinds.REFUSES``); ``--precision`` autocasts
the evaluation, the model sits on the run's device, ``--save-adapter`` writes the merged adapter (the
task's head on the merged factors) beside the result, where ``lorabench eval`` and a further merge read it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from .. import models
from ..adapter_files import folder_bytes
from ..data import get_task
from ..data.batching import dev_loaders
from ..data.fingerprint import read_record
from ..data.glue import resolve_source
from ..errors import ConfigError
from ..results import TIME_KEYS
from ..seeding import set_seed
from ..training.guard import DivergenceGuard
from ..training.meter import Meter
from ..training.placement import placement
from ..transfer.loop import evaluate
from . import registry as methods
from .adaptive import attach, check_fits, detach
from .merge import Source, compute, plan_sources, pool_folders, read_source
from .merge_settings import MergeSettings
from .write import write_adapter


def seed_of(source: Source) -> Any:
    return (source.result.get("config") or {}).get("seed", source.result.get("seed"))


def choose(sources: list[Source], seed: int) -> list[Source]:
    """One adapter per task, in task order: a task's only adapter, or the one trained with ``seed``."""
    by_task: dict[str, list[Source]] = defaultdict(list)
    for s in sources:
        by_task[s.task].append(s)
    chosen = []
    for task, group in sorted(by_task.items()):
        if len(group) > 1:
            group = [s for s in group if seed_of(s) == seed]
            if len(group) != 1:
                seeds = sorted(str(seed_of(s)) for s in by_task[task])
                raise ConfigError(f"the pool holds {len(by_task[task])} adapters of task {task} (seeds "
                                  f"{', '.join(seeds)}) and {len(group)} trained with seed {seed}: with several "
                                  "adapters per task, the run's --seed picks one per task; run with one of those "
                                  "seeds or keep one adapter per task in the pool")
        chosen.append(group[0])
    return chosen


def read_pool(s: MergeSettings, task: str, seed: int) -> list[Source]:
    """The merge's sources, every check done before any compute."""
    sources = choose([read_source(d) for d in pool_folders(s.pool)], seed)
    tasks = [x.task for x in sources]
    if task not in tasks:
        raise ConfigError(f"task {task} has no adapter in the merge pool (tasks: {', '.join(tasks)}); the target "
                          "task's own head sits on the merged update, so run one of the pool's tasks")
    if s.weights is not None and len(s.weights) != len(sources):
        raise ConfigError(f"scenario weights has {len(s.weights)} values for the pool's {len(sources)} tasks "
                          f"({', '.join(tasks)}, in this order); give one weight per task")
    return sources


def put_head(model: torch.nn.Module, source: Source) -> None:
    """Load the task head ``source`` saved (its classifier tensors) into ``model``."""
    missing, unexpected = model.load_state_dict(source.head, strict=False)
    if unexpected:
        raise ConfigError(f"the head saved in {source.directory} does not fit this model ({unexpected[0]!r}); run "
                          "on the base and --pooling the pool was trained with")


def run(cfg: Any, result: dict, *, progress: bool = True) -> None:
    """Merge the pool of ``cfg`` (kind merge), evaluate ``cfg.task``, fill ``result`` in place."""
    s = MergeSettings(**cfg.scenario)
    task = get_task(cfg.task)
    sources = read_pool(s, task.name, cfg.seed)
    own = next(x for x in sources if x.task == task.name)
    pooling = (own.result.get("config") or {}).get("pooling", cfg.pooling)
    if pooling != cfg.pooling:
        raise ConfigError(f"the pool's adapters were trained with --pooling {pooling}; run with --pooling {pooling}")
    cls = methods.get(s.method)
    merged = plan_sources(sources, s.method, weights=s.weights, density=s.density, k=s.k,
                          seed=cfg.seed if "seed" in cls.uses else None)
    source = resolve_source(cfg.data_dir, task=task)  # before loading anything
    set_seed(cfg.seed)
    model, tokenizer = models.load_model(cfg.model, task, head=cfg.head, layers=cfg.layers, pooling=cfg.pooling,
                                         trust_remote_code=cfg.trust_remote_code)
    check_fits(model, sources)
    put_head(model, own)
    device, precision, _ = placement(cfg.precision)
    model.to(device).eval()
    loaders = dev_loaders(source, task, tokenizer, cfg.eval_batch_size, cfg.eval_limit,
                          common={"max_length": cfg.max_length, "progress": not cfg.quiet})
    meter = Meter(device)
    with meter:  # the merge itself: the run's "train" time
        compute(merged)
    metrics: dict[str, dict] = {}
    for name, factors in (("merged", merged.factors), ("own", own.factors), ("no_adapter", None)):
        if factors is not None:
            attach(model, [factors], per_layer=False, activation="linear", init=[1.0], trainable=False)
            model.to(device)
        with meter.evaluating():
            metrics[name] = evaluate(model, loaders, task, precision)
        detach(model)
    error = DivergenceGuard(steps=0).check_metrics(metrics["merged"], task.primary_metric)
    point = {"step": 0, "epoch": 0.0, "metrics": metrics["merged"]}
    result["data"]["examples"] = read_record({k: v.dataset.examples for k, v in loaders.items()})
    adapter_bytes = None
    if cfg.save_adapter:
        info = {"method": merged.method, **merged.options(), "sources": [str(x.directory) for x in sources]}
        folder = write_adapter(Path(cfg.out) / f"run-{result['run_id']}-adapter", own, merged.factors, merged.rank, info)
        adapter_bytes = folder_bytes(folder)
    result.update({
        "status": "ok" if error is None else "diverged", "error": error, "best": point, "final": dict(point),
        "history": [point], "adapter_bytes": adapter_bytes,
        "params": {"trainable": 0, "total": sum(p.numel() for p in model.parameters())},
        "time": {**result["time"], **{k: meter.time()[k] for k in TIME_KEYS}, "examples_per_s": None,
                 "tokens_per_s": None},  # nothing trains: no training throughput
        "memory": {**result["memory"], **meter.memory(), "micro_batch_size": cfg.eval_batch_size,
                   "grad_accum_steps": 1},
        "details": {"method": merged.method, "options": merged.options(), "rank": merged.rank,
                    "merged_params": sum(B.numel() + A.numel() for B, A in merged.factors.values()),
                    "sources": [{"adapter": str(x.directory), "task": x.task, "run_id": x.result.get("run_id"),
                                 "seed": seed_of(x), "digest": x.digest, "weight": w}
                                for x, w in zip(sources, merged.weights)],
                    "own": metrics["own"], "no_adapter": metrics["no_adapter"]},
    })
    result["env"] = {**result["env"], "precision": precision}
    result["metric"] = {"name": result["primary_metric"], "selected_on": "last",
                        "reported_on": next(iter(metrics["merged"]), None)}
