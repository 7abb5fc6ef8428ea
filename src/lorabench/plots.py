"""Figures of a report, each saved as PNG and SVG.

Uses ``matplotlib.figure.Figure`` directly (no pyplot), so it never changes the backend of a
user's session and needs no display. One figure per (model, task) for the per-task plots:
- ``pareto-*``:  dev metric vs trainable parameters (log x); every configuration as a small dot,
  each variant's best configuration as a labelled marker with its std over seeds, and the Pareto
  front of those best points (no other method has fewer parameters and a higher score) as a line;
- ``history-*``: dev metric vs optimizer step of each variant's best configuration (mean over the
  seeds, at the steps every seed evaluated; only variants evaluated at >= 2 steps);
- ``rank-*``:    dev metric vs rank (log2 x), best over the other hyperparameters at each rank, one
  line per variant and targets setting -- only when some variant ran >= 2 ranks;
- ``forest-*``:  each variant's best configuration as its mean dev metric with the 95% interval
  over seeds (a dot alone with one seed), sorted by mean; filled markers for the best and the
  methods tied with it, hollow for those significantly below it, the reference's mean as a line;
- ``lr-*``:      dev metric vs learning rate (log x), one line per variant: at each lr the
  configuration the selection split prefers (``selection.lr_curves``), its mean ± std over seeds,
  the marker growing with the seeds it ran (successive halving gives the better lrs more) -- the
  learning-rate sensitivity of each method, and whether a tuned LoRA matches the variants; only
  variants that ran >= 2 lrs;
and one per model for the costs: ``train-time-*`` and ``peak-memory-*`` (bars per variant, grouped
by task).
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any


#: Above this many legend entries the legend goes beside the axes (in columns of LEGEND_ROWS),
#: and the figure widens for it, so the axes keep their size.
LEGEND_INSIDE, LEGEND_ROWS = 8, 18
MARKERS = "osD^vP*X<"  # 9, coprime with tab20's 20 colours


def _figure(width: float = 6.4, height: float = 4.2, entries: int = 0):
    from matplotlib.figure import Figure

    columns = math.ceil(entries / LEGEND_ROWS) if entries > LEGEND_INSIDE else 0
    fig = Figure(figsize=(width + 1.7 * columns, height), layout="constrained")
    return fig, fig.subplots()


def _legend(fig: Any, ax: Any, fontsize: str = "small") -> None:
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= LEGEND_INSIDE:
        ax.legend(fontsize=fontsize)
    else:
        fig.legend(handles, labels, loc="outside right upper", fontsize="x-small",
                   ncols=math.ceil(len(labels) / LEGEND_ROWS))


def save_figure(fig: Any, out: Path, stem: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")
    png, svg = out / f"{stem}.png", out / f"{stem}.svg"
    fig.savefig(png, dpi=130)
    fig.savefig(svg)
    return png, svg


def _style(report: Any, variant: str) -> dict:
    """The same colour and marker for a variant in every figure; distinct for up to 180 variants."""
    from matplotlib import colormaps

    variants = sorted({k[2] for k in report.best} | {c.variant for c in report.configs})
    if variant not in variants:
        return {"color": "black", "marker": "o"}
    i = variants.index(variant)
    return {"color": colormaps["tab20"](i % 20), "marker": MARKERS[i % len(MARKERS)]}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points not dominated by one with fewer (or equal) parameters and a higher score."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plot_pareto(report: Any, model: str, task: str, out: Path) -> tuple[Path, Path] | None:
    configs = [c for c in report.configs if (c.model, c.task) == (model, task) and c.n and c.avg("trainable")]
    best = {k[2]: c for k, c in report.best.items() if k[:2] == (model, task) and c.avg("trainable")}
    if not best:
        return None
    fig, ax = _figure(entries=len(best) + 2)
    ax.scatter([c.avg("trainable") for c in configs], [100 * c.mean for c in configs], s=10, color="0.75",
               label="every configuration", zorder=1)
    for variant, c in sorted(best.items()):
        style = _style(report, variant)
        ax.errorbar(c.avg("trainable"), 100 * c.mean, yerr=100 * (c.std or 0), fmt=style["marker"], capsize=3,
                    label=variant, color=style["color"], zorder=3)
    front = pareto_front([(c.avg("trainable"), 100 * c.mean) for c in best.values()])
    ax.plot(*zip(*front), drawstyle="steps-post", color="black", lw=1, ls="--", label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters", ylabel=f"dev {next(iter(best.values())).metric_name} ×100",
           title=f"{task}: score vs trainable parameters ({model})")
    _legend(fig, ax)
    return save_figure(fig, out, f"pareto-{model}-{task}")


def plot_history(report: Any, model: str, task: str, out: Path) -> tuple[Path, Path] | None:
    fig, ax = _figure(entries=sum(k[:2] == (model, task) for k in report.best))
    drew = False
    for (m, t, variant), c in sorted(report.best.items()):
        if (m, t) != (model, task):
            continue
        per_seed = [dict(r.history) for r in c.ok if r.history]
        steps = sorted(set.intersection(*(set(h) for h in per_seed))) if per_seed else []
        if len(steps) >= 2:  # one evaluation is no curve (the best-results table has it)
            style = _style(report, variant)
            ax.plot(steps, [100 * statistics.fmean(h[s] for h in per_seed) for s in steps], marker=style["marker"],
                    markersize=3, label=variant, color=style["color"])
            drew = True
    if not drew:
        return None
    ax.set(xlabel="optimizer step", ylabel="dev metric ×100", title=f"{task}: dev metric during training ({model})")
    _legend(fig, ax)
    return save_figure(fig, out, f"history-{model}-{task}")


def plot_rank(report: Any, model: str, task: str, out: Path) -> tuple[Path, Path] | None:
    lines: dict[str, dict[int, float]] = {}
    for c in report.configs:
        if (c.model, c.task) != (model, task) or c.failed or not c.n or not isinstance(c.rank, int):
            continue
        targets = c.flat.get("targets")
        label = c.variant + (f" {targets}" if targets is not None else "")
        line = lines.setdefault(label, {})
        line[c.rank] = max(line.get(c.rank, float("-inf")), 100 * c.mean)
    lines = {k: v for k, v in lines.items() if len(v) >= 2}
    if not lines:
        return None
    fig, ax = _figure(entries=len(lines))
    for label, line in sorted(lines.items()):
        ranks = sorted(line)
        ax.plot(ranks, [line[r] for r in ranks], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ticks = sorted({r for line in lines.values() for r in line})
    ax.set_xticks(ticks, [str(r) for r in ticks])
    ax.minorticks_off()
    ax.set(xlabel="rank r", ylabel="dev metric ×100 (best over other hyperparameters)",
           title=f"{task}: score vs rank ({model})")
    _legend(fig, ax, fontsize="x-small")
    return save_figure(fig, out, f"rank-{model}-{task}")


def plot_forest(report: Any, model: str, task: str, out: Path) -> tuple[Path, Path] | None:
    cells = sorted(((k[2], c) for k, c in report.best.items() if k[:2] == (model, task)), key=lambda vc: vc[1].mean)
    if len(cells) < 2:
        return None
    fig, ax = _figure(height=max(2.4, 0.42 * len(cells) + 1.2))
    for y, (variant, c) in enumerate(cells):
        style, verdict = _style(report, variant), report.verdicts.get((model, task, variant))
        ci = verdict.ci if verdict is not None else None  # the report's interval, computed once
        xerr = None if ci is None else [[100 * (c.mean - ci[0])], [100 * (ci[1] - c.mean)]]
        hollow = verdict is not None and verdict.tied is False
        ax.errorbar(100 * c.mean, y, xerr=xerr, fmt=style["marker"], capsize=3, color=style["color"],
                    markerfacecolor="white" if hollow else style["color"])
        if variant == "lora":
            ax.axvline(100 * c.mean, color="0.6", lw=1, ls="--", zorder=0)
    ax.set_yticks(range(len(cells)), [v for v, _ in cells])
    n = sorted({c.n for _, c in cells})
    ax.set(xlabel=f"dev {cells[0][1].metric_name} ×100 (mean, 95% CI over {'/'.join(map(str, n))} seeds)",
           title=f"{task}: best configuration per method ({model})")
    return save_figure(fig, out, f"forest-{model}-{task}")


def plot_lr(report: Any, model: str, task: str, out: Path) -> tuple[Path, Path] | None:
    curves = report.curves.get((model, task))
    if not curves:
        return None
    fig, ax = _figure(entries=len(curves))
    for variant, points in sorted(curves.items()):
        style = _style(report, variant)
        lrs, means = [lr for lr, _ in points], [100 * c.mean for _, c in points]
        ax.plot(lrs, means, label=variant, color=style["color"], lw=1.2)
        for lr, c in points:  # marker area grows with the seeds (halving gives the better lrs more)
            ax.errorbar(lr, 100 * c.mean, yerr=100 * (c.std or 0), fmt=style["marker"], color=style["color"],
                        markersize=3 + 1.5 * c.n, capsize=2, lw=0.8, alpha=0.9)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel=f"dev {points[0][1].metric_name} ×100 (mean ± std over seeds)",
           title=f"{task}: learning-rate sensitivity ({model}); larger markers: more seeds")
    _legend(fig, ax)
    return save_figure(fig, out, f"lr-{model}-{task}")


def plot_cost(report: Any, model: str, attr: str, label: str, scale: float, out: Path) -> tuple[Path, Path] | None:
    cells = {(k[1], k[2]): c.avg(attr) for k, c in report.best.items() if k[0] == model and c.avg(attr) is not None}
    if not cells:
        return None
    tasks = sorted({t for t, _ in cells})
    variants = sorted({v for _, v in cells})
    fig, ax = _figure(max(6.4, 0.7 * len(variants) * max(1, len(tasks)) / 2 + 2))
    width = 0.8 / len(tasks)
    for i, task in enumerate(tasks):
        xs = [j + (i - (len(tasks) - 1) / 2) * width for j in range(len(variants))]
        ax.bar(xs, [cells.get((task, v), 0) / scale for v in variants], width, label=task)
    ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
    ax.set(ylabel=label, title=f"{label} per variant ({model})")
    if len(tasks) > 1:
        ax.legend(fontsize="small")
    return save_figure(fig, out, f"{label.split(' (')[0].replace(' ', '-')}-{model}")


def make_plots(report: Any, out: str | Path) -> list[tuple[Path, Path]]:
    """Every figure the results allow; returns [(png, svg)]."""
    out = Path(out)
    figures = []
    pairs = sorted({k[:2] for k in report.best})
    for model, task in pairs:
        figures += [plot_pareto(report, model, task, out), plot_history(report, model, task, out),
                    plot_rank(report, model, task, out), plot_forest(report, model, task, out),
                    plot_lr(report, model, task, out)]
    for model in sorted({m for m, _ in pairs}):
        figures += [plot_cost(report, model, "train_s", "train time (s)", 1.0, out),
                    plot_cost(report, model, "peak_bytes", "peak memory (MiB)", 2**20, out)]
    return [f for f in figures if f is not None]
