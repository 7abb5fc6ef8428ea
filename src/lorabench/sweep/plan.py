"""Sweep files: the YAML format, presets, and the plan (every run expanded and validated)::

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
      fed-ffa:   {kind: federated, scenario: {method: ffa_lora, beta: [0.5, inf], clients: 4}}  # a scenario
      prune-lp:  {kind: prune, scenario: {method: loraprune, sparsity: [0.25, 0.5]}}             # kind
      dora:      {lr: [5e-4, 1e-3]}
      lora_plus: {lr: [2e-4], options: {lr_ratio: [4, 16]}}
      qlora:     {optional: true, lr: [2e-4]}   # skipped with a warning unless registered
    halving: 2                         # optional: successive halving over each method's grid, seeds as
                                       # the budget (sweep/halving.py)
    pack: 9                            # optional: runs over one frozen base trained together (lorabench.pack)
    jobs: 2                            # optional: processes (runs or packs) at a time, the CPU threads
                                       # split between them (sweep/local.py)

Rules. Under ``variants`` every YAML list is a grid and its items are the candidate values
(so a list-valued field needs a list of lists: ``targets: [[query, value], all-linear]``); a
scalar is a one-value grid; ``options`` holds one grid per variant option. ``base`` and
``task_overrides`` hold plain values. Precedence, lowest first: RunConfig defaults < base <
task_overrides[task] < the variant grid point < CLI flags. A block of a scenario ``kind`` (``lorabench.kinds``)
names no variant (its kind decides it) and grids over ``scenario`` as over ``options``; its runs are
planned, seeded, halved and resumed like any run, and each is one row of the report (its label). ``optional: true`` skips a block with a
warning when its variant is not registered or its runs do not validate. Unknown keys at any level
and empty grids are errors, and every expanded run goes through ``RunConfig.from_dict`` before
anything runs. Order: seed, model, task, variant, grid point -- a sweep stopped half-way already
has every configuration at the first seed. ``seed`` cannot be a grid: every configuration gets
the same seeds, which the report's paired test across seeds relies on. Relative ``data_dir`` and
``out`` written in a sweep file are relative to that file's folder (so a sweep file travels with
its data); those given as flags are relative to the working directory. ``data_dir`` must be an
existing folder, and ``val_size`` must leave training examples, both checked before anything runs. The
name is a folder name (``runs/<name>``, the tracker group): one plain path component (``outputs.safe_name``).

Each run executes in a fresh process (``python -m lorabench.run``, the child entry point that
rank processes share) so no state leaks between runs; it writes ``run-<id>.json`` atomically
(id = hash of the resolved config and the data fingerprint, so a rerun on other data runs again),
its log goes to ``logs/run-<id>.log`` and its resolved config to ``configs/run-<id>.yaml``
(``lorabench train --config`` reruns it alone). A rerun skips runs whose result exists;
``--retry-failed`` reruns those whose status is not ok. A run that dies without a result gets an
``error`` result written by the sweep -- only while the sweep itself is alive: a child dies with
its parent (PR_SET_PDEATHSIG on Linux plus a watchdog thread) and a SIGKILLed sweep writes
nothing. ``sweep.json`` (atomic) lists the planned run ids. A lock file keeps two sweeps out of
one folder. ``--backend ray`` runs each run as a Ray task with the same per-run function
(``run_one``) and the same resume rules (``ray.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, parse_yaml
from ..data.glue import get_task, resolve_source, task_key
from ..errors import ConfigError, DataError, SweepError
from ..kinds import REFUSES
from ..outputs import safe_name
from ..pack import plan as packing

TOP_KEYS = ("name", "description", "base", "models", "tasks", "seeds", "task_overrides", "variants", "pack", "jobs",
            "extend_grid", "halving")
BLOCK_META_KEYS = ("optional",)
NOT_IN_GRID = ("seed", "model", "task", "variant", "out")  # the sweep's own axes and its folder


def read_yaml(path: str | os.PathLike) -> Any:
    try:
        return parse_yaml(Path(path).read_text())
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
        shown = ({} if "lr" in REFUSES[c.kind] else {"lr": c.lr}) | self.hyper  # lr unless the kind has none
        hyper = " ".join(f"{k}={_short(v)}" for k, v in shown.items())
        return f"{self.run_id}  {c.model}  {c.task_spec().name}  {c.method()}  {hyper}  seed={c.seed}"


@dataclass
class Sweep:
    name: str
    runs: list[PlannedRun]
    source: str = ""
    out: str = ""
    notes: list[str] = field(default_factory=list)
    pack: int = 1  # runs that share a frozen base train this many at a time (``lorabench.pack``)
    jobs: int = 1  # processes (runs or packs) at a time, the CPU threads split between them (``local.py``)
    halving: int | None = None  # successive halving over each method's grid with this eta (``halving.py``)
    extend_grid: int = 0  # lr points a grid may grow by on each side while its best is at an edge (``extend.py``)


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


def _count(key: str, overrides: dict, spec: dict, what: str, example: str) -> int:
    """The positive integer ``key`` (a flag's override, else the file's, else 1)."""
    value = overrides.pop(key) if overrides.get(key) is not None else spec.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SweepError(f"{key} must be a positive integer ({what}), got {value!r}; e.g. {example}")
    return value


def _axis(where: str, value: Any) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SweepError(f"{where} is an empty list; give at least one value or remove the key")
    return values


def _grid_axes(where: str, block: dict) -> list[tuple[tuple[str, ...], list]]:
    """[(path, candidates)] where path is (field,), ("options", name) or ("scenario", name)."""
    axes = []
    for key, value in block.items():
        if key in BLOCK_META_KEYS:
            continue
        if key == "kind" and isinstance(value, list):
            raise SweepError(f"{where}.kind cannot be a grid; one kind per block (run, federated, prune)")
        if key in ("options", "scenario"):
            opts = _check_keys(f"{where}.{key}", value, list(value or {}))
            axes += [((key, k), _axis(f"{where}.{key}.{k}", v)) for k, v in opts.items()]
        else:
            axes.append(((key,), _axis(f"{where}.{key}", value)))
    return axes


def plan(spec: Any, overrides: dict | None = None, *, name: str = "sweep", out: str | None = None,
         only_variants: list[str] | None = None, only_tasks: list[str] | None = None,
         config_cls: type = RunConfig) -> Sweep:
    """Expand a parsed sweep file into validated runs. ``overrides`` (CLI flags) beat everything.
    ``config_cls`` is the run config class (``RunConfig``; its fields are the valid keys)."""
    fields = [f.name for f in dataclasses.fields(config_cls)]
    spec = _check_keys("sweep file", spec, TOP_KEYS)
    name = str(spec.get("name") or name)
    base = dict(_check_keys("base", spec.get("base"), fields))
    base_opts = dict(base.pop("options", None) or {})
    overrides = dict(overrides or {})
    models = _axis("models", spec.get("models", base.get("model", "minilm")))
    tasks = _axis("tasks", spec.get("tasks", base.get("task", "sst2")))
    seeds = _axis("seeds", spec.get("seeds", base.get("seed", 0)))
    pack = _count("pack", overrides, spec, "runs trained together over one base",
                  "pack: 8, or 1 to train every run in a process of its own")
    jobs = _count("jobs", overrides, spec, "run or pack processes at a time", "jobs: 2, or 1 for one at a time")
    halving = overrides.pop("halving") if overrides.get("halving") is not None else spec.get("halving")
    if halving is not None and (isinstance(halving, bool) or not isinstance(halving, int) or halving < 2):
        raise SweepError(f"halving must be an integer eta >= 2 (keep the best 1/eta of a method's configurations "
                         f"after each seed), got {halving!r}; e.g. halving: 2, or remove it to run the whole grid")
    if "model" in overrides:
        models = [overrides.pop("model")]
    if "seeds" in overrides:
        seeds = _axis("--seeds", overrides.pop("seeds"))
    if only_tasks:
        wanted = {task_key(t) for t in only_tasks}
        tasks = [t for t in tasks if task_key(t) in wanted]
        if not tasks:
            raise SweepError(f"--tasks {','.join(only_tasks)} selects none of the sweep's tasks {spec.get('tasks')}")
    per_task = _check_keys("task_overrides", spec.get("task_overrides"),
                           [str(t) for t in _axis("tasks", spec.get("tasks", tasks))] + [task_key(t) for t in tasks])
    per_task = {task_key(t): dict(_check_keys(f"task_overrides.{t}", v, [f for f in fields if f not in ("task", "seed")]))
                for t, v in per_task.items()}
    blocks = spec.get("variants")
    if not isinstance(blocks, dict) or not blocks:
        raise SweepError("the sweep file needs a non-empty 'variants:' mapping, e.g. variants: {lora: {lr: [5e-4]}}")
    if only_variants:
        unknown = [v for v in only_variants if v not in blocks]
        if unknown:
            raise SweepError(f"--variants: {', '.join(unknown)} not in the sweep; its variants: {', '.join(blocks)}")
        blocks = {k: v for k, v in blocks.items() if k in only_variants}
    out = out or overrides.pop("out", None) or base.get("out") or str(Path("runs") / safe_name(name, "sweep name"))
    overrides.pop("out", None)
    grid_keys = [f for f in fields if f not in NOT_IN_GRID] + list(BLOCK_META_KEYS)

    runs: list[tuple[tuple, PlannedRun]] = []
    notes: list[str] = []
    budget: dict[str, int] = {}
    for b, (label, block) in enumerate(blocks.items()):
        where = f"variants.{label}"
        if isinstance(block, dict) and "seed" in block:
            raise SweepError(f"{where}: 'seed' cannot be a grid in a variant block (every configuration gets the same "
                             "seeds, which the report's paired test relies on); list them once at the top level, "
                             f"e.g. seeds: [0, 1, 2]; valid keys: {', '.join(grid_keys)}")
        block = _check_keys(where, block, grid_keys)
        axes = _grid_axes(where, block)
        beaten = [path[0] for path, _ in axes if len(path) == 1 and path[0] in overrides]
        if beaten:
            notes.append(f"{where}: the flag --{', --'.join(p.replace('_', '-') for p in beaten)} replaces the grid "
                         f"of {', '.join(beaten)}")
        points = list(itertools.product(*[c for _, c in axes]))
        block_runs = []
        try:
            for (s, seed), (m, model), (t, task), (p, combo) in itertools.product(
                enumerate(seeds), enumerate(models), enumerate(tasks), enumerate(points)
            ):
                point = dict(zip([path for path, _ in axes], combo))
                d = dict(base)
                task_over = dict(per_task.get(task_key(task), {}))
                opts = {**base_opts, **(task_over.pop("options", None) or {})}
                scenario = dict(base.get("scenario") or {})
                d.update(task_over)
                d.update({path[0]: v for path, v in point.items() if len(path) == 1})
                opts.update({path[1]: v for path, v in point.items() if path[0] == "options"})
                scenario.update({path[1]: v for path, v in point.items() if path[0] == "scenario"})
                d.update(overrides)
                d.update(model=model, task=task, seed=seed, options=opts, out=str(out))
                if scenario:
                    d["scenario"] = scenario
                if d.get("kind", "run") == "run":  # a plain run's block is named after its variant;
                    d["variant"] = label  # a scenario block's label is free (its kind sets the variant)
                try:
                    cfg = config_cls.from_dict(d)
                except ConfigError as e:
                    raise SweepError(f"{where} (model {model}, task {task}, seed {seed}): {e}") from None
                hyper = {path[-1]: v for path, v in point.items() if not (len(path) == 1 and path[0] in overrides)}
                try:
                    rid = cfg.run_id()  # reads the data fingerprint: a missing split file stops the plan
                except DataError as e:
                    check_data_dir(cfg.data_dir)
                    raise SweepError(f"{where} (task {task}): {e}") from None
                run = PlannedRun(rid, cfg, hyper)
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
    notes += packing.notes(list(unique.values()), pack, jobs)
    if halving is not None and len(seeds) < 2:
        notes.append("halving: with one seed every configuration runs once; halving needs two or more seeds")
    extend = spec.get("extend_grid", 0)
    if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
        raise SweepError(f"extend_grid must be an integer >= 0 (lr points a grid may grow by on each side while its "
                         f"best is at an edge), got {extend!r}; e.g. extend_grid: 2")
    return Sweep(name=name, runs=list(unique.values()), out=str(out), notes=notes, pack=pack, jobs=jobs, halving=halving,
                 extend_grid=extend)


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
        if isinstance(spec["base"], dict) and _is_task_file(spec["base"].get("task")):
            spec["base"] = {**spec["base"], "task": _anchor(spec["base"]["task"], folder)}
    if isinstance(spec.get("tasks"), list):  # task files, like data folders, travel with the sweep file
        spec["tasks"] = [_anchor(t, folder) if _is_task_file(t) else t for t in spec["tasks"]]
    for key in ("task_overrides", "variants"):
        if isinstance(spec.get(key), dict):
            spec[key] = {name: fix(block) for name, block in spec[key].items()}
    return spec


def _is_task_file(value: Any) -> bool:
    return isinstance(value, str) and value.lower().endswith((".yaml", ".yml"))


def check_data_dir(data_dir: str | None) -> None:
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise SweepError(f"data_dir {data_dir} is not a folder; point it at a GLUE folder (one subfolder per "
                         "task); relative paths in a sweep file are relative to the file's folder")


def check_paths(sweep: Sweep) -> None:
    """Every run's GLUE folder exists and the out folder is not a file, before anything runs."""
    for data_dir in sorted({r.config.data_dir for r in sweep.runs if r.config.data_dir is not None}):
        check_data_dir(data_dir)
    if Path(sweep.out).exists() and not Path(sweep.out).is_dir():
        raise SweepError(f"out {sweep.out} is a file, not a folder; pass another --out")


