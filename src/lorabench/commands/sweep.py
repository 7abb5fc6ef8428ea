"""``lorabench sweep FILE`` (a grid of runs from a YAML file, resumable) and ``lorabench bench``
(the quick preset, then its report). The override flags are generated from ``RunConfig``: every
field but the sweep's own axes is a flag that applies to every run."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .. import models, trackers
from ..choices import BACKENDS
from ..config import RunConfig
from ..errors import ModelError, SweepError
from ..report import best_table_markdown, write_report
from ..sweep import ray as ray_backend
from ..sweep.dry_run import print_plan
from ..sweep.extend import run_extending
from ..sweep.halving import run_halving, stale_note
from ..sweep.local import run_sweep, write_manifest
from ..sweep.plan import Sweep, data_problems, load_sweep, val_size_problems
from ..sweep.plan import __doc__ as plan_doc
from ..units import format_seconds
from .args import add_config_flags, ints, names, positive_int

#: RunConfig fields that are no override flag: the sweep's axes (``--seeds``; ``--tasks`` and
#: ``--variants`` select blocks of the file), the variant options (grids in the file), and
#: ``quiet`` (run processes are always quiet; ``--quiet`` here silences the sweep).
NOT_OVERRIDES = ("seed", "task", "variant", "options", "kind", "scenario", "quiet")


def add_override_flags(p: argparse.ArgumentParser, config_cls: type = RunConfig) -> None:
    add_config_flags(p, config_cls, exclude=NOT_OVERRIDES, show_defaults=False, default=None)
    g = p.add_argument_group("sweep")
    g.add_argument("--seeds", type=ints, default=None, help="comma-separated seeds for every run, e.g. 0,1,2")
    g.add_argument("--variants", type=names, default=None, help="run only these variant blocks (comma-separated)")
    g.add_argument("--tasks", type=names, default=None, help="run only these tasks (comma-separated)")
    g.add_argument("--pack", type=positive_int, default=None,
                   help="train runs that share a frozen base K at a time in one process (lorabench.pack) "
                        "[the file's pack:, else 1]")
    g.add_argument("--jobs", type=positive_int, default=None,
                   help="run this many processes (runs or packs) at a time, the CPU threads split between them "
                        "[the file's jobs:, else 1]")
    g.add_argument("--halving", type=positive_int, default=None, metavar="ETA",
                   help="successive halving over each method's grid: after each seed keep the best 1/ETA of its "
                        "configurations (on the selection split) for the next [the file's halving:, else off]")
    g.add_argument("--retry-failed", action="store_true", help="rerun runs whose status is not ok")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    g = p.add_argument_group("backend")
    g.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local: one run after another on this machine; ray: one Ray task per run [local]")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join (auto = the one `ray start` made here) [a new local Ray]")
    g.add_argument("--cpus-per-run", type=positive_int, default=1, help="CPUs each Ray task asks for [1]")


def backend_runner(args: argparse.Namespace, sweep: Sweep) -> Callable[..., dict[str, str | None]]:
    """``run_sweep`` or the Ray runner the flags ask for (checked before anything runs). ``sweep``
    holds the file's pack and jobs with the flags' overrides applied (``sweep_from_args``)."""
    backend = getattr(args, "backend", "local")
    if backend == "ray" and sweep.pack > 1:
        raise SweepError("--pack (or the file's pack:) trains packs with the local backend; use pack 1 with "
                         "--backend ray, or the local backend")
    if backend == "ray" and sweep.jobs > 1:
        raise SweepError("--jobs (or the file's jobs:) sets the local backend's processes at a time; Ray schedules "
                         "its own: use --cpus-per-run with --backend ray, or the local backend")
    if backend != "ray":
        if getattr(args, "address", None) is not None:
            raise SweepError("--address only applies to --backend ray; add --backend ray or drop --address")
        return run_sweep
    ray_backend.import_ray()
    return functools.partial(ray_backend.run_sweep_ray, address=args.address, cpus_per_run=args.cpus_per_run)


def sweep_from_args(args: argparse.Namespace, config: str, config_cls: type = RunConfig) -> Sweep:
    """The sweep file (or preset) expanded with the override flags given applied to every run."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
                 if f.name not in NOT_OVERRIDES and getattr(args, f.name, None) is not None}
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if getattr(args, "pack", None) is not None:
        overrides["pack"] = args.pack
    if getattr(args, "jobs", None) is not None:
        overrides["jobs"] = args.jobs
    if getattr(args, "halving", None) is not None:
        overrides["halving"] = args.halving
    sweep = load_sweep(config, overrides, only_variants=args.variants, only_tasks=args.tasks, config_cls=config_cls)
    return group_tracker_runs(sweep)


