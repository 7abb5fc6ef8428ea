"""Round curves of federated results, computed from ``lorabench-federated`` JSONs only.

    png, svg = plot_rounds(records, out_folder)   # rounds-<model>-<task>.png / .svg

Left: the global model's primary dev metric (x100) after each round, round 0 being the shared
initial adapter and head. Right: the aggregation error ||sum_i p_i B_i A_i - B A||_F of each round
(log scale; an exact aggregation such as FFA-LoRA's sits at float rounding). One colour per method,
one line style per label skew (solid for the first beta, dashed for the next, ...), so a method's
IID and non-IID runs sit side by side. Only runs of one model and task go in one figure.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..plots import MARKERS, save_figure
from .table import metric

LINESTYLES = ["-", "--", ":", "-."]


def _value(metrics: dict, name: str) -> float | None:
    value = metric(metrics, name)
    return None if value is None else 100 * value


def curves(record: dict) -> tuple[list[int], list[float | None], list[float]]:
    """(rounds 0..R, the metric x100 after each, the aggregation error of rounds 1..R)."""
    name = record["primary_metric"]
    values = [_value(record["initial"]["metrics"], name)] + [_value(x["metrics"], name) for x in record["rounds"]]
    return list(range(len(values))), values, [float(x["aggregation_error"]) for x in record["rounds"]]


def plot_rounds(records: list[dict], out: str | Path) -> tuple[Path, Path]:
    """One figure of every record's round curves; all records must share model and task."""
    keys = sorted({(str(r["model"]), str(r["task"])) for r in records})
    if len(keys) != 1:
        raise DataError(f"round curves need runs of one model and task, got {', '.join('/'.join(k) for k in keys)}; "
                        "pass the federated.json files of one task")
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    methods = sorted({r["method"] for r in records})
    betas = sorted({str(r["federated"]["beta"]) for r in records}, key=lambda b: float(b))
    fig = Figure(figsize=(10.5, 4.0), layout="constrained")
    metric_ax, error_ax = fig.subplots(1, 2)
    for r in sorted(records, key=lambda r: (r["method"], float(r["federated"]["beta"]))):
        i, beta = methods.index(r["method"]), str(r["federated"]["beta"])
        style = {"color": colormaps["tab10"](i % 10), "marker": MARKERS[i % len(MARKERS)],
                 "linestyle": LINESTYLES[betas.index(beta) % len(LINESTYLES)], "markersize": 4}
        x, values, errors = curves(r)
        metric_ax.plot(x, [float("nan") if v is None else v for v in values], label=f"{r['method']} β={beta}", **style)
        if errors:
            error_ax.plot(x[1:], [max(e, 1e-12) for e in errors], **style)
    model, task = keys[0]
    metric_ax.set(xlabel="round", ylabel=f"global dev {records[0]['primary_metric']} ×100", title=f"{model} {task}")
    error_ax.set(xlabel="round", ylabel="aggregation error ‖Σ p_i B_i A_i − B A‖_F", yscale="log",
                 title="aggregation error per round")
    for ax in (metric_ax, error_ax):
        ax.grid(alpha=0.3)
        ax.set_xticks(range(max(len(r["rounds"]) for r in records) + 1))
    metric_ax.legend(fontsize="x-small", ncols=2)
    return save_figure(fig, Path(out), f"rounds-{model}-{task}")
