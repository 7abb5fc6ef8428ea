"""The ``lorabench-transfer`` result: one JSON per transfer run, and its table (computed from the JSON).

transfer.json: schema "lorabench-transfer", schema_version 1, method, task, primary_metric,
source {model, layers, ...}, target {model, layers, ...}, options (the method's Options), counts
(trans_lora: seeds, sampled, generated, kept; organ: organ_parameters, lora_rank, lora_parameters),
arms {name: {status ("ok" | "diverged" | "skipped": not trained, its teacher diverged), error (null or
why), dev {split: {metric: value}} (null unless ok), train {steps, train_s, first_loss, last_loss, status,
error, time, memory, precision} | null, trainable, ...}}, arm_notes {name: what it is}, lorabench_version, created_at.
"""

from __future__ import annotations

from pathlib import Path

from .. import results
from .._version import __version__
from ..tables import Table, to_markdown

SCHEMA, SCHEMA_VERSION = "lorabench-transfer", 1


def finish(record: dict) -> dict:
    """``record`` (a method's run) with the schema, version and time stamped in front."""
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **record, "lorabench_version": __version__,
            "created_at": results.now()}


def table(record: dict) -> Table:
    """Arm x (status, dev primary metric, trainable parameters, train seconds) on the first dev split.
    An arm that is not "ok" (diverged, or skipped because its teacher diverged) shows its status where
    the metric would be, never a number; its error goes in the note."""
    metric = record["primary_metric"]
    rows, problems = [], []
    shared = next((next(iter(a["dev"])) for a in record["arms"].values() if a.get("dev")), "dev")  # the first split
    for name, arm in record["arms"].items():
        status = arm.get("status", "ok")  # records written before arms had a status were all ok
        train = arm.get("train") or {}
        dev = arm.get("dev") or {}
        split = next(iter(dev), shared)
        value = dev[split][metric] if dev else None
        if status != "ok":
            shown = status.upper()
        else:  # a NaN metric is null in the JSON
            shown = f"{100 * value:.2f}" if value is not None else "nan"
        rows.append([name, status, f"{split} {metric}", shown, f"{arm.get('trainable', 0):,}",
                     "" if not train else f"{train['train_s']:.0f}"])
        if status != "ok":
            problems.append(f"{name} {status}: {arm.get('error')}")
    counts = ", ".join(f"{k} {v}" for k, v in record["counts"].items())
    src, tgt = record["source"], record["target"]

    def named(side: dict) -> str:  # "minilm (3 layers)", or just the name when not truncated
        return side["model"] + (f" ({side['layers']} layers)" if side.get("layers") else "")

    title = f"Transfer ({record['method']}, {record['task']}): {named(src)} -> {named(tgt)}"
    return Table(title, ["arm", "status", "metric", "dev (x100)", "trainable", "train s"], rows,
                 note="; ".join([counts, *problems]))


def write(record: dict, out: Path) -> tuple[Path, str]:
    """out/transfer.json (atomically) and out/transfer.md; returns (json path, markdown)."""
    md = to_markdown(table(record))
    out.mkdir(parents=True, exist_ok=True)  # a run whose every arm diverged has written no other file there
    (out / "transfer.md").write_text(md + "\n")
    return results.write_json_atomic(out / "transfer.json", record), md
