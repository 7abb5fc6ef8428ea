"""One self-describing JSON per run; tables and plots are computed from these files only.

One envelope for every kind of run: a plain run (``kind`` "run") and each scenario (``kind``
"federated", "prune", ...: ``lorabench.kinds``) write the same keys, so ``report`` and the sweep read
them all alike; what only a kind has goes under ``details``.

Schema (``schema_version`` 3). Keys marked * are always present.

    schema*            "lorabench-run"
    schema_version*    3 (2: before scenario kinds, read as kind "run"; 1: before the data was part of
                       the run id; both still read)
    kind*              "run" | a scenario kind (``lorabench.kinds.KINDS``). Schema 3 only
    method*            the row this run is in the report: the variant for a run, e.g.
                       "federated:ffa_lora (beta 0.5)" or "prune:loraprune@0.5" for a scenario. Schema 3 only
    metric*            {"name": primary metric, "selected_on": the split that picked the reported
                       evaluation ("val", a dev split, or "last" when nothing was selected), "reported_on":
                       the dev split reported}. Schema 3 only
    details            the kind's own record (null for a plain run): rounds of a federated run, the
                       pruning plan and sparsity of a prune run, ...
    plugins            [{"plugin", "module", "file", "sha256", "variants"}, ...]: the code outside lorabench
                       the run loaded (``--plugin`` and installed ``lorabench.variants`` entry points)
    run_id*            first 12 hex digits of the sha256 of the canonical JSON of ``config`` and
                       ``data`` without ``examples`` (``ids.run_id``; schema 1: of ``config`` alone)
    status*            "ok" | "diverged" | "oom" | "error"
    error              message when status != "ok", else null
    config*            the fully resolved run config (model, task, variant, options, lr, ...)
    task*              GLUE task name, e.g. "sst2"
    variant*           registered variant name
    model*             model alias, hub id or path as given
    data*              the data fingerprint (``lorabench.data.fingerprint``): {"source": "folder",
                       "files": {split: "sha256:..."}} or {"source": "hub", "dataset", "config",
                       "revision"}, plus "examples": {split: {"count": int, "sha256": str}} (what the
                       run selected and read: training set after --train-limit, dev sets after
                       --eval-limit; null when the run died before reading its data). Schema 2 only
    pooling            how the head reads the sequence: "cls" (the model's own head), "mean"
                       (mean of the last hidden states) or "lm" (prompt + label words)
    seed*              int
    primary_metric*    name of the task's GLUE metric, e.g. "accuracy", "mcc", "pearson"
    best*              {"step": int, "epoch": float, "metrics": {split: {metric: value}}}
                       the evaluation with the best primary metric on the first dev split
    final*             {"step": int, "epoch": float, "metrics": {split: {metric: value}}}
    history*           [{"step", "epoch", "train_loss", "metrics": {split: {metric: value}}}, ...]
    train_loss*        [[step, loss], ...] (every logging step)
    params*            {"trainable": int, "total": int}
    adapter_bytes      size of the saved adapter on disk (null when not saved)
    time*              {"train_s": float (evaluation excluded), "eval_s": float,
                        "examples_per_s": float, "tokens_per_s": float}
    memory*            {"device": "cuda"|"cpu", "peak_allocated_bytes", "peak_reserved_bytes",
                        "peak_rss_bytes", "budget_bytes", "micro_batch_size", "grad_accum_steps",
                        "oom_retries"} (micro-batch per process; after CUDA out-of-memory retries
                       the halved micro-batch and the accumulation that keeps the effective batch)
    distributed        null for one process; else {"num_processes", "backend", "find_unused_parameters",
                       "in_sync" (every rank's trained adapter has the same checksum), "ranks": [{"rank",
                       "examples", "tokens", "loop_s", "peak_*_bytes", "adapter_sha256"}, ...]}; then
                       ``time`` sums examples and tokens over the ranks and ``memory`` peaks are the
                       largest rank's
    packed_with        a packed run only (``lorabench.pack``): the run ids trained with it over one base
    packed             a packed run only: {"size", "wall_s" (the pack's training time until this run
                       left it), "time"}; then ``time.train_s`` / ``eval_s`` are its share of the
                       pack's wall time (each step's time over the runs in it)
    forgetting         a ``--head lm`` run only (``lorabench.forgetting``): {"text", "sha256", "tokens",
                       "base_ppl", "ppl", "kl"}: the decoder's perplexity on lorabench's general-text
                       sample before and after training and the mean KL(base || tuned) of its next-token
                       distributions (nats per token); null when training crashed
    env*               {"device_name", "python", "torch", "transformers", "lorabench", "git_rev"}
    started_at*        ISO-8601 UTC
    finished_at*       ISO-8601 UTC
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from datetime import datetime, timezone
from typing import Any, Iterator

from .data.glue import get_task
from .errors import DataError, ResultWriteError
from . import ids, kinds
from .outputs import check_output_folder, refuse_overwriting_inputs  # noqa: F401  (results.refuse_...)
from .measure import environment

SCHEMA = "lorabench-run"
SCHEMA_VERSION = 3
STATUSES = ("ok", "diverged", "oom", "error")
#: lorabench files that live beside results and are not results themselves.
KNOWN_OTHER_FILES = {"lorabench_adapter.json", "adapter_config.json", "sweep.json"}
REQUIRED_KEYS = ("schema", "schema_version", "run_id", "status", "config", "task", "variant", "model", "seed")
REQUIRED_SINCE = {"data": 2}  # object keys a schema version on from this one must hold


canonical = ids.canonical
run_id = ids.run_id  # the run id of a resolved config
TIME_KEYS = ("train_s", "eval_s", "examples_per_s", "tokens_per_s")
MEMORY_KEYS = ("device", "peak_allocated_bytes", "peak_reserved_bytes", "peak_rss_bytes", "budget_bytes",
               "micro_batch_size", "grad_accum_steps")


def now() -> str:
    """The time as results record it: ISO-8601 UTC, whole seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_result(run_id: str, config: dict, *, data: dict, primary_metric: str, env: dict, started_at: str,
               status: str = "error", error: str | None = None) -> dict[str, Any]:
    """A result with every required field and nothing measured yet; ``config`` is the resolved
    config (``RunConfig.resolved()``), ``data`` its data fingerprint. A finished run fills in what
    it measured; a run whose process died is recorded as it stands (``failure_result``)."""
    empty = {"step": 0, "epoch": 0.0, "metrics": {}}
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "run_id": run_id, "status": status, "error": error,
        "kind": config.get("kind", "run"), "method": kinds.label(config),
        "metric": {"name": primary_metric, "selected_on": None, "reported_on": None}, "details": None,
        "config": config, "task": config["task"], "variant": config["variant"], "model": config["model"],
        "data": {**data, "examples": None}, "seed": config["seed"], "primary_metric": primary_metric,
        "best": empty, "final": dict(empty), "history": [], "train_loss": [],
        "params": {"trainable": None, "total": None}, "adapter_bytes": None,
        "time": dict.fromkeys(TIME_KEYS), "memory": dict.fromkeys(MEMORY_KEYS),
        "env": env, "started_at": started_at, "finished_at": now(),
    }


