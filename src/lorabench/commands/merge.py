"""``lorabench merge ADAPTER_DIR... --method M --out DIR``: merge adapters of one base trained on different
tasks into one, then evaluate every task under it.

    lorabench merge runs/merge-glue/run-*-adapter --method ties --density 0.2 --out merged/ties
    lorabench merge a-adapter b-adapter --method linear --weights 0.7 0.3 --out merged/linear --no-eval

The merged update is shared; each task keeps its own head. DIR/<task>/ is a complete lorabench
adapter (``lorabench.load_adapter``) per source task: the merged factors with that task's head.
Each task is then evaluated on its dev set (one pass, ``lorabench.pack.eval``) three ways:
its own adapter (the single-task upper bound), the merged adapter, and no adapter (the base with
the task's own head, no update: the lower bound). DIR/merge.json holds the result (schema
below), DIR/merge.md the printed task table; one call is one method, so a method x task table is
the merge-glue recipe of docs/guide/merging.md (one call per method).

merge.json: schema "lorabench-merge", schema_version 1, key (a 16-hex hash of what made the merge:
method, options, each source's content and folder), method, options (weights, rank, and the
density / k / seed the method reads), variant "lora", rank, sources [{adapter, folder, task, run_id,
variant, options, weight}], adapters {folder: path}, eval {eval_limit, max_length, batch_size,
data_dir} (null with --no-eval), tasks {folder: {task, primary_metric, own, merged, no_adapter}}
(each {split: {metric: value}}; absent with --no-eval), lorabench_version, created_at. It is first
written right after the adapters (eval null), then again with the evaluation.

One --out holds one merge. Rule: DIR must be new or empty, or hold only the files of this very
merge (a merge.json with the same key, its task folders and merge.md), which are then rewritten;
anything else is refused (exit 2) before any compute. We chose refusing over a subfolder per merge
(DIR/<hash>/) because DIR/<task>/ and DIR/merge.json are the documented layout that the guide's
merge-glue recipe and scripts read, a hash-named folder would make every result harder to find,
and a refused call costs nothing (it is checked before compute). Re-running the same merge (e.g.
with evaluation after --no-eval) stays possible. Every check runs before anything is written:
the flags (non-finite --weights), --out (writable, not an input, holding no other merge), the
adapters (each once: one folder twice, or two copies of one adapter, would count its update twice;
the task each run JSON names is one plain folder name, outputs.safe_name) and, unless --no-eval,
every task's dev data.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import models, results
from .._version import __version__
from ..data import get_task
from ..data.glue import resolve_source
from ..merging import registry as methods
from ..merging.merge import Merged, Source, compute, plan_merge
from ..merging.write import RECORD, TABLE, check_out, task_folders, write_adapter, write_merged
from ..outputs import check_output_folder, refuse_overwriting_inputs
from ..pack.eval import evaluate_adapters
from ..tables import Table, to_markdown
from .args import positive_int


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("merge", help="merge adapters of one base trained on different tasks; evaluate each task",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("adapters", nargs="+", help="run-<id>-adapter folders (lorabench train --save-adapter), each with "
                                               "its run-<id>.json beside it")
    p.add_argument("--method", required=True, choices=methods.names(),
                   help="; ".join(f"{n}: {methods.get(n).description}" for n in methods.names()))
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one weight per adapter [linear: 1/N each; the others: 1 each]")
    p.add_argument("--density", type=float, default=None, help="ties, dare: fraction of each update's entries kept "
                                                               "[ties 0.2, dare 0.1]")
    p.add_argument("--k", type=positive_int, default=None,
                   help="ties, dare, lego: the merged rank [the largest rank of the adapters]")
    p.add_argument("--seed", type=int, default=None, help="dare, lego: seed of the drop masks / k-means [0]")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for DIR/<task>/ adapters and merge.json")
    p.add_argument("--no-eval", action="store_true", help="only write the merged adapters")
    p.add_argument("--data-dir", default=None, help="GLUE folder [the runs' own, else as lorabench train finds it]")
    p.add_argument("--eval-limit", type=positive_int, default=None, help="evaluate on N dev examples per task [all]")
    p.add_argument("--max-length", type=positive_int, default=None, help="tokens per example [each run's own]")
    p.add_argument("--batch-size", type=positive_int, default=32, help="dev examples per batch [32]")
    p.set_defaults(func=cmd_merge)
    return p


def _data_dir(args: argparse.Namespace, source: Source) -> str | None:
    if args.data_dir is not None:
        return args.data_dir
    own = (source.result.get("config") or {}).get("data_dir")
    return own if isinstance(own, str) and Path(own).is_dir() else None


def check_data(merged: Merged, args: argparse.Namespace, out: Path) -> None:
    """Every task is a GLUE task whose dev files are there and read, and --out is not in its data."""
    for s in merged.sources:
        spec = get_task(s.task)
        source = resolve_source(_data_dir(args, s), task=spec)
        if source.kind == "folder":
            refuse_overwriting_inputs(out, [source.path])
            for split in spec.dev_splits:
                source.load(spec, split)


def evaluate_tasks(merged: Merged, folders: dict[str, Path], args: argparse.Namespace) -> dict[str, dict]:
    """{folder: {task, primary_metric, own, merged, no_adapter}}: each task in one pass over its dev set."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="lorabench-merge-") as tmp:
        for (name, folder), s in zip(folders.items(), merged.sources):
            zero = {layer: (torch.zeros(B.shape[0], 1), torch.zeros(1, A.shape[1])) for layer, (B, A) in s.factors.items()}
            base = write_adapter(Path(tmp) / name, s, zero, 1)  # the task's own head, no update
            max_length = args.max_length or (s.result.get("config") or {}).get("max_length") or 128
            own, mixed, none = evaluate_adapters([s.directory, folder, base], s.task, data_dir=_data_dir(args, s),
                                                 eval_limit=args.eval_limit, max_length=max_length,
                                                 batch_size=args.batch_size)
            out[name] = {"task": s.task, "primary_metric": get_task(s.task).primary_metric, "own": own["metrics"],
                         "merged": mixed["metrics"], "no_adapter": none["metrics"]}
    return out


