"""``lorabench mixture --tasks sst2,mrpc --method M --out DIR``: one multi-task run, one shared
encoder with a head per task, adapted by one shared LoRA or by routed LoRA experts.

    lorabench mixture --tasks sst2,mrpc --method lora_mixer --experts 4 --k 2 --out runs/mix/lora-mixer
    lorabench mixture --tasks sst2,mrpc --method remix --samples 4 --out runs/mix/remix
    lorabench mixture --tasks sst2,mrpc --method lora --out runs/mix/shared-lora
    lorabench mixture --tasks sst2,mrpc --method lora_mixer --experts-from sst2-adapter mrpc-adapter --out ...
    lorabench mixture --config mix.yaml --epochs 2 --out runs/mix/a       (flags override the file)
    lorabench mixture --table runs/mix                                     (the comparison table only)

Methods: ``lora`` (one LoRA on q,k,v,o shared by all tasks; with one task, the single-task
baseline), ``lora_mixer`` and ``remix`` (``lorabench.mixtures``). Every batch is one task's
(``--sampling proportional`` or ``temperature``). DIR/mixture-<run_id>.json holds the result, one
file per run id, so runs of other methods or settings into one DIR sit side by side and a rerun of
the same config replaces its own file only (``mixtures.store``); DIR/mixture.md holds the tables of
every mixture result in DIR (from the JSONs). ``--table`` reads files and folders (an old
DIR/mixture.json too). Every bad input -- a setting's type or range, an adapter named twice or
holding the same weights as another, adapters of another architecture, an --out that cannot be
written or that is an input -- is refused before compute (exit 2).

mixture-<run_id>.json: schema "lorabench-mixture", schema_version 1, run_id (the first 12 hex digits
of the sha256 of the settings that change the result -- every setting but data_dir and
experts_from, the precision as resolved on this machine, router options with their defaults --
and of ``data``), data {tasks {task: data fingerprint (``data.fingerprint``)}, experts [digest of
each frozen adapter's weights] or null}, status ("ok" or "diverged"), error, method, router (its one-line
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
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from .. import ids, models, outputs, results
from .._version import __version__
from ..choices import PRECISIONS
from ..data.fingerprint import fingerprint_of
from ..data.glue import get_task, locate
from ..errors import ConfigError
from ..mixtures import registry as routers
from ..mixtures import store
from ..mixtures.build import build
from ..mixtures.config import from_mapping, read_yaml
from ..mixtures.frozen import read_experts
from ..mixtures.loop import fit
from ..mixtures.report import compare_table, task_usage_table
from ..tables import to_markdown
from ..training.placement import placement
from .args import positive_int

SCHEMA, SCHEMA_VERSION = store.SCHEMA, store.SCHEMA_VERSION
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
    p.add_argument("--out", metavar="DIR", help="folder for mixture-<run_id>.json (one per run id) and mixture.md "
                                                "(the tables of every mixture result in DIR)")
    p.add_argument("--table", nargs="+", metavar="PATH", help="print the comparison table of these mixture results: "
                                                               "files, or folders (every result in them and their "
                                                               "subfolders); no training. With --out, also write "
                                                               "DIR/table.md")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_mixture)
    return p


def config_from(args: argparse.Namespace):
    values = read_yaml(args.config) if args.config else {}
    values.update({k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None})
    return from_mapping(values, args.config or "the mixture flags").check()


def read_records(paths: list[str]) -> list[dict]:
    """The mixture records of ``paths`` (files or folders; ``store.read_records``)."""
    return store.read_records(paths)


def identity(cfg, experts: tuple | None = None) -> tuple[str, dict]:
    """(run id, data) of a run, known before it computes: the settings that change its result (not
    where the data or the adapters live, the precision as it resolves here, the router's options with
    their defaults, none of a router's for method lora, no temperature for proportional sampling),
    each task's data fingerprint and each frozen adapter's weight digest."""
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data_dir", "experts_from")}
    config["precision"] = placement(cfg.precision)[1]
    if cfg.routed:
        config.update(dataclasses.asdict(routers.get(cfg.method).make_options(cfg.experts, **cfg.router_options())))
    else:
        for key in ("experts", "k", "rsl_weight", "samples"):
            del config[key]
    if cfg.sampling == "proportional":
        del config["temperature"]
    data = {"tasks": {t: fingerprint_of(locate(cfg.data_dir, t), get_task(t)) for t in cfg.tasks},
            "experts": [ex["__digest__"] for ex in experts[2]] if experts else None}
    return ids.run_id(config, data), data


def run_record(cfg, progress: bool, experts: tuple | None = None, run: tuple[str, dict] | None = None) -> dict:
    """Build, train and evaluate one run; the result record (see the module docstring). ``experts``:
    ``read_experts(cfg.experts_from)``, ``run``: ``identity(cfg, experts)`` (both read when not given)."""
    config = dataclasses.asdict(cfg)
    if experts is None and cfg.experts_from:
        experts = read_experts(cfg.experts_from)  # adapters checked before the model loads
    run_id, data = run if run is not None else identity(cfg, experts)
    built = build(cfg, experts, progress=progress)
    summary = fit(built.model, built.train, built.dev, cfg, progress=progress)
    params = {id(p): p for p in built.model.parameters()}
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "run_id": run_id,
            "method": cfg.method, "router": routers.get(cfg.method).description if cfg.routed else None,
            "config": config, "data": data, "targets": built.targets,
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


def cmd_table(paths: list[str], out: str | None) -> int:
    """``--table``: print the comparison table; with --out, also DIR/table.md (never over an input)."""
    if out is not None:
        for target in (Path(out), Path(out) / "table.md"):
            outputs.refuse_overwriting_inputs(target, paths)
        outputs.check_output_folder(out)
    text = tables_md(read_records(paths))
    print(text)
    if out is not None:
        store.write_text(Path(out) / "table.md", text + "\n")
    return 0


def cmd_mixture(args: argparse.Namespace) -> int:
    if args.table:
        return cmd_table(args.table, args.out)
    if not args.out:
        raise ConfigError("--out DIR is required for a run (or pass --table PATH... for a table only)")
    cfg = config_from(args)  # every bad setting fails here, before any model or data loads
    out = Path(args.out)
    inputs = [p for p in (args.config, *cfg.experts_from, cfg.data_dir) if p]
    outputs.refuse_overwriting_inputs(out, inputs)
    outputs.check_output_folder(out)
    experts = read_experts(cfg.experts_from) if cfg.experts_from else None  # the same weights twice: refused
    run = identity(cfg, experts)
    for target in (store.result_path(out, run[0]), out / store.TABLES):
        outputs.refuse_overwriting_inputs(target, inputs)
    if not getattr(args, "debug", False):
        models.quiet_transformers()
    record = run_record(cfg, progress=not args.quiet, experts=experts, run=run)
    path = store.write_result(out, record)  # this run's own file: a rerun replaces it, nothing else
    store.write_text(out / store.TABLES, tables_md(store.folder_records(out)) + "\n")
    print(tables_md([record]))
    print(f"result: {path}")
    print(f"tables of every mixture result in {out}: {out / store.TABLES}")
    if record["status"] != "ok":  # written all the same; the exit code says it is not a result to use
        print(f"error: run {record['status']}: {record['error']}", file=sys.stderr)
        return 1
    return 0