def failure_result(cfg: Any, run_id: str, message: str, started_at: str) -> dict[str, Any]:
    """The ``error`` result recorded for a run (a ``RunConfig``) whose process died without
    writing one, by the living process that started it."""
    import torch

    try:
        data = cfg.data_fingerprint()
    except DataError as e:  # the data went away since the run was planned: say so, keep the id
        data = {"source": "unreadable", "error": str(e)}
    return new_result(run_id, cfg.resolved(), data=data, primary_metric=get_task(cfg.task).primary_metric,
                      env=environment(torch.device("cpu")), started_at=started_at, error=message)


def planned_data(result: dict) -> dict | None:
    """The data fingerprint hashed into a result's id (``data`` without ``examples``); None for schema 1."""
    data = result.get("data")
    if result.get("schema_version", 1) < 2 or not isinstance(data, dict):
        return None
    return {k: v for k, v in data.items() if k != "examples"}


def expected_id(result: dict) -> str:
    """The run id a result's own config and data give (equal to its ``run_id`` unless it was edited)."""
    return ids.run_id(result["config"], planned_data(result))


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _write_error(folder: Path, e: OSError, what: str) -> ResultWriteError:
    return ResultWriteError(f"cannot write {what} in {folder} ({e.strerror or e}); make the folder writable, "
                            "free disk space, or pass another --out")


def check_writable(folder: str | os.PathLike) -> None:
    """Make sure a file can be written in ``folder`` before a run trains for an hour and then
    cannot record its result (``outputs.check_output_folder``: a bad input, exit 2)."""
    check_output_folder(folder)


def file_mode() -> int:
    """The mode ``open()`` gives a new file (0666 less the umask): ``mkstemp`` makes its
    temporary files 0600, and a result folder shared by a team must stay readable."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # as open() would make it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON through a temp file + fsync + rename: readers never see a partial file, and
    nothing is left behind when the write fails (``ResultWriteError`` names the folder)."""
    path = Path(path)
    text = json.dumps(_clean(data), indent=2, sort_keys=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path.parent, e, path.name) from None
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(path.parent, e, path.name) from e
        raise
    return path


