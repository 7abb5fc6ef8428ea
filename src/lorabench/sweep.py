"""Sweeps: a grid of runs described by one YAML file, expanded and validated up front.

    name: quick                        # optional; default: the file name. Default out dir: runs/<name>
    description: ...                   # optional free text
    base: {model: minilm, train_limit: 2000, epochs: 1, max_length: 64}    # any RunConfig field
    models: [minilm]                   # optional axes: each list replaces base.model / task / seed
    tasks: [sst2]
    seeds: [0, 1]
    task_overrides:                    # optional: RunConfig fields per task (plain values, no grids)
      sst2: {epochs: 60, lr: 5.0e-4}
    variants:                          # one block per method; every list in a block is a grid
      lora:      {lr: [5e-4, 1e-3], r: [8]}
      dora:      {lr: [5e-4, 1e-3]}
      lora_plus: {lr: [2e-4], options: {lr_ratio: [4, 16]}}
      qlora:     {optional: true, lr: [2e-4]}   # skipped with a warning unless registered

Rules. Under ``variants`` every YAML list is a grid and its items are the candidate values
(so a list-valued field needs a list of lists: ``targets: [[query, value], all-linear]``); a
scalar is a one-value grid; ``options`` holds one grid per variant option. ``base`` and
``task_overrides`` hold plain values. Precedence, lowest first: RunConfig defaults < base <
task_overrides[task] < the variant grid point < CLI flags. ``optional: true`` skips a block with a
warning when its variant is not registered or its runs do not validate. Unknown keys at any level
and empty grids are errors, and every expanded run goes through ``RunConfig.from_dict`` before
anything runs. Order: seed, model, task, variant, grid point -- a sweep stopped half-way already
has every configuration at the first seed. ``seed`` cannot be a grid: every configuration gets
the same seeds, which the report's paired test across seeds relies on. Relative ``data_dir`` and
``out`` written in a sweep file are relative to that file's folder (so a sweep file travels with
its data); those given as flags are relative to the working directory. ``data_dir`` must be an
existing folder, checked before anything runs.

Each run executes in a fresh subprocess (``python -c`` calling ``run.execute``) so no state
leaks between runs; it writes ``run-<id>.json`` atomically (id = hash of the resolved config),
its log goes to ``logs/run-<id>.log`` and its resolved config to ``configs/run-<id>.yaml``
(``lorabench train --config`` reruns it alone). A rerun skips runs whose result exists;
``--retry-failed`` reruns those whose status is not ok. A run that dies without a result gets an
``error`` result written by the sweep -- only while the sweep itself is alive: a child dies with
its parent (PR_SET_PDEATHSIG on Linux plus a watchdog thread) and a SIGKILLed sweep writes
nothing. ``sweep.json`` (atomic) lists the planned run ids. A lock file keeps two sweeps out of
one folder. ``--backend ray`` runs each run as a Ray task with the same per-run function
(``run_one``) and the same resume rules (``sweep_ray.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import results
from .config import ConfigError, RunConfig

TOP_KEYS = ("name", "description", "base", "models", "tasks", "seeds", "task_overrides", "variants")
BLOCK_META_KEYS = ("optional",)
NOT_IN_GRID = ("seed", "model", "task", "variant", "out")  # the sweep's own axes and its folder
LOG_TAIL = 2000  # characters of a dead run's log kept in its error result


class SweepError(ConfigError):
    """A sweep file or sweep flag is wrong (bad input: exit code 2); the message names the fix."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``5e-4`` as a string; sweep files are full of such learning rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: str | os.PathLike) -> Any:
    try:
        return yaml.load(Path(path).read_text(), Loader=_Loader)
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML ({e}); fix the file") from None


# --------------------------------------------------------------------------- presets


def presets_dir() -> Path:
    """The YAML presets shipped inside the package (``configs/`` in the repo links here)."""
    return Path(str(resources.files("lorabench") / "presets"))


