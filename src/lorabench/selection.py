"""What a results folder holds, as the report reads it: one ``Run`` per result, grouped into
``Config``s (a configuration's runs over seeds), and the selection of the best configuration per
(model, task, variant). ``report`` builds its tables from these; the definitions are in its docstring.

Selection and reporting. A run that held out a ``val`` split of its training set (``val_size``)
carries two numbers: ``select`` (its primary metric on ``val``, at the evaluation ``val`` chose)
and ``metric`` (the first dev split at that same evaluation). ``select_best`` ranks configurations
by the mean of ``select``; the tables show ``metric``. Without a ``val`` split both are the dev
number, and choosing on dev and reporting dev is optimistic (the report says so).
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import provenance, results
from .config import NOT_HYPERPARAMETERS
from .data.fingerprint import short

ALWAYS_SHOWN = ("lr",)  # shown in the configuration column even when it does not vary
#: Column order and names of the GLUE tasks (the LoRA paper's Table 2 order).
GLUE = {"mnli": "MNLI", "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI", "qqp": "QQP",
        "rte": "RTE", "stsb": "STS-B"}


@dataclass
class Run:
    run_id: str
    status: str
    model: str
    task: str
    variant: str  # the report's method: the variant, or a scenario's label ("federated:ffa_lora (beta 0.5)")
    seed: int
    key: str  # canonical JSON of the configuration (config minus seed and non-hyperparameters)
    flat: dict  # the configuration, options flattened
    metric_name: str | None
    metric: float | None  # reported: the first dev split, at the evaluation the selection split chose
    select: float | None  # selects: the same metric on ``val`` when the run held one out, else = metric
    select_split: str | None  # "val", the dev split's name, or None (no metric)
    trainable: int | None
    train_s: float | None
    peak_bytes: int | None
    history: list[tuple[int, float]]
    error: str | None


@dataclass
class Config:
    model: str
    task: str
    variant: str
    key: str
    flat: dict
    runs: list[Run] = field(default_factory=list)

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok" and r.metric is not None]

    @property
    def failed(self) -> int:
        return len(self.runs) - len(self.ok)

    @property
    def n(self) -> int:
        return len(self.ok)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(r.metric for r in self.ok) if self.ok else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(r.metric for r in self.ok) if self.n > 1 else None

    @property
    def select_mean(self) -> float | None:
        """Mean over seeds of the number that selects (``val`` when held out, else dev)."""
        vals = [r.select for r in self.ok if r.select is not None]
        return statistics.fmean(vals) if len(vals) == self.n and vals else None

    @property
    def values(self) -> list[float]:
        return [r.metric for r in self.ok]

    def avg(self, attr: str) -> float | None:
        vals = [getattr(r, attr) for r in self.ok if getattr(r, attr) is not None]
        return statistics.fmean(vals) if vals else None

    @property
    def by_seed(self) -> dict[int, float]:
        return {r.seed: r.metric for r in self.ok}

    @property
    def metric_name(self) -> str | None:
        return next((r.metric_name for r in self.runs if r.metric_name), None)

    @property
    def rank(self) -> Any:
        return self.flat.get("r")


def flatten(config: dict) -> dict:
    """A resolved config as the report groups it: the variant's options and a scenario's settings
    flattened to their names (prefixed only where a name is taken), bookkeeping fields left out."""
    flat = {k: v for k, v in config.items() if k not in NOT_HYPERPARAMETERS and k not in ("options", "scenario")}
    for group in ("options", "scenario"):
        for k, v in (config.get(group) or {}).items():
            flat[k if flat.get(k) in (None, v) else f"{group}.{k}"] = v
    return flat


def load_runs(folder: str | Path, metric_from: str = "best", notes: list[str] | None = None) -> list[Run]:
    """Every lorabench result under ``folder``, one per run id (``provenance.one_per_id``; its notes
    and ``data_notes`` go to ``notes`` and to warnings); foreign or corrupt JSON is skipped with a warning."""
    found, flagged = provenance.one_per_id(results.load_results(folder, warn=True))
    for note in flagged + provenance.data_notes(found):
        warnings.warn(note, stacklevel=2)
        if notes is not None:
            notes.append(note)
    runs = []
    for path, r in found:
        config = r["config"] if isinstance(r["config"], dict) else {}
        method = results.method_of(r)  # the variant, or a scenario's label: one row of the report
        flat = flatten(config) | {"model": r["model"], "task": r["task"], "variant": method,
                                   "data": short(r.get("data"))}
        metric, name = results.metric_of(r, metric_from) if r["status"] == "ok" else (None, r.get("primary_metric"))
        select, _ = results.metric_of(r, metric_from, select=True) if metric is not None else (None, None)
        held_out = results.VAL in (((r.get(metric_from) or {}).get("metrics")) or {})
        if r["status"] == "ok" and metric is None:
            warnings.warn(f"{path}: status ok but no {name!r} on a dev split in {metric_from!r}; counted as failed",
                          stacklevel=2)
        mem = r.get("memory") or {}
        peak = mem.get("peak_allocated_bytes") if mem.get("device") == "cuda" else mem.get("peak_rss_bytes")
        runs.append(Run(
            run_id=r["run_id"], status=r["status"], model=str(r["model"]), task=str(r["task"]),
            variant=method, seed=r["seed"], key=results.canonical(flat), flat=flat,
            metric_name=name, metric=metric, select=select,
            select_split=None if metric is None else results.VAL if held_out else "dev", trainable=(r.get("params") or {}).get("trainable"),
            train_s=(r.get("time") or {}).get("train_s"), peak_bytes=peak, history=results.history_of(r),
            error=r.get("error"),
        ))
    return runs


def configurations(runs: list[Run]) -> list[Config]:
    configs: dict[str, Config] = {}
    for r in runs:
        c = configs.setdefault(r.key, Config(r.model, r.task, r.variant, r.key, r.flat))
        if all(o.seed != r.seed for o in c.runs):  # the same run twice (copied folders): count once
            c.runs.append(r)
    return sorted(configs.values(), key=lambda c: (c.model, c.task, c.variant, c.key))


def select_best(configs: list[Config]) -> dict[tuple[str, str, str], Config]:
    """(model, task, variant) -> its best configuration: among those without a failed run, the ones
    with the most seeds (a configuration successive halving kept, or one a stopped sweep finished;
    means over fewer seeds are not compared with them), the highest mean of ``select`` (the ``val``
    metric when the runs held one out, else dev); ties: the configuration key."""
    best: dict[tuple[str, str, str], Config] = {}
    for c in sorted(configs, key=lambda c: c.key):
        if c.failed or not c.n or c.select_mean is None:
            continue
        k = (c.model, c.task, c.variant)
        if k not in best or (c.n, c.select_mean) > (best[k].n, best[k].select_mean):
            best[k] = c
    return best


def varying_keys(configs: list[Config]) -> list[str]:
    """The configuration fields that differ within one (model, task, variant), plus ALWAYS_SHOWN."""
    keys: list[str] = []
    for c in configs:
        keys += [k for k in c.flat if k not in keys]
    shown = [k for k in keys if len({results.canonical(c.flat.get(k)) for c in configs}) > 1]
    return [k for k in ALWAYS_SHOWN if k in keys and k not in shown] + [k for k in shown if k not in ("model", "task", "variant")]


def task_order(task: str) -> tuple:
    return (list(GLUE).index(task) if task in GLUE else len(GLUE), task)


def sortable(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, results.canonical(v))


def describe(c: Config, keys: list[str]) -> str:
    return " ".join(f"{k}={value_text(c.flat.get(k))}" for k in keys) or "default"


def value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def lr_curves(configs: list[Config], model: str, task: str) -> dict[str, list[tuple[float, Config]]]:
    """variant -> [(lr, the configuration ``select_best`` picks among that lr's)], for the variants
    of (model, task) that ran >= 2 learning rates: the report's learning-rate sensitivity curves."""
    by_lr: dict[tuple[str, float], list] = {}
    for c in configs:
        lr = c.flat.get("lr")
        if (c.model, c.task) == (model, task) and isinstance(lr, (int, float)):
            by_lr.setdefault((c.variant, float(lr)), []).append(c)
    curves: dict[str, list[tuple[float, Config]]] = {}
    for (variant, lr), group in sorted(by_lr.items()):
        chosen = select_best(group).get((model, task, variant))
        if chosen is not None:
            curves.setdefault(variant, []).append((lr, chosen))
    return {v: points for v, points in curves.items() if len(points) >= 2}