def result_path(out_dir: str | os.PathLike, rid: str) -> Path:
    # run ids are hex digests: a result path never leaves out_dir, whatever a config file held
    if not (isinstance(rid, str) and 0 < len(rid) <= 64 and all(c in "0123456789abcdef" for c in rid)):
        raise ValueError(f"run id {rid!r} is not a hex digest; run ids come from results.run_id(config)")
    return Path(out_dir) / f"run-{rid}.json"


def validate(data: Any) -> str | None:
    """None when ``data`` is a lorabench run result, else why not."""
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("schema") != SCHEMA:
        return f"'schema' is {data.get('schema')!r}, not {SCHEMA!r}"
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        return f"missing keys {', '.join(missing)}"
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        return (f"schema_version {version!r} is not one this lorabench reads (1 to {SCHEMA_VERSION}); "
                "a newer lorabench wrote it: upgrade lorabench")
    missing = [k for k, since in REQUIRED_SINCE.items() if version >= since and not isinstance(data.get(k), dict)]
    if missing:
        return f"schema_version {version} but no {', '.join(missing)} object"
    if data["status"] not in STATUSES:
        return f"unknown status {data['status']!r}"
    if version >= 3 and data.get("kind") not in kinds.KINDS:
        return f"unknown kind {data.get('kind')!r} (this lorabench reads {', '.join(kinds.KINDS)}): upgrade lorabench"
    if version >= 3 and not isinstance(data.get("method"), str):
        return "schema_version 3 but no method"
    return None


def method_of(result: dict) -> str:
    """The row a result is in the report: its ``method`` (the variant for a plain run)."""
    method = result.get("method")
    return method if isinstance(method, str) else str(result.get("variant"))


def mark_metric(result: dict, where: str = "best") -> None:
    """Fill ``result["metric"]``: which split selected the evaluation in ``result[where]`` and
    which reports it (a run that held out ``val`` selects on it; else dev did both)."""
    metrics = (result.get(where) or {}).get("metrics") or {}
    reported = next((split for split in metrics if split != VAL), None)
    selected = VAL if VAL in metrics else reported
    result["metric"] = {"name": result.get("primary_metric"), "selected_on": selected, "reported_on": reported}


def read_result(path: Path) -> dict | None:
    """The result in ``path``, or None when there is no valid result."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if validate(data) is None else None


def status_of(path: Path) -> str | None:
    """The status recorded in a result file, or None when there is no valid result."""
    data = read_result(path)
    return None if data is None else data["status"]


def load_results(folder: str | os.PathLike, warn: bool = True) -> Iterator[tuple[Path, dict]]:
    """Every valid run result under ``folder`` (recursively); others are skipped with a warning."""
    for path in sorted(Path(folder).rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            if warn:
                warnings.warn(f"skipping {path}: not valid JSON ({e})", stacklevel=2)
            continue
        why = validate(data)
        if why is not None:
            if warn and path.name not in KNOWN_OTHER_FILES:
                warnings.warn(f"skipping {path}: not a lorabench result ({why})", stacklevel=2)
            continue
        yield path, data


def file_stamp(path: str | os.PathLike) -> tuple | None:
    """(inode, mtime): changes when a file is (atomically) replaced; None when it is missing."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


#: The evaluation split a run holds out of its training set to select on (``data.batching.VAL_SPLIT``).
VAL = "val"


def _split_metrics(metrics: dict, select: bool) -> dict:
    """The metrics of one split of an evaluation: the reported one (the first dev split), or with
    ``select`` the one that selects (``val`` when the run held one out, else that same dev split)."""
    if not isinstance(metrics, dict) or not metrics:
        return {}
    if select and VAL in metrics:
        return metrics[VAL] if isinstance(metrics[VAL], dict) else {}
    first = next((m for split, m in metrics.items() if split != VAL), {})
    return first if isinstance(first, dict) else {}


def metric_of(result: dict, where: str = "best", select: bool = False) -> tuple[float | None, str | None]:
    """(value, name) of the primary metric of ``result[where]`` ("best" or "final") on the first
    dev split (``select``: on the split that selects, ``val`` when the run held one out); the value
    is None when it is missing or not finite."""
    name = result.get("primary_metric")
    value = _split_metrics((result.get(where) or {}).get("metrics"), select).get(name)
    return (float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None), name


def history_of(result: dict) -> list[tuple[int, float]]:
    """(step, primary metric on the first dev split) of every evaluation in ``history``."""
    name, out = result.get("primary_metric"), []
    for h in result.get("history") or []:
        value = _split_metrics(h.get("metrics"), False).get(name)
        if isinstance(value, (int, float)):
            out.append((int(h.get("step") or 0), float(value)))
    return out
