"""Tables (Markdown, CSV, LaTeX, HTML) and plots from a results folder: a pure function of its JSONs.

Definitions.
- Dev metric of a run: the task's primary metric (``primary_metric``) on the first dev split of the
  run's ``best`` evaluation (``--metric-from final``: its last one). Best-over-evaluations follows the
  LoRA paper (Hu et al. 2021, Table 2: "the result for each run is taken from the best epoch").
  Shown ×100 (GLUE convention); CSV files keep the raw values.
- Selection split: a run with ``val_size`` held a ``val`` split out of its training set; ``val``
  chose its best evaluation and chooses its configuration below, and dev only reports. Without it
  dev both chooses and reports, which is optimistic for every method alike; the report says which.
- Configuration: the resolved run config without ``seed`` and without fields that do not change
  what is learned (``NOT_HYPERPARAMETERS``). Its runs over seeds give mean, sample std (ddof=1;
  "—" when n = 1), n, and the 95% t interval of the mean (``stats.mean_ci``: training noise over
  seeds; the dev set's own sampling noise is not in it).
- Best configuration per (model, task, variant): among configurations with no failed run and the
  most seeds, the highest mean metric on the selection split (``selection.select_best``).
- Significance vs ``lora``: a two-sided paired t-test over the seeds both best configurations ran
  (scipy's ``ttest_rel`` when installed, else the exact Student-t tail in ``stats``); needs >= 2
  pairs. Holm-Bonferroni across the methods of one (model, task) controls the family-wise error;
  † marks a Holm-adjusted p < 0.05. Results hold no per-example predictions, so a bootstrap over
  dev examples is not possible.
- Tied with the best: the method with the highest mean dev metric on a task leads; a method is tied
  with it when the paired test against the leader, Holm-adjusted over the other methods, does not
  reject at 0.05. Bold task cells are the leader and the methods tied with it (the maximum alone
  where there is one seed). The "Comparison" table lists every verdict.
- GLUE average: mean of a row's task scores over the tasks present ("—" if the row misses one).
  Params = the largest trainable count over tasks, time = the sum of mean train times (evaluation
  excluded; "—" if the row misses a task), memory = the largest mean peak (CUDA peak allocated,
  else the run process's peak RSS, model load included). Bold cost cells: fewest params, least time
  and memory.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .selection import (  # noqa: F401  (report.load_runs & co.: part of its face)
    GLUE,
    Config,
    Run,
    configurations,
    describe,
    load_runs,
    lr_curves,
    select_best,
    sortable,
    task_order,
    varying_keys,
)
from .forgetting_table import forgetting_table
from .stats import holm, mean_ci, paired_t_test, t_two_sided_p  # noqa: F401  (report.paired_t_test: its face)
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

REFERENCE = "lora"
ALPHA = 0.05


# --------------------------------------------------------------------------- significance


def paired_p(a: Config, b: Config) -> float | None:
    """Two-sided paired t-test of two configurations over the seeds both ran (None below 2)."""
    seeds = sorted(set(a.by_seed) & set(b.by_seed))
    return paired_t_test([a.by_seed[s] for s in seeds], [b.by_seed[s] for s in seeds])


@dataclass
class Verdict:
    """One method's best configuration on one task: its interval, its test against ``REFERENCE``
    (raw and Holm-adjusted over the task's methods) and whether it is tied with the task's leader."""
    ci: tuple[float, float] | None
    p_ref: float | None
    p_ref_holm: float | None
    p_lead_holm: float | None
    leader: bool
    tied: bool | None  # None: fewer than 2 paired seeds, cannot tell

    @property
    def differs_from_reference(self) -> bool:
        return self.p_ref_holm is not None and self.p_ref_holm < ALPHA


def verdicts(best: dict[tuple[str, str, str], Config]) -> dict[tuple[str, str, str], Verdict]:
    """A ``Verdict`` per (model, task, variant) of ``best``; each (model, task) is one Holm family."""
    out = {}
    for model, task in sorted({k[:2] for k in best}):
        cells = {k[2]: c for k, c in best.items() if k[:2] == (model, task)}
        ref = cells.get(REFERENCE)
        p_ref = {v: paired_p(c, ref) if ref is not None and v != REFERENCE else None for v, c in cells.items()}
        lead = max(sorted(cells), key=lambda v: cells[v].mean)
        p_lead = {v: paired_p(c, cells[lead]) if v != lead else None for v, c in cells.items()}
        ref_holm, lead_holm = holm(p_ref), holm(p_lead)
        for v, c in cells.items():
            tied = True if v == lead else None if lead_holm[v] is None else lead_holm[v] >= ALPHA
            out[(model, task, v)] = Verdict(mean_ci(c.values), p_ref[v], ref_holm[v], lead_holm[v], v == lead, tied)
    return out


def selection_note(runs: list[Run], configs: list[Config]) -> str:
    """Which split chose and which reported, in one sentence for the report's head."""
    groups = [(c.model, c.task, c.variant) for c in configs if c.n]
    if len(groups) == len(set(groups)) and all(len(r.history) <= 1 for r in runs):
        return "Nothing was selected: one configuration per method and one evaluation per run, reported on dev."
    splits = {r.select_split for r in runs if r.select_split}
    sizes = sorted({r.flat.get("val_size") for r in runs if r.select_split == "val"})
    if splits == {"val"}:
        return (f"Selection on `val` ({', '.join(map(str, sizes))} training examples held out, the same for every "
                "run): it chose each run's best evaluation and each method's configuration; dev only reports.")
    if splits == {"dev"}:
        return ("Selection and reporting both on dev (no val_size): optimistic for every method alike; hold out a "
                "val split (val_size, as configs/fair.yaml does) for unbiased numbers.")
    return "Mixed selection: some runs chose on a held-out `val` split, others on dev." if splits else ""


def edge_notes(best: dict[tuple[str, str, str], Config], configs: list[Config]) -> list[str]:
    """A method whose selected learning rate is the smallest or largest of its grid (of 3 or more):
    the optimum may lie outside it."""
    notes = []
    for key, c in sorted(best.items()):
        lrs = sorted({o.flat.get("lr") for o in configs if (o.model, o.task, o.variant) == key and o.n})
        lr = c.flat.get("lr")
        if len(lrs) >= 3 and lr in (lrs[0], lrs[-1]):
            side = "smallest" if lr == lrs[0] else "largest"
            notes.append(f"{key[2]} on {key[1]} ({key[0]}) selected lr {lr:g}, the {side} of its grid "
                         f"({', '.join(f'{x:g}' for x in lrs)}): its best may lie outside; extend the grid")
    return notes


def seeds_note(best: dict[tuple[str, str, str], Config]) -> str:
    if best and all(c.n == 1 for c in best.values()):
        return ("One seed per configuration: no interval and no test, so these tables cannot rank methods; run 3 "
                "or more seeds (configs/fair.yaml) to tell methods apart.")
    return ""


# --------------------------------------------------------------------------- tables


def _mark_best(rows_raw: list[list[float | None]], col: int, highest: bool, bold: set, col_offset: int) -> None:
    vals = [r[col] for r in rows_raw if r[col] is not None]
    if vals:
        target = max(vals) if highest else min(vals)
        bold |= {(i, col + col_offset) for i, r in enumerate(rows_raw) if r[col] == target}


def _cell(c: Config | None, v: Verdict | None) -> str:
    if c is None:
        return "—"
    return cell_score(c.mean, c.std) + ("†" if v is not None and v.differs_from_reference else "")


def best_tables(best: dict[tuple[str, str, str], Config], verdict: dict | None = None) -> list[Table]:
    """One GLUE-style table per model: variants x tasks, average, params, time, memory."""
    verdict = verdicts(best) if verdict is None else verdict
    tables = []
    for model in sorted({k[0] for k in best}):
        keys = [k for k in best if k[0] == model]
        tasks = sorted({k[1] for k in keys}, key=task_order)
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
            text = [_cell(c, verdict.get((model, t, v))) for t, c in zip(tasks, cells)]
            rows.append([v] + text + [f"{100 * avg:.2f}" if avg is not None else "—", cell_count(params), cell_secs(time_),
                         cell_bytes(peak)])
            raw.append(means + [avg, params, time_, peak])
            records.append({"model": model, "method": v} | {t: m for t, m in zip(tasks, means)}
                           | {"avg": avg, "params": cell_int(params), "train_s": time_, "peak_bytes": cell_int(peak)})
        bold: set[tuple[int, int]] = set()
        for col, task in enumerate(tasks):
            marks = {i for i, v in enumerate(variants) if (vd := verdict.get((model, task, v))) and vd.tied}
            if any((vd := verdict.get((model, task, v))) and not vd.leader and vd.tied is not None for v in variants):
                bold |= {(i, col + 1) for i in marks}  # tested: the leader and the methods tied with it
            else:
                _mark_best(raw, col, True, bold, 1)
        _mark_best(raw, len(tasks), True, bold, 1)
        for col in range(len(tasks) + 1, len(tasks) + 4):
            _mark_best(raw, col, False, bold, 1)
        tables.append(Table(f"Best results — {model}", columns, rows, bold,
                            f"dev metric ×100, mean ± std over seeds of the best configuration (chosen on the "
                            f"selection split); † Holm-adjusted p < {ALPHA} vs {REFERENCE} (paired t-test over seeds); "
                            "bold task cells: the best and the methods not significantly different from it "
                            "(the maximum where untested); other bold: best per column", records))
    return tables


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}"


