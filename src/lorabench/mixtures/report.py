"""Tables of mixture runs, computed from their ``mixture.json`` records only."""

from __future__ import annotations

from ..tables import Table


def label(record: dict) -> str:
    c = record["config"]
    if record["method"] == "lora":
        kind = "single-task LoRA" if len(c["tasks"]) == 1 else "shared LoRA"
        return f"{kind} (r={c['r']})"
    frozen = ", frozen experts" if c.get("experts_from") else ""
    return f"{record['method']} (E={c['experts']}, k={c['k']}, r={c['r']}{frozen})"


def primary(record: dict, task: str) -> float | None:
    t = record["tasks"].get(task)
    if t is None:
        return None
    split = next(iter(t["dev"]))
    return t["dev"][split][t["primary_metric"]]


def compare_table(records: list[dict]) -> Table:
    """One row per run: each task's primary dev metric (x100), their mean over the run's tasks,
    trainable parameters and the expert-usage balance of the final evaluation."""
    tasks: list[str] = []
    for r in records:
        tasks += [t for t in r["tasks"] if t not in tasks]
    rows = []
    for r in records:
        status = r.get("status", "ok")
        values = [primary(r, t) if status == "ok" else None for t in tasks]  # a failed run shows no number
        own = [v for v in values if v is not None]
        u = (r.get("usage") or {}).get("overall") if status == "ok" else None
        shown = [f"{100 * v:.2f}" if v is not None else ("" if status == "ok" else f"({status})") for v in values]
        rows.append([label(r), status, *shown,
                     f"{100 * sum(own) / len(own):.2f}" if own else "", f"{r['trainable_params']:,}",
                     f"{u['entropy']:.3f}" if u else "", f"{u['cv']:.3f}" if u else "",
                     f"{u['ess']:.2f}" if u else "", " ".join(f"{f:.2f}" for f in u["fraction"]) if u else ""])
    metric = {t: records[[t in r["tasks"] for r in records].index(True)]["tasks"][t]["primary_metric"] for t in tasks}
    return Table("Multi-task LoRA mixtures: dev metric per task",
                 ["run", "status", *[f"{t} {metric[t]}" for t in tasks], "mean", "trainable",
                  "usage entropy", "usage CV", "ESS", "expert fractions"], rows,
                 note="×100, first dev split (a run that did not end ok shows its status, never a number); usage over the dev tokens of all tasks and blocks: entropy / log E "
                      "(1 = balanced), CV of the per-expert fractions (0 = balanced), ESS = mean 1/sum g^2 "
                      "(effective experts per token)")


def task_usage_table(record: dict) -> Table | None:
    """Per task: the fraction of token-slots each expert took (specialisation by task)."""
    usage = record.get("usage")
    if not usage:
        return None
    rows = [[t, f"{u['entropy']:.3f}", f"{u['ess']:.2f}", *[f"{f:.3f}" for f in u["fraction"]]]
            for t, u in usage["per_task"].items()]
    E = len(usage["overall"]["fraction"])
    return Table(f"Expert usage per task ({label(record)})", ["task", "entropy", "ESS", *[f"e{e}" for e in range(E)]],
                 rows, note="fraction of the dev tokens' routed slots taken by each expert, pooled over blocks")