def task_table(record: dict) -> Table:
    """Task x {own, merged, no adapter} on each task's first dev split, primary metric."""
    rows = []
    for name, t in record["tasks"].items():
        split = next(iter(t["own"]))
        own, mixed, none = (t[k][split][t["primary_metric"]] for k in ("own", "merged", "no_adapter"))
        rows.append([name, f"{split} {t['primary_metric']}", f"{100 * own:.2f}", f"{100 * mixed:.2f}",
                     f"{100 * none:.2f}", f"{100 * (mixed - own):+.2f}"])
    opts = " ".join(f"{k}={v}" for k, v in record["options"].items() if k != "weights")
    return Table(f"Merged adapter ({record['method']}, {opts}) vs each task's own", ["task", "metric",
                 "own adapter (upper)", "merged", "no adapter (lower)", "merged - own"], rows,
                 note="×100; own: the task's single-task adapter; no adapter: the base with the task's own head")


def cmd_merge(args: argparse.Namespace) -> int:
    if not args.debug:
        models.quiet_transformers()
    out = Path(args.out)
    refuse_overwriting_inputs(out, [*args.adapters, *([args.data_dir] if args.data_dir else [])])
    check_output_folder(out)
    merged = plan_merge(args.adapters, args.method, weights=args.weights, density=args.density, k=args.k,
                        seed=args.seed)  # every check of the flags and adapters; nothing computed yet
    names = task_folders(merged.sources)
    key = merged.key(names)
    if not args.no_eval:
        check_data(merged, args, out)
    check_out(out, key, names)
    compute(merged)
    folders = write_merged(merged, out)
    record = {"schema": "lorabench-merge", "schema_version": 1, "key": key, "method": merged.method,
              "options": merged.options(), "variant": "lora", "rank": merged.rank,
              "sources": [{"adapter": str(s.directory), "folder": name, "task": s.task, "run_id": s.result.get("run_id"),
                           "variant": s.config["variant"], "options": s.config["options"], "weight": w}
                          for name, s, w in zip(folders, merged.sources, merged.weights)],
              "adapters": {name: str(path) for name, path in folders.items()},
              "eval": None, "lorabench_version": __version__, "created_at": results.now()}
    (out / TABLE).unlink(missing_ok=True)  # a re-run's: this run writes its own, or none
    results.write_json_atomic(out / RECORD, record)  # the adapters just written, listed before evaluating
    print(f"merged {len(merged.sources)} adapters ({merged.method}, rank {merged.rank}): {out}/<task>/")
    if not args.no_eval:
        record["eval"] = {"eval_limit": args.eval_limit, "max_length": args.max_length, "batch_size": args.batch_size,
                          "data_dir": args.data_dir}
        record["tasks"] = evaluate_tasks(merged, folders, args)
        table = to_markdown(task_table(record))
        print(table)
        (out / TABLE).write_text(table + "\n")
        results.write_json_atomic(out / RECORD, record)
    print(f"result: {out / RECORD}")
    return 0
