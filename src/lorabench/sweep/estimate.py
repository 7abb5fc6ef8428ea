"""How long the runs of a sweep will take: measured rates from finished results where there
are any, else each model alias's assumed rate (``models.Alias``), and each task's size
(``TaskSpec.sizes``). A rate measured on another task, or an alias's (measured on SST-2), is
carried over by tokens: the cost of an example grows with its tokens (``TaskSpec.mean_tokens``,
capped at ``max_length``), so an RTE example (~70 tokens) costs ~5x an SST-2 one (~13). Rough by
design; ``--dry-run`` prints it before anything runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import results
from ..aliases import ALIASES
from ..data.glue import get_task, task_key

#: Train examples/s of a model that is no alias with a measured rate, and the speed-up on a GPU.
ASSUMED_OTHER = 4.0
ASSUMED_GPU_SPEEDUP = 25.0
LOAD_OTHER_S = 60.0  # process start + imports + model and data load, for a model without its own figure
EVAL_SPEEDUP = 2.0  # evaluation: forward only, but dev sentences run longer (measured ~1.9x on SST-2)


#: The task the aliases' assumed rates were measured on.
ALIAS_RATE_TASK = "sst2"


def measured_rates(folder: str | os.PathLike) -> dict[tuple, float]:
    """Median train examples/s of the ok results in ``folder`` per (model, layers, task,
    max_length[, variant]), and median tokens/s per ("tokens", model, layers)."""
    samples: dict[tuple, list[float]] = {}
    for _, r in results.load_results(folder, warn=False) if Path(folder).is_dir() else []:
        time = r.get("time") or {}
        if r["status"] != "ok" or not time.get("examples_per_s"):
            continue
        c = r["config"]
        for key in _rate_keys(r["model"], c.get("layers"), r["task"], c.get("max_length"), r["variant"]):
            samples.setdefault(key, []).append(float(time["examples_per_s"]))
        if time.get("tokens_per_s"):
            samples.setdefault(("tokens", r["model"], c.get("layers")), []).append(float(time["tokens_per_s"]))
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


def _rate_keys(model, layers, task, max_length, variant) -> list[tuple]:
    return [(model, layers, task, max_length, variant), (model, layers, task, max_length)]


def tokens_per_example(task: str, max_length: int) -> float:
    try:
        return min(get_task(task).mean_tokens, max_length)
    except Exception:  # an unknown task: RunConfig reports it
        return min(40.0, max_length)


def estimate_seconds(cfg: Any, rates: dict[tuple, float] | None = None, gpu: bool | None = None) -> float:
    """Seconds for one run: load + train examples x epochs / rate + evaluations (of every dev split
    and the held-out ``val`` split). ``rates``: measured ones (``measured_rates``); without one, the
    alias's assumed CPU rate, x ASSUMED_GPU_SPEEDUP on a GPU (``gpu``; None: this machine's)."""
    rates = rates or {}
    try:
        train_n, dev_n = get_task(cfg.task).sizes
    except Exception:  # an unknown task: RunConfig reports it; estimate a mid-sized one
        train_n, dev_n = 10000, 1000
    train_n = min(train_n, cfg.train_limit or train_n)
    dev_n = min(dev_n, cfg.eval_limit or dev_n) + (getattr(cfg, "val_size", None) or 0)
    if getattr(cfg, "val_size", None):
        train_n = min(train_n - cfg.val_size, cfg.train_limit or train_n)
    keys = _rate_keys(cfg.model, cfg.layers, task_key(cfg.task), cfg.max_length, cfg.variant)
    rate = next((rates[k] for k in keys if k in rates), None)
    tokens = tokens_per_example(cfg.task, cfg.max_length)
    if rate is None and ("tokens", cfg.model, cfg.layers) in rates:  # measured on other tasks
        rate = rates[("tokens", cfg.model, cfg.layers)] / tokens
    alias = ALIASES.get(cfg.model)
    if rate is None:
        rate = (alias and alias.cpu_examples_per_s) or ASSUMED_OTHER
        rate *= tokens_per_example(ALIAS_RATE_TASK, cfg.max_length) / tokens
        if cfg.layers and alias is not None and alias.layers:
            rate *= alias.layers / cfg.layers
        if _cuda() if gpu is None else gpu:
            rate *= ASSUMED_GPU_SPEEDUP
    trained, evals = scenario_work(cfg, train_n)
    if trained is None:
        steps = train_n * cfg.epochs / (cfg.batch_size * cfg.grad_accum)
        trained = train_n * cfg.epochs
        evals = steps / cfg.eval_every if cfg.eval_every else max(1.0, float(cfg.epochs))
    load_s = (alias and alias.load_s) or LOAD_OTHER_S
    return load_s + trained / rate + evals * dev_n / (EVAL_SPEEDUP * rate)


def scenario_work(cfg: Any, train_n: float = 0.0) -> tuple[float | None, float]:
    """(training examples, dev evaluations) of a scenario kind whose work is not the run's epochs
    over its training set; (None, 0) where it is. merge: nothing trains, three evaluations (merged,
    own, no adapter); recycle: ``steps`` batches of at most N examples (best_single: per pool
    adapter, counted as five), one evaluation; transfer: a distilled arm trains its teacher on the
    real data, writes ``synthetic`` inputs (one forward per new token: counted as ``max_new_tokens`` / 4
    examples each) and distils on the kept ones, two evaluations; arm no_adapter of trans_lora trains
    a head on the seeds; organ's no_adapter only evaluates."""
    kind, s = getattr(cfg, "kind", "run"), getattr(cfg, "scenario", None) or {}
    if kind == "merge":
        return 0.0, 3.0
    if kind == "recycle":
        per_arm = s.get("steps", 100) * min(cfg.batch_size, s.get("n_examples", 64))
        return per_arm * (5 if s.get("arm") == "best_single" else 1), 1.0
    if kind == "transfer":
        arm, real = s.get("arm"), train_n * cfg.epochs
        if arm in ("trans_lora", "random_keep", "unfiltered"):
            n = s.get("synthetic", 512)
            kept = n * s.get("keep", 0.5) if arm != "unfiltered" else n
            return real + n * s.get("max_new_tokens", 24) / 4 + kept * s.get("distill_epochs", 10), 2.0
        if arm == "no_adapter":
            return float(s.get("seeds", 5) * s.get("head_epochs", 50)) if s.get("method") == "trans_lora" else 0.0, 1.0
        return real, 1.0
    return None, 0.0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