def comparison_table(best: dict[tuple[str, str, str], Config], verdict: dict) -> Table:
    """Every (model, task, method): n, mean ± std, 95% CI, difference and tests vs the reference,
    and whether it is tied with the task's best."""
    rows, records = [], []
    for key in sorted(best, key=lambda k: (k[0], task_order(k[1]), -(best[k].mean or 0), k[2])):
        c, v = best[key], verdict[key]
        ref = best.get((key[0], key[1], REFERENCE))
        delta = c.mean - ref.mean if ref is not None and key[2] != REFERENCE else None
        tied = "best" if v.leader else "—" if v.tied is None else "yes" if v.tied else "no"
        rows.append([key[0], GLUE.get(key[1], key[1]), key[2], str(c.n), cell_score(c.mean, c.std),
                     "—" if v.ci is None else f"[{100 * v.ci[0]:.2f}, {100 * v.ci[1]:.2f}]",
                     "—" if delta is None else f"{100 * delta:+.2f}", _p(v.p_ref),
                     _p(v.p_ref_holm) + ("†" if v.differs_from_reference else ""), tied])
        records.append({"model": key[0], "task": key[1], "variant": key[2], "metric": c.metric_name, "n": c.n,
                        "mean": c.mean, "std": c.std, "ci_low": v.ci and v.ci[0], "ci_high": v.ci and v.ci[1],
                        "delta_vs_" + REFERENCE: delta, "p_vs_" + REFERENCE: v.p_ref, "p_holm": v.p_ref_holm,
                        "p_vs_best_holm": v.p_lead_holm, "tied_with_best": tied})
    return Table("Comparison", ["model", "task", "method", "n", "dev", "95% CI", f"Δ vs {REFERENCE}",
                                f"p vs {REFERENCE}", "p (Holm)", "tied with best"], rows, records=records,
                 note=f"dev metric ×100 of each method's best configuration; 95% t interval of the mean over seeds; "
                      f"paired t-tests over seeds, Holm-Bonferroni across the methods of a task († < {ALPHA}); "
                      "tied with best: the test against the task's best (Holm-adjusted) does not reject, — = untested "
                      "(fewer than 2 shared seeds)")


