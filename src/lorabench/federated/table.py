"""Tables of federated results, computed from result JSONs only: run envelopes of kind
``federated`` (``federated.recipe``) and the ``lorabench-federated`` files of earlier versions.

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


def from_envelope(result: dict) -> dict:
    """A ``kind: federated`` run result seen as a federated record (its ``details`` with the run's
    method, settings, task, model, metric and status on top)."""
    s = result["config"]["scenario"]
    return {**result["details"], "method": s["method"], "options": s.get("options", {}),
            "federated": {k: s[k] for k in ("method", "clients", "beta", "rounds", "local_epochs", "fraction")},
            "config": result["config"], "task": result["task"], "model": result["model"],
            "primary_metric": result["primary_metric"], "status": result["status"], "error": result.get("error"),
            "seed": result.get("seed"), "run_id": result["run_id"]}


def _records_in(f: Path) -> list[dict]:
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {f} ({e}); pass result JSONs written by lorabench federate") from None
    if isinstance(data, dict) and data.get("schema") == SCHEMA:
        return [data]
    if isinstance(data, dict) and data.get("schema") == "lorabench-run" and data.get("kind") == "federated" \
            and isinstance(data.get("details"), dict):
        return [from_envelope(data)]
    raise DataError(f"{f} is not a federated result (schema {data.get('schema') if isinstance(data, dict) else None!r}, "
                    f"kind {data.get('kind') if isinstance(data, dict) else None!r}); pass result JSONs or folders "
                    "written by lorabench federate")


def read_records(paths: list[str]) -> list[dict]:
    """The federated records in ``paths``: result files, or folders (their federated runs' JSONs,
    or the federated.json of an earlier version)."""
    out = []
    for p in map(Path, paths):
        if not p.is_dir():
            out += _records_in(p)
            continue
        found = [f for f in sorted(p.glob("*.json")) if not f.name.startswith(".")]
        runs = [r for f in found if f.name.startswith("run-") for r in _maybe(f)]
        if runs:
            out += runs
        elif (p / "federated.json").is_file():
            out += _records_in(p / "federated.json")
        else:
            raise DataError(f"{p} holds no federated result; pass result JSONs or folders written by lorabench federate")
    return out


def _maybe(f: Path) -> list[dict]:
    try:
        return _records_in(f)
    except DataError:
        return []  # another kind's result in the same folder


def label(record: dict) -> str:
    fed = record["federated"]
    seed = record.get("seed")
    return f"{record['method']} β={fed['beta']}" + (f" s{seed}" if seed not in (None, 0) else "")


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
    """One row per run: status, settings, final dev metric (the last round: no round is picked on the
    dev split it reports), total MB up / down, mean aggregation error."""
    rows = []
    for r in records:
        fed, name = r["federated"], r["primary_metric"]
        values = [metric(x["metrics"], name) for x in r["rounds"]]
        errors = [x["aggregation_error"] for x in r["rounds"]]
        status = r.get("status", "ok")
        final = _pct(values[-1] if values else None) if status == "ok" else f"({status})"
        rows.append([r["method"], status, str(fed["beta"]), f"{fed['clients']} × {fed['fraction']:g}",
                     f"{len(r['rounds'])}/{fed['rounds']}", final, f"{r['bytes']['up'] / 2**20:.2f}",
                     f"{r['bytes']['down'] / 2**20:.2f}", f"{sum(errors) / len(errors):.3g}" if errors else "—"])
    return Table("Federated LoRA: final global model", ["method", "status", "β", "clients × fraction", "rounds",
                 "final", "MiB up", "MiB down", "mean agg. error"], rows,
                 note="×100 primary dev metric of the last round (no round is selected on the dev split it reports; "
                      "a run that did not end ok shows its status instead); agg. error: Σ_layers ||Σ_i p_i B_i A_i − "
                      "B_glob A_glob||_F per round (before the LoRA scale), mean over rounds; MiB: all clients, all "
                      "rounds, head included; rounds: done / planned")