def data_problems(sweep: Sweep) -> list[str]:
    """Why some task's data cannot be read here (no folder holds it and the hub needs ``datasets``):
    a plan is made without reading any data, a run is not (``lorabench sweep`` stops on these)."""
    problems = []
    for data_dir, task, revision in sorted({(c.data_dir, c.task, c.data_revision) for c in (r.config for r in sweep.runs)},
                                           key=str):
        try:
            resolve_source(data_dir, task, revision)
        except DataError as e:
            problems.append(f"task {task}: {e}")
    return problems


def val_size_problems(sweep: Sweep) -> list[str]:
    """A ``val_size`` that leaves no training examples, which every run holding it would refuse
    (``data.batching.build_loaders``): checked once per distinct task, data and val_size of the plan
    (``train_limit`` draws from what is left, so it does not enter), reading each train split once."""
    wanted: dict[tuple, set[int]] = {}
    for c in (r.config for r in sweep.runs if getattr(r.config, "val_size", None) is not None):
        wanted.setdefault((c.data_dir, c.task, c.data_revision), set()).add(c.val_size)
    problems = []
    for (data_dir, task, revision), sizes in sorted(wanted.items(), key=str):
        try:
            spec = get_task(task)
            source = resolve_source(data_dir, task=spec, revision=revision)
            n = len(source.load(spec, "train"))
        except DataError:
            continue  # unreadable data: data_problems names it, or the run does
        problems += [f"--val-size {size} leaves no training examples: {spec.display} train has {n} ({source}); "
                     f"hold out fewer, e.g. --val-size {max(1, n // 10)}" for size in sorted(sizes) if size >= n]
    return problems


def load_sweep(path: str | os.PathLike, overrides: dict | None = None, **kwargs: Any) -> Sweep:
    """Read, expand and validate a sweep file (a path or a preset name)."""
    file = find_sweep_file(path)
    sweep = plan(resolve_paths(read_yaml(file), file.parent), overrides, name=file.stem, **kwargs)
    check_paths(sweep)
    sweep.source = str(file)
    return sweep