def find_sweep_file(name: str | os.PathLike) -> Path:
    """A path, or the name of a preset (``quick`` / ``quick.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = presets_dir() / (path.name if path.suffix else f"{path.name}.yaml")
    if preset.is_file() and path.parent == Path("."):
        return preset
    known = ", ".join(sorted(p.stem for p in presets_dir().glob("*.yaml")))
    raise SweepError(f"sweep file {str(name)!r} not found; pass a YAML path or a preset name ({known})")


# --------------------------------------------------------------------------- plan


@dataclass
class PlannedRun:
    run_id: str
    config: Any  # RunConfig
    hyper: dict  # the grid point: field -> value (options flattened as their names)

    def describe(self) -> str:
        c = self.config
        shown = {"lr": c.lr} | self.hyper  # the learning rate always, then the grid point
        hyper = " ".join(f"{k}={_short(v)}" for k, v in shown.items())
        return f"{self.run_id}  {c.model}  {c.task}  {c.variant}  {hyper}  seed={c.seed}"


@dataclass
class Sweep:
    name: str
    runs: list[PlannedRun]
    source: str = ""
    out: str = ""
    notes: list[str] = field(default_factory=list)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def _check_keys(where: str, mapping: Any, valid: list[str] | tuple[str, ...]) -> dict:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise SweepError(f"{where} must be a mapping of key: value, got {type(mapping).__name__}")
    for key in mapping:
        if key not in valid:
            raise SweepError(f"{where}: unknown key {key!r}; valid keys: {', '.join(valid)}")
    return mapping


def _axis(where: str, value: Any) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SweepError(f"{where} is an empty list; give at least one value or remove the key")
    return values


def _task_key(name: Any) -> str:
    try:
        from .data import get_task

        return get_task(str(name)).name
    except Exception:  # an unknown task is reported by RunConfig.from_dict with the task list
        return str(name).strip().lower().replace("-", "").replace("_", "")


def _grid_axes(where: str, block: dict) -> list[tuple[tuple[str, ...], list]]:
    """[(path, candidates)] where path is (field,) or ("options", name)."""
    axes = []
    for key, value in block.items():
        if key in BLOCK_META_KEYS:
            continue
        if key == "options":
            opts = _check_keys(f"{where}.options", value, list(value or {}))
            axes += [(("options", k), _axis(f"{where}.options.{k}", v)) for k, v in opts.items()]
        else:
            axes.append(((key,), _axis(f"{where}.{key}", value)))
    return axes


def plan(spec: Any, overrides: dict | None = None, *, name: str = "sweep", out: str | None = None,
         only_variants: list[str] | None = None, only_tasks: list[str] | None = None) -> Sweep:
    """Expand a parsed sweep file into validated runs. ``overrides`` (CLI flags) beat everything."""
    fields = [f.name for f in dataclasses.fields(RunConfig)]
    spec = _check_keys("sweep file", spec, TOP_KEYS)
    name = str(spec.get("name") or name)
    base = dict(_check_keys("base", spec.get("base"), fields))
    base_opts = dict(base.pop("options", None) or {})
    overrides = dict(overrides or {})
    models = _axis("models", spec.get("models", base.get("model", "minilm")))
    tasks = _axis("tasks", spec.get("tasks", base.get("task", "sst2")))
    seeds = _axis("seeds", spec.get("seeds", base.get("seed", 0)))
    if "model" in overrides:
        models = [overrides.pop("model")]
    if "seeds" in overrides:
        seeds = _axis("--seeds", overrides.pop("seeds"))
    if only_tasks:
        wanted = {_task_key(t) for t in only_tasks}
        tasks = [t for t in tasks if _task_key(t) in wanted]
        if not tasks:
            raise SweepError(f"--tasks {','.join(only_tasks)} selects none of the sweep's tasks {spec.get('tasks')}")
    per_task = _check_keys("task_overrides", spec.get("task_overrides"),
                           [str(t) for t in _axis("tasks", spec.get("tasks", tasks))] + [_task_key(t) for t in tasks])
    per_task = {_task_key(t): dict(_check_keys(f"task_overrides.{t}", v, [f for f in fields if f not in ("task", "seed")]))
                for t, v in per_task.items()}
    blocks = spec.get("variants")
    if not isinstance(blocks, dict) or not blocks:
        raise SweepError("the sweep file needs a non-empty 'variants:' mapping, e.g. variants: {lora: {lr: [5e-4]}}")
    if only_variants:
        unknown = [v for v in only_variants if v not in blocks]
        if unknown:
            raise SweepError(f"--variants: {', '.join(unknown)} not in the sweep; its variants: {', '.join(blocks)}")
        blocks = {k: v for k, v in blocks.items() if k in only_variants}
    out = out or overrides.pop("out", None) or base.get("out") or str(Path("runs") / name)
    overrides.pop("out", None)
    grid_keys = [f for f in fields if f not in NOT_IN_GRID] + list(BLOCK_META_KEYS)

    runs: list[tuple[tuple, PlannedRun]] = []
    notes: list[str] = []
    budget: dict[str, int] = {}
    for b, (label, block) in enumerate(blocks.items()):
        where = f"variants.{label}"
        block = _check_keys(where, block, grid_keys)
        axes = _grid_axes(where, block)
        points = list(itertools.product(*[c for _, c in axes]))
        block_runs = []
        try:
            for (s, seed), (m, model), (t, task), (p, combo) in itertools.product(
                enumerate(seeds), enumerate(models), enumerate(tasks), enumerate(points)
            ):
                point = dict(zip([path for path, _ in axes], combo))
                d = dict(base)
                task_over = dict(per_task.get(_task_key(task), {}))
                opts = {**base_opts, **(task_over.pop("options", None) or {})}
                d.update(task_over)
                d.update({path[0]: v for path, v in point.items() if len(path) == 1})
                opts.update({path[1]: v for path, v in point.items() if len(path) == 2})
                d.update(overrides)
                d.update(model=model, task=task, seed=seed, options=opts, out=str(out), variant=label)
                try:
                    cfg = RunConfig.from_dict(d)
                except ConfigError as e:
                    raise SweepError(f"{where} (model {model}, task {task}, seed {seed}): {e}") from None
                hyper = {path[-1]: v for path, v in point.items()}
                run = PlannedRun(results.run_id(cfg.resolved()), cfg, hyper)
                block_runs.append(((s, m, t, b, p), run))
        except SweepError as e:
            if not block.get("optional"):
                raise
            notes.append(f"skipping optional block {label!r}: {e}")
            continue
        runs += block_runs
        budget[label] = len(points)
    runs.sort(key=lambda x: x[0])
    unique: dict[str, PlannedRun] = {}
    for _, run in runs:
        unique.setdefault(run.run_id, run)  # identical resolved configs run once
    if not unique:
        raise SweepError("the sweep expands to no runs; check variants, tasks, seeds and the --variants/--tasks filters")
    if len(set(budget.values())) > 1:
        notes.append("unequal tuning budget (configurations per task and seed): "
                     + ", ".join(f"{k} {v}" for k, v in budget.items()))
    return Sweep(name=name, runs=list(unique.values()), out=str(out), notes=notes)


PATH_KEYS = ("data_dir", "out")  # RunConfig fields that are paths


def _anchor(value: Any, folder: Path) -> Any:
    """A relative path (or a grid of them) read from a file in ``folder``, made absolute."""
    if isinstance(value, list):
        return [_anchor(v, folder) for v in value]
    if not isinstance(value, str) or not value.strip():
        return value  # not a path: RunConfig.from_dict names the problem
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(os.path.normpath(folder.resolve() / path)))


def resolve_paths(spec: Any, folder: Path) -> Any:
    """``data_dir`` / ``out`` in base, task_overrides and variant blocks, relative to ``folder``."""
    if not isinstance(spec, dict):
        return spec

    def fix(block: Any) -> Any:
        if not isinstance(block, dict):
            return block
        return {k: _anchor(v, folder) if k in PATH_KEYS else v for k, v in block.items()}

    spec = dict(spec)
    if "base" in spec:
        spec["base"] = fix(spec["base"])
    for key in ("task_overrides", "variants"):
        if isinstance(spec.get(key), dict):
            spec[key] = {name: fix(block) for name, block in spec[key].items()}
    return spec


def check_paths(sweep: Sweep) -> None:
    """Every run's GLUE folder exists and the out folder is not a file, before anything runs."""
    for data_dir in sorted({r.config.data_dir for r in sweep.runs if r.config.data_dir is not None}):
        if not Path(data_dir).expanduser().is_dir():
            raise SweepError(f"data_dir {data_dir} is not a folder; point it at a GLUE folder (one subfolder per "
                             "task); relative paths in a sweep file are relative to the file's folder")
    if Path(sweep.out).exists() and not Path(sweep.out).is_dir():
        raise SweepError(f"out {sweep.out} is a file, not a folder; pass another --out")


