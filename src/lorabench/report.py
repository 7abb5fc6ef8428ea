"""Tables (Markdown, CSV, LaTeX, HTML) and plots from a results folder: a pure function of its JSONs.

Definitions.
- Dev metric of a run: the task's primary metric (``primary_metric``) on the first dev split of the
  run's ``best`` evaluation (``--metric-from final``: its last one). Best-over-evaluations follows the
  LoRA paper (Hu et al. 2021, Table 2: "the result for each run is taken from the best epoch").
  Shown ×100 (GLUE convention); CSV files keep the raw values.
- Configuration: the resolved run config without ``seed`` and without fields that do not change
  what is learned (``NOT_HYPERPARAMETERS``). Its runs over seeds give mean, sample std (ddof=1;
  "—" when n = 1) and n. Runs whose status is not ok count as failed and carry no metric.
- Best configuration per (model, task, variant): the highest MEAN dev metric over seeds among
  configurations with no failed run (ties: more seeds, then the config id). This selects on the dev
  set and reports the same dev numbers, as the seed studies do; it is optimistic for every method
  alike, and equal grids keep it fair.
- Significance vs ``lora``: a two-sided paired t-test over the seeds both best configurations ran
  (scipy's ``ttest_rel`` when installed, else the exact Student-t formula below); needs >= 2 pairs.
  Results hold no per-example predictions, so a bootstrap over dev examples is not possible. † marks
  p < 0.05.
- GLUE average: mean of a row's task scores over the tasks present ("—" if the row misses one).
  Params = the largest trainable count over tasks, time = the sum of mean train times (evaluation
  excluded; "—" if the row misses a task), memory = the largest mean peak (CUDA peak allocated,
  else the run process's peak RSS, model load included). Best cell per column in bold: highest
  score, fewest params, least time and memory.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import provenance, results
from .data.fingerprint import short
from .config import NOT_HYPERPARAMETERS
from .stats import paired_t_test, t_two_sided_p  # noqa: F401  (report.paired_t_test: part of its face)
from .tables import (
    cell_score,
    cell_count,
    cell_int,
    cell_secs,
    cell_bytes,
    Table,
    to_csv,
    to_latex,
    to_markdown,
    write_html_page,
)

ALWAYS_SHOWN = ("lr",)  # shown in the configuration column even when it does not vary
REFERENCE = "lora"
ALPHA = 0.05
#: Column order and names of the GLUE tasks (the LoRA paper's Table 2 order).
GLUE = {"mnli": "MNLI", "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI", "qqp": "QQP",
        "rte": "RTE", "stsb": "STS-B"}


@dataclass
class Run:
    run_id: str
    status: str
    model: str
    task: str
    variant: str
    seed: int
    key: str  # canonical JSON of the configuration (config minus seed and non-hyperparameters)
    flat: dict  # the configuration, options flattened
    metric_name: str | None
    metric: float | None
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


def _flatten(config: dict) -> dict:
    flat = {k: v for k, v in config.items() if k not in NOT_HYPERPARAMETERS and k != "options"}
    for k, v in (config.get("options") or {}).items():
        flat[k if flat.get(k) in (None, v) else f"options.{k}"] = v
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
        flat = _flatten(config) | {"model": r["model"], "task": r["task"], "variant": r["variant"],
                                   "data": short(r.get("data"))}
        metric, name = results.metric_of(r, metric_from) if r["status"] == "ok" else (None, r.get("primary_metric"))
        if r["status"] == "ok" and metric is None:
            warnings.warn(f"{path}: status ok but no {name!r} on a dev split in {metric_from!r}; counted as failed",
                          stacklevel=2)
        mem = r.get("memory") or {}
        peak = mem.get("peak_allocated_bytes") if mem.get("device") == "cuda" else mem.get("peak_rss_bytes")
        runs.append(Run(
            run_id=r["run_id"], status=r["status"], model=str(r["model"]), task=str(r["task"]),
            variant=str(r["variant"]), seed=r["seed"], key=results.canonical(flat), flat=flat,
            metric_name=name, metric=metric, trainable=(r.get("params") or {}).get("trainable"),
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
    """(model, task, variant) -> the configuration with the best mean dev metric (no failed runs)."""
    best: dict[tuple[str, str, str], Config] = {}
    for c in configs:
        if c.failed or not c.n:
            continue
        k = (c.model, c.task, c.variant)
        if k not in best or (c.mean, c.n) > (best[k].mean, best[k].n):
            best[k] = c
    return best


def varying_keys(configs: list[Config]) -> list[str]:
    """The configuration fields that differ within one (model, task, variant), plus ALWAYS_SHOWN."""
    keys: list[str] = []
    for c in configs:
        keys += [k for k in c.flat if k not in keys]
    shown = [k for k in keys if len({results.canonical(c.flat.get(k)) for c in configs}) > 1]
    return [k for k in ALWAYS_SHOWN if k in keys and k not in shown] + [k for k in shown if k not in ("model", "task", "variant")]


def _task_order(task: str) -> tuple:
    return (list(GLUE).index(task) if task in GLUE else len(GLUE), task)


def _sortable(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, results.canonical(v))


def describe(c: Config, keys: list[str]) -> str:
    return " ".join(f"{k}={_value(c.flat.get(k))}" for k in keys) or "default"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


# --------------------------------------------------------------------------- significance


def p_vs_reference(best: dict, key: tuple[str, str, str]) -> float | None:
    model, task, variant = key
    ref = best.get((model, task, REFERENCE))
    if variant == REFERENCE or ref is None:
        return None
    mine, theirs = best[key].by_seed, ref.by_seed
    seeds = sorted(set(mine) & set(theirs))
    return paired_t_test([mine[s] for s in seeds], [theirs[s] for s in seeds])


# --------------------------------------------------------------------------- tables


def _mark_best(rows_raw: list[list[float | None]], col: int, highest: bool, bold: set, col_offset: int) -> None:
    vals = [r[col] for r in rows_raw if r[col] is not None]
    if vals:
        target = max(vals) if highest else min(vals)
        bold |= {(i, col + col_offset) for i, r in enumerate(rows_raw) if r[col] == target}


def best_tables(best: dict[tuple[str, str, str], Config]) -> list[Table]:
    """One GLUE-style table per model: variants x tasks, average, params, time, memory."""
    tables = []
    for model in sorted({k[0] for k in best}):
        keys = [k for k in best if k[0] == model]
        tasks = sorted({k[1] for k in keys}, key=_task_order)
        variants = sorted({k[2] for k in keys}, key=lambda v: (v != REFERENCE, v))
        metric = {t: next(best[k].metric_name for k in keys if k[1] == t) for t in tasks}
        columns = ["method"] + [f"{GLUE.get(t, t)} ({metric[t]})" for t in tasks] + ["avg", "params", "train time", "peak memory"]
        rows, raw, records = [], [], []
        for v in variants:
            cells = [best.get((model, t, v)) for t in tasks]
            means = [c.mean if c else None for c in cells]
            avg = statistics.fmean(means) if all(m is not None for m in means) else None
            params = max((c.avg("trainable") for c in cells if c and c.avg("trainable") is not None), default=None)
            times = [c.avg("train_s") for c in cells if c]
            time_ = sum(times) if len(times) == len(tasks) and None not in times else None
            peak = max((c.avg("peak_bytes") for c in cells if c and c.avg("peak_bytes") is not None), default=None)
            ps = [p_vs_reference(best, (model, t, v)) if c else None for t, c in zip(tasks, cells)]
            text = [cell_score(c.mean, c.std) + ("†" if p is not None and p < ALPHA else "") if c else "—"
                    for c, p in zip(cells, ps)]
            rows.append([v] + text + [f"{100 * avg:.2f}" if avg is not None else "—", cell_count(params), cell_secs(time_),
                         cell_bytes(peak)])
            raw.append(means + [avg, params, time_, peak])
            records.append({"model": model, "method": v} | {t: m for t, m in zip(tasks, means)}
                           | {"avg": avg, "params": cell_int(params), "train_s": time_, "peak_bytes": cell_int(peak)})
        bold: set[tuple[int, int]] = set()
        for col in range(len(tasks) + 1):
            _mark_best(raw, col, True, bold, 1)
        for col in range(len(tasks) + 1, len(tasks) + 4):
            _mark_best(raw, col, False, bold, 1)
        tables.append(Table(f"Best results — {model}", columns, rows, bold,
                            f"dev metric ×100, mean ± std over seeds of the best configuration (by mean dev metric); "
                            f"† p < {ALPHA} vs {REFERENCE} (paired t-test over seeds); bold = best per column",
                            records))
    return tables


def detail_table(best: dict[tuple[str, str, str], Config], configs: list[Config]) -> Table:
    rows, records = [], []
    for key in sorted(best, key=lambda k: (k[0], _task_order(k[1]), k[2] != REFERENCE, k[2])):
        c, p = best[key], p_vs_reference(best, key)
        group = [o for o in configs if (o.model, o.task, o.variant) == key]
        cfg = describe(c, varying_keys(group))
        rows.append([*key, cfg, cell_score(c.mean, c.std), str(c.n), "—" if p is None else f"{p:.3g}",
                     cell_count(c.avg("trainable")), cell_secs(c.avg("train_s")), cell_bytes(c.avg("peak_bytes"))])
        records.append({"model": key[0], "task": key[1], "variant": key[2], "config": cfg, "metric": c.metric_name,
                        "mean": c.mean, "std": c.std, "n": c.n, "p_vs_" + REFERENCE: p,
                        "trainable": cell_int(c.avg("trainable")), "train_s": c.avg("train_s"),
                        "peak_bytes": cell_int(c.avg("peak_bytes")), "seeds": sorted(c.by_seed)})
    return Table("Best configuration per variant and task",
                 ["model", "task", "variant", "configuration", "dev", "n", f"p vs {REFERENCE}", "params",
                  "train time", "peak memory"], rows, records=records)


def hparam_tables(configs: list[Config], best: dict) -> list[Table]:
    """Per variant: every configuration tried on each task, its dev metric over seeds and failures."""
    groups: dict[tuple, list[Config]] = {}
    for c in configs:
        groups.setdefault((c.model, c.task, c.variant), []).append(c)
    tables: dict[str, Table] = {}
    for key in sorted(groups, key=lambda k: (k[2] != REFERENCE, k[2], k[0], _task_order(k[1]))):
        t = tables.setdefault(key[2], Table(f"Hyperparameters — {key[2]}", ["model", "task", "configuration", "dev",
                                                                            "n", "failed"], [],
                                            note="dev metric ×100, mean ± std over seeds; bold = selected as best"))
        keys = varying_keys(groups[key])
        for c in sorted(groups[key], key=lambda c: [_sortable(c.flat.get(k)) for k in keys]):
            if best.get(key) is c:
                t.bold.add((len(t.rows), 3))
            t.rows.append([key[0], key[1], describe(c, keys), cell_score(c.mean, c.std), str(c.n), str(c.failed)])
            t.records.append({"model": key[0], "task": key[1], "variant": key[2], "config": describe(c, keys),
                              "metric": c.metric_name, "mean": c.mean, "std": c.std, "n": c.n, "failed": c.failed,
                              "seeds": sorted(c.by_seed)})
    return list(tables.values())


def failed_table(runs: list[Run]) -> Table:
    bad = sorted((r for r in runs if r.status != "ok"), key=lambda r: (r.model, r.task, r.variant, r.seed))
    rows = [[r.run_id, r.model, r.task, r.variant, str(r.seed), r.status, (r.error or "")[:160].replace("\n", " ")]
            for r in bad]
    return Table("Runs that did not finish ok", ["run", "model", "task", "variant", "seed", "status", "error"], rows,
                 records=[dict(zip(["run_id", "model", "task", "variant", "seed", "status", "error"], row))
                          for row in rows])


# --------------------------------------------------------------------------- renderers


@dataclass
class Report:
    runs: list[Run]
    configs: list[Config]
    best: dict[tuple[str, str, str], Config]
    tables: dict[str, list[Table]]
    notes: list[str] = field(default_factory=list)  # duplicate run ids, mixed data versions


def build_report(folder: str | Path, metric_from: str = "best") -> Report:
    notes: list[str] = []
    runs = load_runs(folder, metric_from, notes)
    configs = configurations(runs)
    best = select_best(configs)
    tables = {"best": best_tables(best), "detail": [detail_table(best, configs)],
              "hparams": hparam_tables(configs, best), "failed": [failed_table(runs)]}
    return Report(runs, configs, best, tables, notes)


def best_table_markdown(folder: str | Path) -> str:
    """The best-results table(s) of a results folder, for printing after a sweep."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tables = build_report(folder).tables["best"]
    return "\n\n".join(to_markdown(t) for t in tables) or f"(no finished runs in {folder})"


