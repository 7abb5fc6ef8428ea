"""``lorabench mixture --tasks sst2,mrpc --method M --out DIR``: one multi-task run, one shared
encoder with a head per task, adapted by one shared LoRA or by routed LoRA experts.

    lorabench mixture --tasks sst2,mrpc --method lora_mixer --experts 4 --k 2 --out runs/mix/lora-mixer
    lorabench mixture --tasks sst2,mrpc --method remix --samples 4 --out runs/mix/remix
    lorabench mixture --tasks sst2,mrpc --method lora --out runs/mix/shared-lora
    lorabench mixture --tasks sst2,mrpc --method lora_mixer --experts-from sst2-adapter mrpc-adapter --out ...
    lorabench mixture --config mix.yaml --epochs 2 --out runs/mix/a       (flags override the file)
    lorabench mixture --table runs/mix/*/mixture.json                     (the comparison table only)

Methods: ``lora`` (one LoRA on q,k,v,o shared by all tasks; with one task, the single-task
baseline), ``lora_mixer`` and ``remix`` (``lorabench.mixtures``). Every batch is one task's
(``--sampling proportional`` or ``temperature``). DIR/mixture.json holds the result, DIR/mixture.md
its tables (from the JSON).

mixture.json: schema "lorabench-mixture", schema_version 1, run_id, status ("ok" or "diverged"),
error, method, router (its one-line
description, null for lora), config (every setting), targets (adapted layers), tasks {task:
{primary_metric, dev {split: {metric: value}}, train_batches}}, history [{epoch, step, train_loss,
tasks}], usage (null for lora; else {overall, per_task, per_block}, each {fraction, entropy, cv,
weight, ess, tokens}: see ``mixtures.usage``), trainable_params, total_params, train_s, steps,
time {train_s (evaluation excluded), eval_s, examples, tokens, rates}, memory (peaks),
lorabench_version, created_at. A diverged run's dev metrics are null and its table row shows its
status; a mixture is not yet a result envelope (``report`` does not read it).
"""

from __future__ import annotations

import argparse
import sys
import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from .. import models, results
from .._version import __version__
from ..choices import PRECISIONS
from ..errors import ConfigError
from ..mixtures import registry as routers
from ..mixtures.build import build
from ..mixtures.config import from_mapping, read_yaml
from ..mixtures.frozen import read_experts
from ..mixtures.loop import fit
from ..mixtures.report import compare_table, task_usage_table
from ..tables import to_markdown
from .args import positive_int

SCHEMA, SCHEMA_VERSION = "lorabench-mixture", 1
#: flag dest -> config field, for the flags a user may set (None: not given, the file's or default).
FLAGS = ("tasks", "method", "model", "layers", "targets", "experts", "k", "r", "alpha", "rsl_weight", "samples",
         "experts_from", "sampling", "temperature", "train_limit", "eval_limit", "max_length", "batch_size", "lr",
         "weight_decay", "epochs", "seed", "data_dir", "precision")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("mixture", help="multi-task run with a shared LoRA or routed LoRA experts "
                                              "(LoRA-Mixer, ReMix); per-task metrics and expert usage",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--config", metavar="YAML", help="a mixture config file (settings as the flags, e.g. tasks: [sst2, mrpc])")
    p.add_argument("--tasks", type=_csv, help="GLUE tasks, comma-separated, e.g. sst2,mrpc")
    p.add_argument("--method", help=f"lora (one shared LoRA); {'; '.join(f'{n}: {routers.get(n).description}' for n in routers.names())} [lora_mixer]")
    p.add_argument("--model", help="backbone alias, folder or hub id [minilm]")
    p.add_argument("--layers", type=positive_int, help="keep the first N transformer layers [all]")
    p.add_argument("--targets", type=_csv, help="layer-name suffixes to adapt [the attention's q,k,v,o]")
    p.add_argument("--experts", type=positive_int, help="LoRA experts per adapted layer [4]")
    p.add_argument("--k", type=positive_int, help="experts per token [2]")
    p.add_argument("--r", type=positive_int, help="rank of each LoRA (expert) [8]")
    p.add_argument("--alpha", type=float, help="LoRA scale alpha / r [16]")
    p.add_argument("--rsl-weight", type=float, help="lora_mixer: weight lambda of the routing specialization loss [0.01]")
    p.add_argument("--samples", type=positive_int, help="remix: sampled selections per example for RLOO [4]")
    p.add_argument("--experts-from", nargs="+", metavar="ADAPTER_DIR",
                   help="frozen LoRA adapters (lorabench train --save-adapter) as the experts; only the router trains")
    p.add_argument("--sampling", choices=("proportional", "temperature"), help="task of each batch [proportional]")
    p.add_argument("--temperature", type=float, help="temperature sampling: p_t ~ n_t^(1/T) [2]")
    p.add_argument("--train-limit", type=positive_int, help="N training examples per task [all]")
    p.add_argument("--eval-limit", type=positive_int, help="N dev examples per task [all]")
    p.add_argument("--max-length", type=positive_int, help="tokens per example [128]")
    p.add_argument("--batch-size", type=positive_int, help="examples per batch [32]")
    p.add_argument("--lr", type=float, help="AdamW peak learning rate [5e-4]")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay [0]")
    p.add_argument("--epochs", type=positive_int, help="passes over every task's training set [1]")
    p.add_argument("--seed", type=int, help="seed of data order, init and routing draws [0]")
    p.add_argument("--data-dir", help="GLUE folder [as lorabench train finds it]")
    p.add_argument("--precision", choices=PRECISIONS, help="autocast of every forward, training and evaluation: "
                                                            "auto is bf16 on a GPU that has it, else fp32 [auto]")
    p.add_argument("--out", metavar="DIR", help="folder for mixture.json and mixture.md")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the comparison table of these mixture.json "
                                                               "files (no training); with --out, also write DIR/table.md")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_mixture)
    return p