def load_sweep(path: str | os.PathLike, overrides: dict | None = None, **kwargs: Any) -> Sweep:
    """Read, expand and validate a sweep file (a path or a preset name)."""
    file = find_sweep_file(path)
    sweep = plan(resolve_paths(read_yaml(file), file.parent), overrides, name=file.stem, **kwargs)
    check_paths(sweep)
    sweep.source = str(file)
    return sweep


# --------------------------------------------------------------------------- time estimate

#: Train examples/s assumed for a model when no finished run in the out folder measured it:
#: lorabench LoRA on SST-2 (short sentences, dynamic padding, max_length 64), fp32, 2 CPU cores;
#: MiniLM measured at ~26 examples/s on one busy core. Scaled by (full depth / layers) and x25
#: on a GPU. These are rough: a measured rate always wins (``measured_rates``).
ASSUMED_EXAMPLES_PER_S = {"minilm": 50.0, "smollm2-135m": 6.0, "roberta-base": 8.0, "bert-base": 8.0,
                          "gpt2": 8.0, "tinyllama": 0.6}
ASSUMED_OTHER = 4.0
ASSUMED_GPU_SPEEDUP = 25.0
FULL_DEPTH = {"minilm": 6, "smollm2-135m": 30, "roberta-base": 12, "bert-base": 12, "gpt2": 12, "tinyllama": 22}
LOAD_S = {"minilm": 10.0, "smollm2-135m": 25.0}  # process start + imports + model and data load
LOAD_OTHER_S = 60.0
EVAL_SPEEDUP = 2.0  # evaluation: forward only, but dev sentences run longer (measured ~1.9x on SST-2)
#: GLUE (train, first dev split) sizes, used when no train_limit / eval_limit caps them.
GLUE_SIZES = {"sst2": (67349, 872), "cola": (8551, 1043), "mrpc": (3668, 408), "rte": (2490, 277),
              "stsb": (5749, 1500), "qqp": (363846, 40430), "mnli": (392702, 9815), "qnli": (104743, 5463)}