def detail_table(best: dict[tuple[str, str, str], Config], configs: list[Config], verdict: dict) -> Table:
    rows, records = [], []
    for key in sorted(best, key=lambda k: (k[0], task_order(k[1]), k[2] != REFERENCE, k[2])):
        c, v = best[key], verdict[key]
        group = [o for o in configs if (o.model, o.task, o.variant) == key]
        cfg = describe(c, varying_keys(group))
        rows.append([*key, cfg, _pct(c.select_mean), cell_score(c.mean, c.std), str(c.n),
                     _p(v.p_ref_holm), cell_count(c.avg("trainable")), cell_secs(c.avg("train_s")),
                     cell_bytes(c.avg("peak_bytes"))])
        records.append({"model": key[0], "task": key[1], "variant": key[2], "config": cfg, "metric": c.metric_name,
                        "select_mean": c.select_mean, "mean": c.mean, "std": c.std, "n": c.n,
                        "p_vs_" + REFERENCE: v.p_ref, "p_holm": v.p_ref_holm,
                        "trainable": cell_int(c.avg("trainable")), "train_s": c.avg("train_s"),
                        "peak_bytes": cell_int(c.avg("peak_bytes")), "seeds": sorted(c.by_seed)})
    return Table("Best configuration per variant and task",
                 ["model", "task", "variant", "configuration", "select", "dev", "n", f"p vs {REFERENCE} (Holm)",
                  "params", "train time", "peak memory"], rows, records=records,
                 note="select: mean metric ×100 on the selection split (val when held out, else dev)")