def config_from(args: argparse.Namespace):
    values = read_yaml(args.config) if args.config else {}
    values.update({k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None})
    return from_mapping(values, args.config or "the mixture flags").check()


def read_records(paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {path} ({e}); pass mixture.json files written by lorabench mixture") from None
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            raise ConfigError(f"{path} is not a {SCHEMA} result; pass mixture.json files written by lorabench mixture")
        out.append(record)
    return out


def run_record(cfg, progress: bool) -> dict:
    """Build, train and evaluate one run; the result record (see the module docstring)."""
    config = dataclasses.asdict(cfg)
    experts = read_experts(cfg.experts_from) if cfg.experts_from else None  # adapters checked before the model loads
    built = build(cfg, experts, progress=progress)
    summary = fit(built.model, built.train, built.dev, cfg, progress=progress)
    params = {id(p): p for p in built.model.parameters()}
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "run_id": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12],
            "method": cfg.method, "router": routers.get(cfg.method).description if cfg.routed else None,
            "config": config, "targets": built.targets,
            "status": summary["status"], "error": summary["error"],
            # a diverged run has no dev metric: NaN (null in the JSON, "nan" in the table), never a number
            "tasks": {t: {"primary_metric": built.model.specs[t].primary_metric,
                          "dev": summary["final"][t] if summary["status"] == "ok" else
                          {split: {built.model.specs[t].primary_metric: math.nan} for split in built.dev[t]},
                          "train_batches": built.train.sizes[t]} for t in cfg.tasks},
            "history": summary["history"], "usage": summary["usage"],
            "trainable_params": sum(p.numel() for p in params.values() if p.requires_grad),
            "total_params": sum(p.numel() for p in params.values()),
            "train_s": summary["train_s"], "steps": summary["steps"], "time": summary["time"],
            "memory": summary["memory"],
            "lorabench_version": __version__, "created_at": results.now()}


def tables_md(records: list[dict]) -> str:
    parts = [to_markdown(compare_table(records))]
    parts += [to_markdown(t) for r in records if (t := task_usage_table(r)) is not None]
    return "\n\n".join(parts)


def cmd_mixture(args: argparse.Namespace) -> int:
    if args.table:
        text = tables_md(read_records(args.table))
        print(text)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "table.md").write_text(text + "\n")
        return 0
    if not args.out:
        raise ConfigError("--out DIR is required for a run (or pass --table JSON... for a table only)")
    cfg = config_from(args)  # every bad setting fails here, before any model or data loads
    out = Path(args.out)
    results.check_writable(out)
    if not getattr(args, "debug", False):
        models.quiet_transformers()
    record = run_record(cfg, progress=not args.quiet)
    results.write_json_atomic(out / "mixture.json", record)
    text = tables_md([record])
    (out / "mixture.md").write_text(text + "\n")
    print(text)
    print(f"result: {out / 'mixture.json'}")
    if record["status"] != "ok":  # written all the same; the exit code says it is not a result to use
        print(f"error: run {record['status']}: {record['error']}", file=sys.stderr)
        return 1
    return 0