def shown_name(folder: str | Path) -> str:
    """The results folder as a report names it: relative to the working directory when it lies
    below it, else its own name (a report never records the absolute path of the machine it ran on)."""
    path = Path(folder).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return path.name


def markdown(report: Report, folder: str | Path) -> str:
    parts = [f"# lorabench report: {shown_name(folder)}",
             f"{len(report.runs)} runs, {len(report.configs)} configurations, "
             f"{sum(r.status != 'ok' for r in report.runs)} not ok.", *(f"**Note:** {n}" for n in report.notes)]
    for name in ("best", "detail", "hparams", "failed"):
        parts += [to_markdown(t) for t in report.tables[name] if t.rows]
    return "\n\n".join(parts) + "\n"


def write_report(folder: str | Path, out: str | Path | None = None, *, html: bool = False, echo: bool = True,
                 metric_from: str = "best", plots: bool = True) -> list[Path]:
    """Write report.md, <table>.csv / .tex, plots/*.png|svg and (html=True) report.html into ``out``."""
    out = Path(out) if out else Path(folder) / "report"
    report = build_report(folder, metric_from)  # refuses conflicting results before writing anything
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report, folder)
    written = [out / "report.md"]
    written[0].write_text(text)
    for name, tables in report.tables.items():
        if any(t.rows for t in tables):
            (out / f"{name}.csv").write_text(to_csv([r for t in tables for r in t.records]))
            (out / f"{name}.tex").write_text("\n".join(to_latex(t) for t in tables if t.rows))
            written += [out / f"{name}.csv", out / f"{name}.tex"]
    figures = []
    if plots:
        from .plots import make_plots

        figures = make_plots(report, out / "plots")
        written += [p for f in figures for p in f]
    if html:
        shown = [t for name in ("best", "detail", "hparams", "failed") for t in report.tables[name] if t.rows]
        subtitle = f"{shown_name(folder)}: {len(report.runs)} runs, {len(report.configs)} configurations"
        written.append(write_html_page(out / "report.html", subtitle, shown, [png for png, _ in figures]))
    if echo:
        print(text)
    return written
