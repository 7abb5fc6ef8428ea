"""The Ray backend of ``lorabench sweep``: every planned run becomes one Ray task.

    pip install 'lorabench[ray]'
    ray start --head                                   # once per cluster (or no --address: a local Ray)
    lorabench sweep configs/peft-methods.yaml --backend ray --address auto

The worker runs a task exactly as the local backend runs a run (``local.run_one``: a fresh
subprocess, the result JSON written atomically into the shared out folder, an ``error`` result
when the process dies without one). The driver (this process) plans, skips the runs whose result
exists (``--retry-failed`` reruns those not ok), holds the out folder's lock, writes
``sweep.json`` and prints ``[done/total]`` as tasks finish; resume is the local backend's. Every
node must see the out folder and the GLUE folder at the same paths (a shared filesystem): the
driver sends absolute paths, and finds the GLUE folder itself when the config names none.

Resources per task: one GPU where the cluster has GPUs (Ray then sets ``CUDA_VISIBLE_DEVICES``
for it), and ``--cpus-per-run`` CPUs (Ray sets ``OMP_NUM_THREADS`` to that). Tasks are not
retried by Ray: a run whose worker dies is recorded as an ``error`` like a killed local run.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from .. import results
from ..config import RunConfig
from ..data.glue import resolve_source
from ..errors import DataError, SweepError
from .local import lock_folder, pending, run_one, start, write_manifest
from .plan import PlannedRun, Sweep

NEEDS_RAY = "the ray backend needs Ray: pip install 'lorabench[ray]'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError(NEEDS_RAY) from None
    return ray


# --------------------------------------------------------------------------- worker side


def run_task(config: dict[str, Any], run_id: str, out: str) -> tuple[str, str]:
    """One Ray task: the run in a fresh subprocess, as the local backend runs it -> (status, log)."""
    run = PlannedRun(run_id, RunConfig.from_dict(config), {})
    status, log = run_one(run, Path(out))
    return status, str(log)


# --------------------------------------------------------------------------- driver side


def portable_config(run: PlannedRun, out: Path) -> dict[str, Any]:
    """The run's config with absolute paths: a worker's working directory is not ours.

    ``out`` and ``data_dir`` are not hashed into the run id, so the id stays the same; the data's
    checksums are, so a worker whose GLUE files differ refuses the run instead of mixing data."""
    cfg = run.config
    data_dir = cfg.data_dir
    if data_dir is None and cfg.data_revision is None:  # the lookup (env var, ./glue_data, ...) happens here
        try:
            source = resolve_source(None, task=cfg.task)
        except DataError:
            source = None  # the worker says so in the run's result
        data_dir = str(source.path) if source is not None and source.kind == "folder" else None
    else:
        data_dir = str(Path(data_dir).expanduser().resolve())
    return dataclasses.replace(cfg, out=str(out), data_dir=data_dir).to_dict() | {"quiet": True}


def connect(ray, address: str | None) -> bool:
    """Join ``address`` (or start a local Ray); True when this call started Ray."""
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SweepError(f"cannot reach a Ray cluster at {address!r} ({first}); start one with "
                         "`ray start --head`, or drop --address to run a local Ray") from None
    return True


def run_sweep_ray(sweep: Sweep, *, address: str | None = None, cpus_per_run: int = 1, retry_failed: bool = False,
                  quiet: bool = False) -> dict[str, str | None]:
    """Run every planned run not done yet as a Ray task; returns run id -> status."""
    ray = import_ray()
    out = Path(sweep.out).expanduser().resolve()
    # join the cluster first: a wrong --address leaves no out folder behind
    started_ray = connect(ray, address) if pending(sweep, out, retry_failed)[1] else False
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_folder(out)
        try:
            return _run_tasks(ray, sweep, out, cpus_per_run, retry_failed, quiet)
        finally:
            if lock is not None:
                lock.close()
    finally:
        if started_ray:
            ray.shutdown()


def _run_tasks(ray, sweep: Sweep, out: Path, cpus_per_run: int, retry_failed: bool,
               quiet: bool) -> dict[str, str | None]:
    statuses, todo = start(sweep, out, retry_failed)
    total, done = len(sweep.runs), len(sweep.runs) - len(todo)
    if not quiet:
        print(f"[{done}/{total}] {done} done, {len(todo)} to run as Ray tasks", flush=True)
    if todo:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(run_task).options(num_cpus=cpus_per_run, num_gpus=gpus, max_retries=0)
        pending_refs = {}
        for run in todo:
            ref = task.remote(portable_config(run, out), run.run_id, str(out))
            pending_refs[ref] = (run, results.now(), results.file_stamp(results.result_path(out, run.run_id)))
        try:
            while pending_refs:
                [ref], _ = ray.wait(list(pending_refs), num_returns=1)
                run, started, before = pending_refs.pop(ref)
                try:
                    status, log = ray.get(ref)
                except ray.exceptions.RayError as e:  # failed outside the run (worker lost): record it here
                    status, log = _record_lost_task(run, out, e, started, before), "(no log: the task died)"
                statuses[run.run_id] = status
                done += 1
                line = f"[{done}/{total}] {status}: {run.describe()}"
                if status != "ok":
                    print(f"{line} (log: {log})", file=sys.stderr, flush=True)
                elif not quiet:
                    print(line, flush=True)
        finally:
            for ref in pending_refs:  # Ctrl-C or an error here: stop the tasks still out there
                ray.cancel(ref, force=True)
    write_manifest(sweep, statuses)
    return statuses


def _record_lost_task(run: PlannedRun, out: Path, error: Exception, started: str, before) -> str:
    """A task that failed outside the run (worker or node lost, lorabench missing there): an ``error`` result."""
    path = results.result_path(out, run.run_id)
    status = results.status_of(path) if results.file_stamp(path) != before else None
    if status is not None:  # the run finished and its worker died afterwards
        return status
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the worker's exception
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    results.write_json_atomic(path, results.failure_result(
        run.config, run.run_id, f"Ray task failed without writing a result: {type(cause).__name__}: {first}", started))
    return "error"
