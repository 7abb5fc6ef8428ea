"""``lorabench prune --method M... --sparsity S... [run flags]``: LoRA with structured pruning of
attention heads and FFN channels of a BERT-family encoder; one result JSON per (method, sparsity).

    lorabench prune --method lora loraprune loram --sparsity 0.25 0.5 --model minilm --task sst2 \\
        --train-limit 2000 --epochs 1 --max-length 64 --eval-limit 500 --out runs/prune

Methods (``lorabench.pruning``): ``loraprune`` prunes while LoRA trains, from the LoRA factors'
gradients, and removes the pruned groups at the end (LoRAPrune, arXiv 2305.18403); ``loram``
trains LoRA on a pruned copy of the base and evaluates the recovered adapter on the full model
(LoRAM, arXiv 2502.13533); ``lora`` is the unpruned baseline (run once, at sparsity 0). The run
flags are ``lorabench train``'s (model, task, rank, lr, data, ...; variant lora only). LoRA
targets default to every linear layer of each encoder layer.

DIR/prune-<method>-s<sparsity>.json: schema "lorabench-prune" (``lorabench.pruning.record``);
DIR/prune.md: the table of every prune-*.json in DIR (a later call adds its rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import models, results
from ..errors import ConfigError
from ..pruning import job as jobs
from ..pruning import lora, loram, loraprune  # noqa: F401  (register the methods)
from ..pruning import registry as methods
from ..pruning.record import file_name, make_record, prune_table, read_records
from ..tables import to_markdown
from .args import add_config_flags, config_from_args, parse_opts


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("prune", help="LoRA with structured pruning of heads and FFN channels (LoRAPrune, LoRAM)",
                              description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("pruning")
    g.add_argument("--method", nargs="+", required=True, choices=methods.names(),
                   help="; ".join(f"{n}: {methods.get(n).description}" for n in methods.names()))
    g.add_argument("--sparsity", type=float, nargs="+", default=[0.5],
                   help="fraction of heads and FFN channels pruned in each pruned layer, in [0, 1) [0.5]")
    g.add_argument("--prune-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --prune-opt criterion=random (loram), --prune-opt prune_every=5 "
                        "(loraprune: ema, prune_every, warmup, cooldown, initial) (repeatable)")
    g.add_argument("--keep-first", type=int, default=None, metavar="N",
                   help="encoder layers left whole at the start [int(0.1 L), official LoRAPrune]")
    g.add_argument("--keep-last", type=int, default=1, metavar="N", help="... and at the end [1]")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of RunConfig fields (flags override it)")
    add_config_flags(p, exclude=("variant",))
    p.set_defaults(func=cmd_prune)
    return p


def method_options(names: list[str], given: dict) -> dict[str, Any]:
    """{method: its Options} from ``--prune-opt``; a key no chosen method has is an error."""
    known = set().union(*(methods.get(n).option_names() for n in names))
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"--prune-opt {', '.join(unknown)}: no option of {', '.join(names)}; their options: "
                          f"{', '.join(sorted(known)) or '(none)'}")
    return {n: methods.get(n).make_options(**given) for n in names}


def cmd_prune(args: argparse.Namespace) -> int:
    if not getattr(args, "debug", False):
        models.quiet_transformers()
    names = list(dict.fromkeys(methods.get(n).name for n in args.method))
    options = method_options(names, parse_opts(args.prune_opt))
    cfg = config_from_args(args)
    out = Path(cfg.out)
    results.check_writable(out)
    runs = [(n, s) for n in names for s in (args.sparsity if methods.get(n).prunes else [0.0])]
    job = jobs.prepare_job(cfg, [s for _, s in runs], keep_first=args.keep_first, keep_last=args.keep_last)
    for name, sparsity in runs:
        opts = options[name]
        outcome = methods.get(name)().run(job, opts, sparsity)
        record = make_record(name, dict(vars(opts)), sparsity, job, outcome)
        path = results.write_json_atomic(out / file_name(name, sparsity), record)
        m = record["metric"]
        print(f"{name} sparsity {sparsity:g}: {m['split']} {m['name']} {m['value']:.4f}, params "
              f"{record['sparsity']['params_before']:,} -> {record['sparsity']['params_after']:,} ({path})")
    table = to_markdown(prune_table(read_records(out)))
    (out / "prune.md").write_text(table + "\n")
    print(table)
    return 0