def measured_rates(folder: str | os.PathLike) -> dict[tuple, float]:
    """Median train examples/s of the ok results in ``folder``, keyed at three levels of detail."""
    samples: dict[tuple, list[float]] = {}
    for _, r in results.load_results(folder, warn=False) if Path(folder).is_dir() else []:
        rate = (r.get("time") or {}).get("examples_per_s")
        if r["status"] != "ok" or not rate:
            continue
        c = r["config"]
        for key in _rate_keys(r["model"], c.get("layers"), r["task"], c.get("max_length"), r["variant"]):
            samples.setdefault(key, []).append(float(rate))
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


def _rate_keys(model, layers, task, max_length, variant) -> list[tuple]:
    return [(model, layers, task, max_length, variant), (model, layers, task, max_length), (model, layers)]


def estimate_seconds(cfg: Any, rates: dict[tuple, float] | None = None) -> float:
    """Seconds for one run: load + train examples x epochs / rate + evaluations."""
    rates = rates or {}
    train_n, dev_n = GLUE_SIZES.get(_task_key(cfg.task), (10000, 1000))
    train_n = min(train_n, cfg.train_limit or train_n)
    dev_n = min(dev_n, cfg.eval_limit or dev_n)
    keys = _rate_keys(cfg.model, cfg.layers, _task_key(cfg.task), cfg.max_length, cfg.variant)
    rate = next((rates[k] for k in keys if k in rates), None)
    if rate is None:
        rate = ASSUMED_EXAMPLES_PER_S.get(cfg.model, ASSUMED_OTHER)
        if cfg.layers and cfg.model in FULL_DEPTH:
            rate *= FULL_DEPTH[cfg.model] / cfg.layers
        if _cuda():
            rate *= ASSUMED_GPU_SPEEDUP
    steps = train_n * cfg.epochs / (cfg.batch_size * cfg.grad_accum)
    evals = steps / cfg.eval_every if cfg.eval_every else max(1.0, float(cfg.epochs))
    return LOAD_S.get(cfg.model, LOAD_OTHER_S) + train_n * cfg.epochs / rate + evals * dev_n / (EVAL_SPEEDUP * rate)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --------------------------------------------------------------------------- execution


