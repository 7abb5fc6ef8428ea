"""The ``mixture`` kind as a run: multi-task training with a shared LoRA or routed LoRA experts.

    lorabench train --kind mixture --task sst2 --scenario tasks=sst2,mrpc --scenario method=lora_mixer

One training (``mixtures.build`` + ``mixtures.loop.fit``, the loop of ``lorabench mixture``: device,
autocast, divergence guard, meter) over every task of ``scenario.tasks`` gives one result envelope
per task: the run's own ``--task`` is this run's result, and each other task's envelope is written
beside it under the run id the same config with that ``--task`` has (its sibling). A sweep that
plans every task of the mixture therefore trains it once: the siblings are found done. Every
envelope reports its task's dev metrics after the last epoch (``metric.selected_on`` "last"),
``details`` holds the router, the expert usage of the final evaluation (over all tasks and for
this task), the batches per task and ``trained_with`` (task -> run id of the siblings).

The mixture model pools by mean under one head per task (``mixtures.multitask``), so ``--pooling``
and ``--head`` are refused; r and alpha are the run's (unset: 8 and 16, the mixture defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import results
from ..data.fingerprint import read_record
from ..results import TIME_KEYS
from . import registry
from .build import build
from .config import from_mapping
from .frozen import read_experts
from .loop import fit
from .settings import MixtureSettings

#: r and alpha of a mixture run that sets none (``MixtureConfig``'s defaults).
R, ALPHA = 8, 16.0


def mixture_config(cfg: Any, s: MixtureSettings):
    """The ``MixtureConfig`` of a mixture-kind RunConfig, checked (the loop's own settings object)."""
    values = {"tasks": s.task_list(cfg.task), "method": s.method, "model": cfg.model, "layers": cfg.layers,
              "targets": cfg.targets, "experts": s.experts, "k": s.k, "r": cfg.r or R,
              "alpha": cfg.alpha if cfg.alpha is not None else ALPHA, "rsl_weight": s.rsl_weight,
              "samples": s.samples, "experts_from": s.experts_from, "sampling": s.sampling,
              "temperature": s.temperature, "train_limit": cfg.train_limit, "eval_limit": cfg.eval_limit,
              "max_length": cfg.max_length, "batch_size": cfg.batch_size, "lr": cfg.lr,
              "weight_decay": cfg.weight_decay, "warmup_ratio": cfg.warmup_ratio, "max_grad_norm": cfg.max_grad_norm,
              "epochs": int(cfg.epochs), "seed": cfg.seed, "data_dir": cfg.data_dir, "precision": cfg.precision}
    if isinstance(values["targets"], str):
        values["targets"] = [values["targets"]]
    return from_mapping(values, "the mixture run").check()


def sibling(cfg: Any, task: str) -> Any:
    """The same run reporting ``task``."""
    return type(cfg).from_dict({**cfg.to_dict(), "task": task})


def envelope(result: dict, task: str, summary: dict, built: Any, mcfg: Any, trained_with: dict[str, str]) -> None:
    """Fill ``result`` (the envelope of ``task``) from the finished training."""
    spec = built.model.specs[task]
    dev = built.dev[task]
    ok = summary["status"] == "ok"
    metrics = summary["final"][task] if ok and summary["final"] else {}
    steps = summary["steps"]
    point = {"step": steps, "epoch": float(len(summary["history"])), "metrics": metrics}
    params = {id(p): p for p in built.model.parameters()}
    usage = summary["usage"]
    result["data"]["examples"] = read_record({"train": built.train.loaders[task].dataset.examples,
                                              **{k: v.dataset.examples for k, v in dev.items()}})
    result.update({
        "status": summary["status"], "error": summary["error"], "best": point, "final": dict(point),
        "history": [{"step": h["step"], "epoch": float(h["epoch"]), "metrics": h["tasks"][task],
                     "train_loss": h["train_loss"]} for h in summary["history"]],
        "train_loss": [[h["step"], h["train_loss"]] for h in summary["history"]],
        "params": {"trainable": sum(p.numel() for p in params.values() if p.requires_grad),
                   "total": sum(p.numel() for p in params.values())},
        "time": {**result["time"], **{k: summary["time"].get(k) for k in TIME_KEYS}},
        "memory": {**result["memory"], **summary["memory"], "micro_batch_size": mcfg.batch_size,
                   "grad_accum_steps": 1},
        "details": {"method": mcfg.method, "router": registry.get(mcfg.method).description if mcfg.routed else None,
                    "tasks": list(mcfg.tasks), "targets": built.targets, "r": mcfg.r, "alpha": mcfg.alpha,
                    "train_batches": dict(built.train.sizes), "trained_with": trained_with,
                    "usage": {"overall": usage["overall"], "task": usage["per_task"].get(task)} if usage else None},
    })
    result["env"] = {**result["env"], "precision": summary["precision"]}
    result["metric"] = {"name": spec.primary_metric, "selected_on": "last", "reported_on": next(iter(metrics), None)}


def run(cfg: Any, result: dict, *, progress: bool = True) -> None:
    """Train the mixture of ``cfg`` (kind mixture); fill ``result`` and write each sibling's envelope."""
    s = MixtureSettings(**cfg.scenario)
    tasks = s.task_list(cfg.task)  # the run's own task among them (``kind_config.resolve``)
    mcfg = mixture_config(cfg, s)
    experts = read_experts(mcfg.experts_from) if mcfg.experts_from else None  # checked before the model loads
    others = {t: sibling(cfg, t) for t in tasks if t != cfg.task}
    data = {t: c.data_fingerprint() for t, c in others.items()}  # their data read before any compute
    ids = {t: c.run_id(data[t]) for t, c in others.items()}
    trained_with = {cfg.task: result["run_id"], **ids}
    built = build(mcfg, experts, progress=not cfg.quiet)
    summary = fit(built.model, built.train, built.dev, mcfg, progress=progress)
    envelope(result, cfg.task, summary, built, mcfg, trained_with)
    for task, other in others.items():
        twin = results.new_result(ids[task], other.resolved(), data=data[task],
                                  primary_metric=built.model.specs[task].primary_metric, env=dict(result["env"]),
                                  started_at=result["started_at"])
        twin["plugins"] = result.get("plugins")
        envelope(twin, task, summary, built, mcfg, trained_with)
        twin["finished_at"] = results.now()
        results.write_json_atomic(results.result_path(Path(cfg.out), ids[task]), twin)