def hparam_tables(configs: list[Config], best: dict) -> list[Table]:
    """Per variant: every configuration tried on each task, its metrics over seeds and failures."""
    groups: dict[tuple, list[Config]] = {}
    for c in configs:
        groups.setdefault((c.model, c.task, c.variant), []).append(c)
    tables: dict[str, Table] = {}
    for key in sorted(groups, key=lambda k: (k[2] != REFERENCE, k[2], k[0], task_order(k[1]))):
        t = tables.setdefault(key[2], Table(f"Hyperparameters — {key[2]}", ["model", "task", "configuration",
                                                                            "select", "dev", "n", "failed"], [],
                                            note="metric ×100, mean over seeds on the selection split (select) "
                                                 "and mean ± std on dev; bold = selected as best"))
        keys = varying_keys(groups[key])
        for c in sorted(groups[key], key=lambda c: [sortable(c.flat.get(k)) for k in keys]):
            if best.get(key) is c:
                t.bold.add((len(t.rows), 4))
            t.rows.append([key[0], key[1], describe(c, keys), _pct(c.select_mean),
                           cell_score(c.mean, c.std), str(c.n), str(c.failed)])
            t.records.append({"model": key[0], "task": key[1], "variant": key[2], "config": describe(c, keys),
                              "metric": c.metric_name, "select_mean": c.select_mean, "mean": c.mean, "std": c.std,
                              "n": c.n, "failed": c.failed, "seeds": sorted(c.by_seed)})
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
    verdicts: dict[tuple[str, str, str], Verdict] = field(default_factory=dict)
    about: list[str] = field(default_factory=list)  # which split selected, how many seeds
    curves: dict[tuple[str, str], dict] = field(default_factory=dict)  # (model, task) -> ``lr_curves``


def build_report(folder: str | Path, metric_from: str = "best") -> Report:
    notes: list[str] = []
    runs = load_runs(folder, metric_from, notes)
    configs = configurations(runs)
    best = select_best(configs)
    verdict = verdicts(best)
    tables = {"best": best_tables(best, verdict), "compare": [comparison_table(best, verdict)],
              "detail": [detail_table(best, configs, verdict)], "hparams": hparam_tables(configs, best),
              "failed": [failed_table(runs)], "forgetting": [forgetting_table(configs, folder)]}
    about = [line for line in (selection_note(runs, configs), seeds_note(best)) if line]
    notes += edge_notes(best, configs)
    curves = {key: lr_curves(configs, *key) for key in sorted({k[:2] for k in best})}
    return Report(runs, configs, best, tables, notes, verdict, about, curves)


def best_table_markdown(folder: str | Path, compare: bool = False) -> str:
    """The best-results table(s) of a results folder (``compare``: and the comparison table, with
    what selected), for printing after a sweep."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = build_report(folder)
    tables = report.tables["best"] + (report.tables["compare"] if compare else [])
    text = "\n\n".join(to_markdown(t) for t in tables if t.rows)
    return (text + "".join(f"\n\n{line}" for line in report.about)) if text else f"(no finished runs in {folder})"


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
             f"{sum(r.status != 'ok' for r in report.runs)} not ok.", *report.about,
             *(f"**Note:** {n}" for n in report.notes)]
    for name in ("best", "compare", "forgetting", "detail", "hparams", "failed"):
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
        shown = [t for name in ("best", "compare", "forgetting", "detail", "hparams", "failed") for t in report.tables[name]
                 if t.rows]
        subtitle = f"{shown_name(folder)}: {len(report.runs)} runs, {len(report.configs)} configurations"
        written.append(write_html_page(out / "report.html", subtitle, shown, [png for png, _ in figures]))
    if echo:
        print(text)
    return written
