"""How long the runs of a sweep will take: measured rates from finished results where there
are any, else each model alias's assumed rate (``models.Alias``) and each task's size
(``TaskSpec.sizes``). Rough by design; ``--dry-run`` prints it before anything runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import results
from ..aliases import ALIASES
from ..data.glue import get_task, task_key
from ..units import format_seconds

#: Train examples/s of a model that is no alias with a measured rate, and the speed-up on a GPU.
ASSUMED_OTHER = 4.0
ASSUMED_GPU_SPEEDUP = 25.0
LOAD_OTHER_S = 60.0  # process start + imports + model and data load, for a model without its own figure
EVAL_SPEEDUP = 2.0  # evaluation: forward only, but dev sentences run longer (measured ~1.9x on SST-2)


def measured_rates(folder: str | os.PathLike) -> dict[tuple, float]:
    """Median train examples/s of the ok results in ``folder``, keyed at three levels of detail."""
    samples: dict[tuple, list[float]] = {}
    for _, r in results.load_results(folder, warn=False) if Path(folder).is_dir() else []:
        rate = (r.get("time") or {}).get("examples_per_s")
        if r["status"] != "ok" or not rate:
            continue
        c = r["config"]
        for key in _rate_keys(r["model"], c.get("layers"), r["task"], c.get("max_length"), r["variant"]):
            samples.setdefault(key, []).append(float(rate))
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


def _rate_keys(model, layers, task, max_length, variant) -> list[tuple]:
    return [(model, layers, task, max_length, variant), (model, layers, task, max_length), (model, layers)]


def estimate_seconds(cfg: Any, rates: dict[tuple, float] | None = None) -> float:
    """Seconds for one run: load + train examples x epochs / rate + evaluations."""
    rates = rates or {}
    try:
        train_n, dev_n = get_task(cfg.task).sizes
    except Exception:  # an unknown task: RunConfig reports it; estimate a mid-sized one
        train_n, dev_n = 10000, 1000
    train_n = min(train_n, cfg.train_limit or train_n)
    dev_n = min(dev_n, cfg.eval_limit or dev_n)
    keys = _rate_keys(cfg.model, cfg.layers, task_key(cfg.task), cfg.max_length, cfg.variant)
    rate = next((rates[k] for k in keys if k in rates), None)
    alias = ALIASES.get(cfg.model)
    if rate is None:
        rate = (alias and alias.cpu_examples_per_s) or ASSUMED_OTHER
        if cfg.layers and alias is not None and alias.layers:
            rate *= alias.layers / cfg.layers
        if _cuda():
            rate *= ASSUMED_GPU_SPEEDUP
    steps = train_n * cfg.epochs / (cfg.batch_size * cfg.grad_accum)
    evals = steps / cfg.eval_every if cfg.eval_every else max(1.0, float(cfg.epochs))
    load_s = (alias and alias.load_s) or LOAD_OTHER_S
    return load_s + train_n * cfg.epochs / rate + evals * dev_n / (EVAL_SPEEDUP * rate)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def print_plan(sweep: Any) -> None:
    """Every planned run (``plan.Sweep``) with its status or estimated time, and the total."""
    rates = measured_rates(sweep.out)
    total = 0.0
    for run in sweep.runs:
        status = results.status_of(results.result_path(sweep.out, run.run_id))
        est = 0.0 if status else estimate_seconds(run.config, rates)
        total += est
        print(f"{run.describe()}  [{status or '~' + format_seconds(est)}]")
    how = "measured by finished runs in the out folder where available, else" if rates else "no finished runs yet:"
    print(f"{len(sweep.runs)} runs into {sweep.out}; estimated time for the runs not done: {format_seconds(total)} "
          f"({how} assumed examples/s per model, lorabench.models.ALIASES)")
