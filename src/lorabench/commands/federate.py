"""``lorabench federate --method M``: federated LoRA simulated in one process, one JSON per call.

    lorabench federate --method fedavg --config federated-sst2 --out runs/fed/fedavg-b0.5
    lorabench federate --method lora_fair --clients 10 --beta inf --rounds 5 --fraction 0.5 \\
        --model minilm --train-limit 2000 --eval-limit 500 --out runs/fed/lora_fair-iid
    lorabench federate --table runs/fed/*/federated.json --out runs/fed/federated.md   # + rounds-*.png beside it

One GLUE task's training set is split over N clients (Dirichlet(beta) label skew; beta inf:
IID); each of R rounds samples a fraction of them (seeded), each trains E local epochs from the
server's state, and the server aggregates with the method (``lorabench.federated``: fedavg,
ffa_lora, lora_fair, fedsmooth). The classification head is trained by the clients and averaged
with FedAvg in every method. Run flags are ``lorabench train``'s (model, task, r, lr, batch size,
train / eval limits, seed ...); ``--config`` takes a YAML of them with a ``federated:`` mapping
(clients, beta, rounds, local_epochs, fraction, method, options), or a preset name.

A federated run is a run of kind ``federated`` (``lorabench.kinds``): the same as ``lorabench train
--kind federated --scenario method=M ...``, and a sweep block ``{kind: federated, scenario: {...}}``.
OUT/run-<id>.json: the result envelope (``lorabench.results``; id over config and data, so runs
of other methods, seeds or tasks sit side by side and a rerun never replaces another's result)
with the simulation under ``details`` (``federated.recipe``): split {sizes, label_histograms},
rank, scale, head_tensors, initial {metrics}, rounds [{round, clients, sizes, weights, metrics,
bytes_up, bytes_down, aggregation_error, train_loss, time_s, eval_s}], bytes {up, down}, status,
diverged_at. OUT/federated.md: the round and summary tables of every federated run in OUT.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from .. import models, results, run
from ..config import RunConfig
from ..errors import ConfigError
from ..federated import registry as methods
from ..federated.plot import plot_rounds
from ..federated.settings import FedSettings, parse_beta
from ..federated.table import read_records, round_table, summary_table
from ..tables import to_markdown
from ..yamlio import load_yaml
from .args import add_config_flags, parse_opts

#: RunConfig fields a federated run does not take (epochs: --local-epochs; variant: the method's;
#: kind and scenario: this command's own flags; the rest: ``kinds.REFUSES``).
EXCLUDED = ("variant", "epochs", "kind", "scenario", "head", "regularizer", "num_processes", "save_adapter",
            "val_size", "quantize", "memory_budget", "log_with", "logging_dir", "tracker_group", "eval_every",
            "grad_checkpointing")
FED_FIELDS = ("method", "clients", "beta", "rounds", "local_epochs", "fraction", "options")

def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("federate", help="federated LoRA in one process: N clients, R rounds, one aggregation",
                              description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("federated")
    g.add_argument("--method", choices=methods.names(),
                   help="; ".join(f"{n}: {methods.get(n).description}" for n in methods.names()))
    g.add_argument("--clients", type=int, help="N simulated clients [10]")
    g.add_argument("--beta", help="Dirichlet label skew (small: skewed); inf: IID equal random split [inf]")
    g.add_argument("--rounds", type=int, help="R communication rounds [5]")
    g.add_argument("--local-epochs", type=float, dest="local_epochs", help="E local epochs per round [1]")
    g.add_argument("--fraction", type=float, help="share of clients sampled per round, in (0, 1] [1]")
    g.add_argument("--fed-opt", action="append", dest="fed_opt", metavar="KEY=VALUE",
                   help="an option of the method, e.g. --fed-opt lam=0.01 (lora_fair), --fed-opt zeta=1 (fedsmooth)")
    g.add_argument("--table", nargs="+", metavar="JSON", help="only print (and with --out FILE.md write) the tables "
                                                              "of these federated.json files; with --out, also the "
                                                              "round curves (rounds-<model>-<task>.png/.svg) beside it")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML of run settings + a federated: mapping, or a preset "
                                                         "name (federated-sst2)")
    add_config_flags(p, RunConfig, exclude=EXCLUDED)
    p.set_defaults(func=cmd_federate)
    return p


def config_path(name: str) -> Path:
    """A YAML path, or the name of a packaged preset."""
    path = Path(name)
    if path.is_file():
        return path
    preset = Path(str(resources.files("lorabench") / "presets")) / (path.name if path.suffix else f"{path.name}.yaml")
    if path.parent == Path(".") and preset.is_file():
        return preset
    raise ConfigError(f"--config {name!r}: no such file or preset; pass a YAML path or federated-sst2")


def settings_from_args(args: argparse.Namespace) -> tuple[RunConfig, FedSettings]:
    """The run config and the federated settings: the --config file, overridden by the flags given."""
    data = dict(load_yaml(config_path(args.config))) if getattr(args, "config", None) else {}
    fed = dict(data.pop("federated", None) or {})
    unknown = sorted(set(fed) - set(FED_FIELDS))
    if unknown:
        raise ConfigError(f"unknown federated key {', '.join(map(repr, unknown))}; valid: {', '.join(FED_FIELDS)}")
    for key in FED_FIELDS[:-1]:
        if key in vars(args):
            fed[key] = getattr(args, key)
    if getattr(args, "fed_opt", None):
        fed["options"] = {**(fed.get("options") or {}), **parse_opts(args.fed_opt)}
    if "method" not in fed:
        raise ConfigError(f"no federated method; pass --method, one of: {', '.join(methods.names())}")
    if "beta" in fed:
        fed["beta"] = parse_beta(fed["beta"])
    settings = FedSettings(**fed)  # bad N, beta, fraction, rounds, method options: raised here
    names = {f for f in RunConfig.__dataclass_fields__ if f not in EXCLUDED} - {"options"}
    data.update({k: v for k, v in vars(args).items() if k in names})
    if getattr(args, "opt", None):
        data["options"] = {**(data.get("options") or {}), **parse_opts(args.opt)}
    for key in EXCLUDED:
        if key in data:
            raise ConfigError(f"{key} is not a federated run setting ({'--local-epochs' if key == 'epochs' else 'set by the method'}); "
                              "remove it from the config")
    data["kind"], data["scenario"] = "federated", fed  # the variant and epochs follow (``kind_config.resolve``)
    cfg = RunConfig.from_dict(data)
    if cfg.train_limit is not None and settings.clients > cfg.train_limit:
        raise ConfigError(f"--clients {settings.clients} is more than --train-limit {cfg.train_limit} examples: every "
                          f"client needs at least one; use --clients {max(1, cfg.train_limit // 10)} or a larger --train-limit")
    return cfg, settings


def write_tables(records: list[dict], out: Path | None, plot: bool = False) -> str:
    """The round and summary tables (written to ``out`` when given); with ``plot``, also the round
    curves beside ``out`` (rounds-<model>-<task>.png/.svg; one per model and task)."""
    text = to_markdown(round_table(records)) + "\n\n" + to_markdown(summary_table(records)) + "\n"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        if plot:
            groups: dict[tuple[str, str], list[dict]] = {}
            for r in records:
                groups.setdefault((str(r["model"]), str(r["task"])), []).append(r)
            for group in groups.values():
                png, _ = plot_rounds(group, out.parent)
                text += f"round curves: {png}\n"
    return text


def cmd_federate(args: argparse.Namespace) -> int:
    if getattr(args, "table", None):
        out = getattr(args, "out", None)
        if out is not None:
            results.refuse_overwriting_inputs(out, args.table)
        print(write_tables(read_records(args.table), Path(out) if out else None, plot=True), end="")
        return 0
    cfg, _ = settings_from_args(args)
    if not getattr(args, "debug", False):
        models.quiet_transformers()
    out = Path(cfg.out)
    result = run.execute(cfg, progress=not cfg.quiet)  # OUT/run-<id>.json, the kind federated envelope
    print(write_tables(read_records([str(out)]), out / "federated.md"), end="")
    print(f"result: {results.result_path(out, result['run_id'])}")
    if result["status"] != "ok":
        print(f"error: run {result['status']}: {result['error']}", file=sys.stderr)
        return 1
    return 0


