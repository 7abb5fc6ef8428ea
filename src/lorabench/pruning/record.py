"""The result of one pruning run (JSON schema ``lorabench-prune``) and the table of many.

prune-<method>-s<sparsity>.json: schema "lorabench-prune", schema_version 1, method, options,
target_sparsity, sparsity {groups: {block: {heads: [pruned, of], channels: [pruned, of]}},
params_before, params_after, achieved (1 - after / before, whole model), block_params_before,
block_params_after, block_achieved (the prunable linear layers only)}, params {full, train_base,
inference}, metric {name, split, value} (the inference model's, final), dev ({split: {metric:
value}}), time {train_s, eval_s_pruned, eval_s_full}, memory {device, peak_rss_bytes,
peak_allocated_bytes, train_weights_bytes, inference_weights_bytes}, train (history, steps,
train_loss), extra (method-specific), config (the resolved RunConfig), model, task,
lorabench_version, created_at.

Memory: ``train_weights_bytes`` / ``inference_weights_bytes`` are the parameter bytes of the model
trained (its base and the adapter) and of the model evaluated: LoRAM's claim (train on the small
base, infer on the full one) in numbers. ``peak_allocated_bytes`` (CUDA) is reset at every fit;
``peak_rss_bytes`` is the process's peak, so on CPU a run inherits the peak of the runs before it in
the same ``lorabench prune`` call (one call per run to compare CPU peaks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._version import __version__
from ..results import now
from ..tables import Table
from .registry import Outcome
from .remove import removed_parameters

SCHEMA, SCHEMA_VERSION = "lorabench-prune", 1


def file_name(method: str, sparsity: float) -> str:
    return f"prune-{method}-s{sparsity:g}.json"


def make_record(method: str, options: dict, sparsity: float, job: Any, outcome: Outcome) -> dict:
    """The result JSON of one run (``job``: the ``pruning.job.Job`` it ran in)."""
    cfg, task, found, block_before = job.cfg, job.task, job.blocks, job.block_params
    split = task.dev_splits[0]
    heads = sum(len(p["heads"]) for p in outcome.plan.values())
    groups, removed = {}, 0
    for b in found:
        p = outcome.plan.get(b.name)
        if p is not None:
            groups[b.name] = {"heads": [len(p["heads"]), b.heads], "channels": [len(p["channels"]), b.channels]}
            removed += removed_parameters(b, len(p["heads"]), len(p["channels"]))
    before = outcome.params["full"]
    after = min(outcome.params["train_base"], outcome.params["inference"])  # the pruned model's (counted)
    mem, t = outcome.train.get("memory", {}), outcome.train.get("time", {})
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "method": method, "options": options,
        "target_sparsity": sparsity,
        "sparsity": {"groups": groups, "heads_pruned": heads, "params_before": before, "params_after": after,
                     "achieved": 1 - after / before, "block_params_before": block_before,
                     "block_params_after": block_before - removed, "block_achieved": removed / block_before},
        "params": outcome.params,
        "metric": {"name": task.primary_metric, "split": split, "value": outcome.dev[split][task.primary_metric]},
        "dev": outcome.dev,
        "time": {"train_s": t.get("train_s"), "eval_s_pruned": outcome.eval_s["pruned"],
                 "eval_s_full": outcome.eval_s["full"]},
        "memory": {"device": mem.get("device"), "peak_rss_bytes": mem.get("peak_rss_bytes"),
                   "peak_allocated_bytes": mem.get("peak_allocated_bytes"),
                   "train_weights_bytes": outcome.extra.get("weights_bytes", {}).get("train"),
                   "inference_weights_bytes": outcome.extra.get("weights_bytes", {}).get("inference")},
        "train": {k: outcome.train.get(k) for k in ("status", "error", "history", "train_loss", "final")}
        | {"steps": outcome.train.get("total_steps")},
        "extra": {k: v for k, v in outcome.extra.items() if k != "weights_bytes"},
        "config": cfg.resolved(), "model": cfg.model, "task": cfg.task,
        "lorabench_version": __version__, "created_at": now(),
    }


def read_records(folder: str | Path) -> list[dict]:
    """Every prune record of ``folder``, by method, sparsity then seed: the ``details`` of its
    ``kind: prune`` run results (with their status) and the prune-*.json of earlier versions."""
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if data.get("schema") == SCHEMA:
            out.append({**data, "status": "ok", "seed": data.get("config", {}).get("seed", 0)})
        elif data.get("schema") == "lorabench-run" and data.get("kind") == "prune" and isinstance(data.get("details"), dict):
            out.append({**data["details"], "status": data["status"], "seed": data["seed"], "run_id": data["run_id"]})
    return sorted(out, key=lambda r: (r["method"] != "lora", r["method"], r["target_sparsity"], r["seed"]))


def _mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.1f}"


def _s(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"


def prune_table(records: list[dict]) -> Table:
    """Method x sparsity: dev metric, parameters, train time, eval time (pruned / full), memory."""
    rows = []
    for r in records:
        sp, m, t, mem = r["sparsity"], r["metric"], r["time"], r["memory"]
        status = r.get("status", "ok")
        value = f"{100 * m['value']:.2f}" if status == "ok" and m["value"] is not None else f"({status})"
        rows.append([r["method"], status, str(r.get("seed", 0)), f"{r['target_sparsity']:g}",
                     f"{100 * sp['block_achieved']:.1f}",
                     f"{100 * sp['achieved']:.1f}", f"{r['params']['train_base'] / 1e6:.2f}",
                     f"{r['params']['inference'] / 1e6:.2f}", value, _s(t["train_s"]),
                     _s(t["eval_s_pruned"]), _s(t["eval_s_full"]), _mib(mem["train_weights_bytes"]),
                     _mib(mem["inference_weights_bytes"])])
    first = records[0] if records else {"model": "?", "task": "?", "metric": {"split": "?", "name": "?"}}
    return Table(f"Pruning with adapters: {first['model']} / {first['task']}, dev metric vs sparsity",
                 ["method", "status", "seed", "target sparsity", "achieved (blocks) %", "achieved (model) %", "train base M params",
                  "inference M params", f"{first['metric']['split']} {first['metric']['name']}", "train s",
                  "eval s (pruned)", "eval s (full)", "train weights MiB", "inference weights MiB"], rows,
                 note="×100 (a run that did not end ok shows its status, never a number); sparsity: fraction of heads and FFN channels pruned in each pruned layer; achieved: "
                      "1 - parameters after / before over the pruned layers' linear weights (blocks) and the whole "
                      "model; loraprune infers with the pruned model, loram with the full one (adapter recovered); "
                      "weights: fp32 parameter bytes of the model trained (base + adapter) and of the inference model")
