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

Each (method, sparsity) is a run of kind ``prune`` (``lorabench.kinds``; the same as ``lorabench
train --kind prune --scenario method=M --scenario sparsity=S``, or a sweep block ``{kind: prune,
scenario: {...}}``): DIR/run-<id>.json is its result envelope (``lorabench.results``; the id covers
config and data, so runs on other tasks or seeds never replace each other), with the pruning record
(``lorabench.pruning.record``) under ``details``. DIR/prune.md: the table of every prune run in DIR
(a later call adds its rows), with each run's status.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import results, run
from ..config import RunConfig
from ..errors import ConfigError
from ..pruning import lora, loram, loraprune  # noqa: F401  (register the methods)
from ..pruning import registry as methods
from ..pruning.record import prune_table, read_records
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
    add_config_flags(p, exclude=("variant", "kind", "scenario"))
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


def run_configs(args: argparse.Namespace) -> list[RunConfig]:
    """One ``kind: prune`` config per (method, sparsity), every one validated before any training;
    a sparsity given twice is one run."""
    names = list(dict.fromkeys(methods.get(n).name for n in args.method))
    given = parse_opts(args.prune_opt)
    method_options(names, given)  # an option no chosen method has: refused here
    cfg = config_from_args(args)
    sparsities = list(dict.fromkeys(float(s) for s in args.sparsity))
    configs = []
    for name in names:
        own = {k: v for k, v in given.items() if k in methods.get(name).option_names()}
        for sparsity in (sparsities if methods.get(name).prunes else [0.0]):
            scenario = {"method": name, "sparsity": sparsity, "keep_first": args.keep_first,
                        "keep_last": args.keep_last, "options": own}
            configs.append(RunConfig.from_dict({**cfg.to_dict(), "kind": "prune", "scenario": scenario}))
    return configs


def cmd_prune(args: argparse.Namespace) -> int:
    configs = run_configs(args)
    out = Path(configs[0].out)

    def line(cfg: RunConfig, result: dict[str, Any]) -> str:
        s, d = cfg.scenario, result.get("details") or {}
        value = results.metric_of(result, "final")[0]
        shown = f"{value:.4f}" if result["status"] == "ok" and value is not None else result["status"]
        sizes = d.get("sparsity", {})
        return (f"{s['method']} sparsity {s['sparsity']:g}: {result['primary_metric']} {shown}, params "
                f"{sizes.get('params_before', 0):,} -> {sizes.get('params_after', 0):,}")

    failed = run.execute_each(configs, line, debug=getattr(args, "debug", False))
    table = to_markdown(prune_table(read_records(out)))
    (out / "prune.md").write_text(table + "\n")
    print(table)
    return 1 if failed else 0
