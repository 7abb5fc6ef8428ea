"""The report's "Task metric vs forgetting" table: for every configuration of ``--head lm`` runs
whose results hold a ``forgetting`` record (``lorabench.forgetting``), its dev metric beside how
far training moved the decoder on general text, with and without a regularizer.

One row per configuration (its runs over seeds: mean and sample std of the dev metric; mean of
the perplexity after training and of KL(base || tuned) per token), sorted so that a method's
runs with and without ``--regularizer`` sit together. A pure function of the results folder.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from . import results
from .tables import Table, cell_score

if TYPE_CHECKING:  # (the report hands its configurations in; importing selection would add a floor)
    from .selection import Config

SHOWN_ELSEWHERE = ("model", "task", "variant", "regularizer", "data")  # own columns, or not a setting


def forgetting_records(folder: str | Path) -> dict[str, dict]:
    """run id -> its ``forgetting`` record, for the ok results under ``folder`` that have one."""
    out = {}
    for _, r in results.load_results(folder, warn=False):
        f = r.get("forgetting")
        if r.get("status") == "ok" and isinstance(f, dict) and all(k in f for k in ("base_ppl", "ppl", "kl")):
            out[r["run_id"]] = f
    return out


def varying(configs: list["Config"]) -> list[str]:
    """The settings that differ between the configurations shown, but for those with a column."""
    keys = list(dict.fromkeys(k for c in configs for k in c.flat))
    return [k for k in keys if k not in SHOWN_ELSEWHERE and len({results.canonical(c.flat.get(k)) for c in configs}) > 1]


def describe(c: "Config", keys: list[str]) -> str:
    return " ".join(f"{k}={c.flat.get(k)}" for k in keys) or "—"


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def forgetting_table(configs: list["Config"], folder: str | Path) -> Table:
    """The table (no rows when no run of ``folder`` measured forgetting)."""
    measured = forgetting_records(folder)
    rows, records = [], []
    shown = [c for c in configs if any(r.run_id in measured for r in c.runs)]
    keys = varying(shown)
    for c in sorted(shown, key=lambda c: (c.model, c.task, c.variant, describe(c, keys), str(c.flat.get("regularizer")))):
        runs = [r for r in c.runs if r.run_id in measured and r.metric is not None]
        if not runs:
            continue
        f = [measured[r.run_id] for r in runs]
        metric = [r.metric for r in runs]
        std = statistics.stdev(metric) if len(metric) > 1 else None
        base, ppl, kl = (_mean([x[k] for x in f]) for k in ("base_ppl", "ppl", "kl"))
        reg = c.flat.get("regularizer") or "none"
        rows.append([c.model, c.task, c.variant, reg, describe(c, keys), cell_score(_mean(metric), std),
                     f"{base:.2f}", f"{ppl:.2f}", f"{ppl - base:+.2f}", f"{kl:.4f}", str(len(runs))])
        records.append({"model": c.model, "task": c.task, "variant": c.variant, "regularizer": reg,
                        "config": c.key, "metric": runs[0].metric_name, "metric_mean": _mean(metric),
                        "metric_std": std, "base_ppl": base, "ppl": ppl, "kl": kl, "n": len(runs),
                        "tokens": f[0].get("tokens"), "text": f[0].get("text")})
    note = ("Dev metric ×100 (mean ± std over seeds). Forgetting on lorabench's general-text sample "
            "(lorabench/data/general_text.txt): perplexity of the decoder before (base) and after training, "
            "and the mean KL(base || tuned) of its next-token distributions, nats per token. Lower is less "
            "forgetting.")
    return Table("Task metric vs forgetting (head lm)",
                 ["model", "task", "variant", "regularizer", "config", "dev metric", "base ppl", "ppl", "Δppl",
                  "KL/token", "n"], rows, note=note, records=records)
