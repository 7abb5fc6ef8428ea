"""Tables of federated results, computed from ``lorabench-federated`` JSONs only.

    curves = round_table(records)     # round x run: the global dev metric after each round
    final = summary_table(records)    # one row per run: final metric, bytes, aggregation error
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from ..tables import Table

SCHEMA = "lorabench-federated"
SCHEMA_VERSION = 1


def read_records(paths: list[str]) -> list[dict]:
    """The federated records in ``paths`` (files, or folders holding federated.json)."""
    out = []
    for p in map(Path, paths):
        f = p / "federated.json" if p.is_dir() else p
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {f} ({e}); pass federated.json files written by lorabench federate") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise DataError(f"{f} is not a {SCHEMA} result (schema {data.get('schema') if isinstance(data, dict) else None!r}); "
                            "pass federated.json files written by lorabench federate")
        out.append(data)
    return out


def label(record: dict) -> str:
    fed = record["federated"]
    return f"{record['method']} β={fed['beta']}"


def metric(metrics: dict, name: str) -> float | None:
    """The metric ``name`` of the first split in ``metrics`` (a record's evaluation), or None."""
    split = next(iter(metrics), None)
    value = (metrics.get(split) or {}).get(name) if split else None
    return float(value) if isinstance(value, (int, float)) else None


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def round_table(records: list[dict]) -> Table:
    """Round (0: before training) x run: the primary dev metric of the global model, x100."""
    rounds = max(len(r["rounds"]) for r in records)
    rows = []
    for t in range(rounds + 1):
        row = [str(t)]
        for r in records:
            metrics = r["initial"]["metrics"] if t == 0 else (r["rounds"][t - 1]["metrics"] if t <= len(r["rounds"]) else {})
            row.append(_pct(metric(metrics, r["primary_metric"])))
        rows.append(row)
    names = sorted({r["primary_metric"] for r in records})
    return Table(f"Global dev {'/'.join(names)} after each round", ["round", *map(label, records)], rows,
                 note="×100; round 0: the shared initial adapter and head, before any training")


def summary_table(records: list[dict]) -> Table:
    """One row per run: settings, final and best dev metric, total MB up / down, mean aggregation error."""
    rows = []
    for r in records:
        fed, name = r["federated"], r["primary_metric"]
        values = [metric(x["metrics"], name) for x in r["rounds"]]
        best = max((v for v in values if v is not None), default=None)
        errors = [x["aggregation_error"] for x in r["rounds"]]
        rows.append([r["method"], str(fed["beta"]), f"{fed['clients']} × {fed['fraction']:g}", str(fed["rounds"]),
                     _pct(values[-1] if values else None), _pct(best), f"{r['bytes']['up'] / 2**20:.2f}",
                     f"{r['bytes']['down'] / 2**20:.2f}", f"{sum(errors) / len(errors):.3g}" if errors else "—"])
    return Table("Federated LoRA: final global model", ["method", "β", "clients × fraction", "rounds",
                 "final", "best round", "MiB up", "MiB down", "mean agg. error"], rows,
                 note="×100 primary dev metric; agg. error: Σ_layers ||Σ_i p_i B_i A_i − B_glob A_glob||_F per round "
                      "(before the LoRA scale), mean over rounds; MiB: all clients, all rounds, head included")
