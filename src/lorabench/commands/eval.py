"""``lorabench eval ADAPTER_DIR... --task T``: many saved adapters of one base, one pass over the dev set.

    lorabench eval runs/quick/run-*-adapter --task sst2
    lorabench eval a/ b/ c/ --task rte --data-dir glue_data --json rte-dev.json

Each adapter is checked against the base before any example is read (``lorabench.pack.eval``).
One row per adapter: its variant, options and every metric of each dev split. A PEFT adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``, trained elsewhere) sits beside ours in the
same table: ``lorabench.load_peft`` reads it (``--model``/``--layers`` name its base if it does not).
``lorabench report`` reads result JSONs only; this table (and ``--json``) is where PEFT adapters join.

An adapter whose run recorded another task than ``--task`` is refused (its head was trained for that
task); ``--cross-task`` evaluates it anyway and marks its row "(trained on T)". ``--json FILE`` is
checked before the evaluation: never one of the adapter folders or a file inside one, and its folder
must be writable (a missing folder is created, as ``--out`` folders are).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .. import models
from ..outputs import check_output_file
from ..pack.eval import evaluate_adapters
from ..tables import Table, to_markdown
from .args import positive_int


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate saved adapters of one base model in one pass",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("adapters", nargs="+", help="adapter folders: lorabench's (lorabench_adapter.json) or PEFT's "
                                               "(adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--task", required=True, help="GLUE task whose dev set to read, e.g. sst2")
    p.add_argument("--model", default=None, help="base model (alias, hub id or folder) [the one the adapters name]")
    p.add_argument("--layers", type=positive_int, default=None,
                   help="keep the first N layers of the base of a PEFT adapter (PEFT records no depth) [all]")
    p.add_argument("--data-dir", default=None, help="GLUE folder [as lorabench train finds it]")
    p.add_argument("--eval-limit", type=positive_int, default=None, help="evaluate on N dev examples [all]")
    p.add_argument("--max-length", type=positive_int, default=128, help="maximum tokens per example [128]")
    p.add_argument("--batch-size", type=positive_int, default=32, help="dev examples per batch [32]")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON to FILE (its folder "
                                                                "is created; never inside an adapter folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cross-task", action="store_true",
                   help="evaluate adapters whose run recorded another task than --task (rows marked) [refused]")
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    if args.json:  # before any compute: never an input, and a folder it can be written in
        check_output_file(args.json, inputs=args.adapters, flag="--json")
    if not args.debug:
        models.quiet_transformers()
    rows = evaluate_adapters(args.adapters, args.task, model=args.model, layers=args.layers, data_dir=args.data_dir,
                             eval_limit=args.eval_limit, max_length=args.max_length, batch_size=args.batch_size,
                             cross_task=args.cross_task, progress=not args.quiet)
    cols = [(split, name) for split, m in rows[0]["metrics"].items() for name in m]
    table = Table(f"Dev metrics ({args.task}, {len(rows)} adapters)",
                  ["adapter", "variant", "options", *(f"{s} {n}" for s, n in cols)],
                  [[r["adapter"], r["variant"] + (" (PEFT)" if r["peft"] else "" if r["packed"] else " (alone)")
                    + (f" (trained on {r['trained_task']})" if r["cross_task"] else ""),
                    " ".join(f"{k}={v}" for k, v in r["options"].items() if k in ("r", "alpha", "init", "optimizer")),
                    *(f"{100 * r['metrics'][s][n]:.2f}" for s, n in cols)] for r in rows],
                  note="×100; adapters marked (alone) are of a variant that does not pack, (PEFT) PEFT folders read by "
                       "lorabench.load_peft; both ran on their own model"
                       + ("; (trained on T): an adapter of task T scored with its own head (--cross-task)"
                          if any(r["cross_task"] for r in rows) else ""))
    print(to_markdown(table))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # the folder checked writable above
        Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"rows: {args.json}")
    return 0