def group_tracker_runs(sweep: Sweep) -> Sweep:
    """Each run of ``sweep`` logs to a tracker run of its own (``lorabench.trackers``), grouped by the
    sweep's name unless ``tracker_group`` is given. Refused with --pack (a pack logs to no tracker),
    for a tracker that is not installed, and for a group or run name that is no plain folder name
    (``trackers.check_names``), before any run starts. The group is no part of a run id."""
    logged = sorted({r.config.log_with for r in sweep.runs} - {None})
    if logged and sweep.pack > 1:
        raise SweepError(f"--log-with {logged[0]} logs runs that train one per process, and --pack {sweep.pack} "
                         "trains several in one process, which logs to no tracker; drop --pack or --log-with")
    for name in logged:
        trackers.check_installed(name)
    for run in sweep.runs:
        named = run.config.tracker_group is not None
        if not named:
            run.config.tracker_group = sweep.name
        if run.config.log_with is not None:  # the group and the run name become folders of its tracker files
            trackers.check_names(run.config, run.run_id,
                                 "--tracker-group" if named else "sweep name (the tracker group of its runs)")
    return sweep


def run_and_summarise(sweep: Sweep, args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        runner = backend_runner(args, sweep)
        extended: dict[str, str | None] = {}
        if sweep.extend_grid:  # first seed, grids extended while a best lr is at an edge, then the rest
            sweep, extended, bound = run_extending(
                sweep, lambda part: runner(part, retry_failed=args.retry_failed, quiet=args.quiet))
            for line in bound:
                print(f"note: {line}", file=sys.stderr)
        if sweep.halving:
            statuses = run_halving(sweep, runner, retry_failed=args.retry_failed, quiet=args.quiet)
            write_manifest(sweep, statuses)  # every planned run, the pruned ones included
        else:
            statuses = runner(sweep, retry_failed=args.retry_failed, quiet=args.quiet)
        statuses = {**extended, **statuses}
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume ({sweep.out})", file=sys.stderr)
        return 130
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[s or "missing"] = counts.get(s or "missing", 0) + 1
    print(f"sweep {sweep.name}: {len(statuses)} runs, " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f" ({format_seconds(time.perf_counter() - t0)}); results in {sweep.out}")
    if not args.quiet:
        print(best_table_markdown(sweep.out, compare=True))
    note = stale_note(sweep, [rid for rid, s in statuses.items() if s == "pruned"])
    if note:
        print(note, file=sys.stderr)
    return 0 if counts.get("ok", 0) + counts.get("pruned", 0) == len(statuses) else 1


def model_problems(sweep: Sweep) -> list[str]:
    """Why some model of the plan cannot load here (an alias whose package is missing, a folder that
    does not exist), found once per model before any run starts: each run would fail on it and write
    an error result. A transfer run's source and generator are models too; the segment kind's U-Net is
    lorabench's own. Resolving an alias unpacks or converts it once, as the first run would."""
    names = set()
    for cfg in (r.config for r in sweep.runs):
        if cfg.kind == "segment":
            continue
        names.add(cfg.model)
        if cfg.kind == "transfer":
            names |= {cfg.scenario[k] for k in ("source", "generator") if cfg.scenario.get(k)}
    problems = []
    for name in sorted(names, key=str):
        try:
            models.resolve_model(name)
        except ModelError as e:
            problems.append(f"model {name}: {e}")
    return problems


def cmd_sweep(args: argparse.Namespace, sweep: Sweep | None = None) -> int:
    sweep = sweep or sweep_from_args(args, args.config)
    for note in sweep.notes:
        print(f"note: {note}", file=sys.stderr)
    problems = data_problems(sweep)
    problems += val_size_problems(sweep) if not problems else []  # a run would refuse it: refused once, here
    if args.dry_run:
        print_plan(sweep)
        for problem in problems:
            print(f"note: {problem}", file=sys.stderr)
        return 0
    problems = problems or model_problems(sweep)
    if problems:  # before any run process starts and fails on it
        raise SweepError(problems[0])
    return run_and_summarise(sweep, args)


def cmd_bench(args: argparse.Namespace) -> int:
    """The quick preset, then the full report (with HTML) into <out>/report."""
    sweep = sweep_from_args(args, "quick")
    rc = cmd_sweep(args, sweep)
    if not args.dry_run and rc in (0, 1):
        write_report(sweep.out, Path(sweep.out) / "report", html=True, echo=False)
        print(f"report: {Path(sweep.out) / 'report'}")
    return rc


def add_sweep_parser(subparsers: Any, config_cls: type = RunConfig) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="run a grid of runs from a YAML file (resumable)",
                              description=(plan_doc or "").split("\n\n")[0])
    p.add_argument("config", help="sweep YAML file, or a preset name: quick, better-call-lora, lora-roberta-glue, "
                                  "rank-ablation, peft-methods")
    p.add_argument("--dry-run", action="store_true", help="print the expanded runs and a time estimate, run nothing")
    add_override_flags(p, config_cls)
    p.set_defaults(func=cmd_sweep)
    return p


def add_bench_parser(subparsers: Any, config_cls: type = RunConfig) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="run the quick preset (MiniLM on SST-2, 6 methods) and report")
    p.add_argument("--dry-run", action="store_true", help="print the expanded runs and a time estimate, run nothing")
    add_override_flags(p, config_cls)
    p.set_defaults(func=cmd_bench)
    return p