def result_status(path: Path) -> str | None:
    """The status recorded in a result file, or None when there is no valid result."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data["status"] if results.validate(data) is None else None


def _lock(out: Path):
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: one sweep per folder is on the user
        return None
    f = open(out / ".sweep.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise SweepError(f"another sweep is running in {out}; wait for it to finish or pass another --out") from None
    return f


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_manifest(sweep: Sweep, statuses: dict[str, str | None]) -> Path:
    runs = [{"run_id": r.run_id, "model": r.config.model, "task": r.config.task,
             "variant": r.config.variant, "hyper": r.hyper, "seed": r.config.seed,
             "status": statuses.get(r.run_id)} for r in sweep.runs]
    data = {"schema": "lorabench-sweep", "name": sweep.name, "source": sweep.source, "updated_at": _now(),
            "run_ids": [r.run_id for r in sweep.runs], "runs": runs}
    return results.write_json_atomic(Path(sweep.out) / "sweep.json", data)


def failure_result(run: PlannedRun, message: str, started_at: str) -> dict:
    """The result the sweep records for a run whose process died without writing one."""
    import torch

    from .data import get_task
    from .measure import environment

    cfg, empty = run.config, {"step": 0, "epoch": 0.0, "metrics": {}}
    return {
        "schema": results.SCHEMA, "schema_version": results.SCHEMA_VERSION, "run_id": run.run_id,
        "status": "error", "error": message, "config": cfg.resolved(), "task": cfg.task, "variant": cfg.variant,
        "model": cfg.model, "seed": cfg.seed, "primary_metric": get_task(cfg.task).primary_metric,
        "best": empty, "final": empty, "history": [], "train_loss": [],
        "params": {"trainable": None, "total": None}, "adapter_bytes": None,
        "time": dict.fromkeys(("train_s", "eval_s", "examples_per_s", "tokens_per_s")),
        "memory": dict.fromkeys(("device", "peak_allocated_bytes", "peak_reserved_bytes", "peak_rss_bytes",
                                 "budget_bytes", "micro_batch_size", "grad_accum_steps")),
        "env": environment(torch.device("cpu")), "started_at": started_at, "finished_at": _now(),
    }


def _log_tail(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace")[-LOG_TAIL:].splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def execute_in_subprocess(run: PlannedRun, out: Path) -> tuple[int, Path]:
    """Run one config in a fresh Python process; returns (exit code, log path)."""
    cfg_path = out / "configs" / f"run-{run.run_id}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(run.config.to_dict() | {"quiet": True}, sort_keys=False))
    log = out / "logs" / f"run-{run.run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", "from lorabench.sweep import child_main; child_main()", str(cfg_path), run.run_id,
           str(os.getpid())]
    # the run imports the same lorabench as this sweep, wherever that one came from
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            return proc.wait(), log
        except BaseException:  # Ctrl-C or an error in the sweep: never leave the run behind
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def _die_with_parent(parent: int) -> None:
    """Exit when the sweep that started this process dies, so no orphan run writes late."""
    try:  # Linux: the kernel sends SIGKILL when the parent exits
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere, and if the sweep died before prctl: poll the parent id
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def child_main(argv: list[str] | None = None) -> None:
    """Entry point of a run process: ``<config.yaml> <expected run id> <sweep pid>``."""
    import traceback

    cfg_path, expected, parent = (argv or sys.argv[1:])[:3]
    _die_with_parent(int(parent))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle
    from .run import execute

    cfg = RunConfig.from_dict(read_yaml(cfg_path))
    rid = results.run_id(cfg.resolved())
    if rid != expected:
        print(f"error: {cfg_path} resolves to run id {rid}, the sweep planned {expected}; "
              "the config does not round-trip through RunConfig.from_dict", file=sys.stderr)
        sys.exit(2)
    try:
        result = execute(cfg, progress=False)
    except Exception as e:
        traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0 if result.get("status") == "ok" else 3)


def run_one(run: PlannedRun, out: Path) -> tuple[str, Path]:
    """Execute one run in a fresh process (both backends); returns (status, log path).

    A process that dies without a result gets an ``error`` result written here, by its living parent."""
    started = _now()
    path = results.result_path(out, run.run_id)
    before = _stamp(path)
    rc, log = execute_in_subprocess(run, out)
    wrote = path.exists() and _stamp(path) != before
    status = result_status(path) if wrote else None
    if status is None:  # the process died without a result: record it, we are alive
        how = f"was killed by {_signal_name(-rc)}" if rc < 0 else f"exited with code {rc}"
        tail = _log_tail(log)
        results.write_json_atomic(path, failure_result(
            run, f"run process {how} without writing a result" + (f": {tail}" if tail else "")
            + f" (log: {log})", started))
        status = "error"
    return status, log


def run_sweep(sweep: Sweep, *, retry_failed: bool = False, quiet: bool = False) -> dict[str, str | None]:
    """Run every planned run not done yet, one after another; returns run id -> status."""
    from tqdm.auto import tqdm

    out = Path(sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        for tmp in out.glob(".*.json.*.tmp"):  # left by a process killed mid-write (we hold the lock)
            tmp.unlink(missing_ok=True)
        statuses = {r.run_id: result_status(results.result_path(out, r.run_id)) for r in sweep.runs}
        todo = [r for r in sweep.runs if statuses[r.run_id] is None or (retry_failed and statuses[r.run_id] != "ok")]
        write_manifest(sweep, statuses)
        rates = measured_rates(out)
        estimates = [estimate_seconds(r.config, rates) for r in todo]
        bar = tqdm(total=len(sweep.runs), initial=len(sweep.runs) - len(todo), unit="run", disable=quiet,
                   bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        spent = 0.0
        for i, run in enumerate(todo):
            done_est = sum(estimates[:i])
            factor = spent / done_est if done_est else 1.0  # calibrate the estimate on this machine
            c = run.config
            bar.set_description_str(f"{c.variant} {c.task} seed {c.seed}")
            bar.set_postfix_str(f"ETA {format_seconds(factor * sum(estimates[i:]))}")
            t0 = time.perf_counter()
            status, log = run_one(run, out)
            spent += time.perf_counter() - t0
            statuses[run.run_id] = status
            if status != "ok":
                bar.write(f"{status}: {run.describe()} (log: {log})")
            bar.update(1)
        bar.close()
        write_manifest(sweep, statuses)
        return statuses
    finally:
        if lock is not None:
            lock.close()


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name + (" (out of memory?)" if n == signal.SIGKILL else "")
    except ValueError:
        return f"signal {n}"


_stamp = results.file_stamp  # changes when a file is (atomically) replaced


def print_plan(sweep: Sweep) -> None:
    rates = measured_rates(sweep.out)
    total = 0.0
    for run in sweep.runs:
        status = result_status(results.result_path(sweep.out, run.run_id))
        est = 0.0 if status else estimate_seconds(run.config, rates)
        total += est
        print(f"{run.describe()}  [{status or '~' + format_seconds(est)}]")
    how = "measured by finished runs in the out folder where available, else" if rates else "no finished runs yet:"
    print(f"{len(sweep.runs)} runs into {sweep.out}; estimated time for the runs not done: {format_seconds(total)} "
          f"({how} assumed examples/s per model, lorabench.sweep.ASSUMED_EXAMPLES_PER_S)")


# --------------------------------------------------------------------------- CLI

OVERRIDE_FLAGS = (  # flag, type, RunConfig field, help
    ("--model", str, "model", "model for every run (replaces the file's models)"),
    ("--layers", int, "layers", "keep only the first N transformer layers"),
    ("--train-limit", int, "train_limit", "training examples per run"),
    ("--eval-limit", int, "eval_limit", "dev examples per split"),
    ("--epochs", float, "epochs", "epochs per run"),
    ("--max-length", int, "max_length", "truncate inputs to N tokens"),
    ("--data-dir", str, "data_dir", "GLUE folder"),
    ("--out", str, "out", "results folder [runs/<sweep name>]"),
)


def _ints(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_override_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("overrides (applied to every run)")
    for flag, typ, dest, text in OVERRIDE_FLAGS:
        g.add_argument(flag, type=typ, dest=dest, default=None, help=text)
    g.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--variants", type=_names, default=None, help="run only these variant blocks (comma-separated)")
    p.add_argument("--tasks", type=_names, default=None, help="run only these tasks (comma-separated)")
    p.add_argument("--retry-failed", action="store_true", help="rerun runs whose status is not ok")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    from .sweep_ray import add_backend_flags

    add_backend_flags(p)


def sweep_from_args(args: argparse.Namespace, config: str) -> Sweep:
    overrides = {dest: getattr(args, dest) for _, _, dest, _ in OVERRIDE_FLAGS if getattr(args, dest) is not None}
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    return load_sweep(config, overrides, only_variants=args.variants, only_tasks=args.tasks)


def run_and_summarise(sweep: Sweep, args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:
        from .sweep_ray import backend_runner

        statuses = backend_runner(args)(sweep, retry_failed=args.retry_failed, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume ({sweep.out})", file=sys.stderr)
        return 130
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[s or "missing"] = counts.get(s or "missing", 0) + 1
    print(f"sweep {sweep.name}: {len(statuses)} runs, " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f" ({format_seconds(time.perf_counter() - t0)}); results in {sweep.out}")
    if not args.quiet:
        from .report import best_table_markdown

        print(best_table_markdown(sweep.out))
    return 0 if counts.get("ok", 0) == len(statuses) else 1


def cmd_sweep(args: argparse.Namespace, sweep: Sweep | None = None) -> int:
    sweep = sweep or sweep_from_args(args, args.config)
    for note in sweep.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        print_plan(sweep)
        return 0
    return run_and_summarise(sweep, args)


def cmd_bench(args: argparse.Namespace) -> int:
    """The quick preset, then the full report (with HTML) into <out>/report."""
    sweep = sweep_from_args(args, "quick")
    rc = cmd_sweep(args, sweep)
    if not args.dry_run and rc in (0, 1):
        from .report import write_report

        write_report(sweep.out, Path(sweep.out) / "report", html=True, echo=False)
        print(f"report: {Path(sweep.out) / 'report'}")
    return rc


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="run a grid of runs from a YAML file (resumable)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="sweep YAML file, or a preset name: quick, better-call-lora, lora-roberta-glue, "
                                  "rank-ablation, peft-methods")
    p.add_argument("--dry-run", action="store_true", help="print the expanded runs and a time estimate, run nothing")
    add_override_flags(p)
    p.set_defaults(func=cmd_sweep)
    return p


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="run the quick preset (MiniLM on SST-2, 8 methods) and report")
    p.add_argument("--dry-run", action="store_true", help="print the expanded runs and a time estimate, run nothing")
    add_override_flags(p)
    p.set_defaults(func=cmd_bench)
    return p
