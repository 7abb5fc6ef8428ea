"""The local backend of ``lorabench sweep``: every planned run not done yet, each in a fresh run
process (``python -m lorabench.run``, started through ``launch``) or in a pack process
(``python -m lorabench.pack``), one process after another or ``jobs`` at a time.

With ``jobs: N`` the machine's CPU threads are split between the N processes (``threads_per_job``:
``OMP_NUM_THREADS`` of each child, unless the user set it). On a CPU that is the faster way to use
cores: one process per core runs its small products without waiting on the other thread, and the
Python work of one overlaps the other's. Numbers do not change with it (a run's matrix products are
the same at 1 or 2 threads here; ``benchmarks/bench_speed.py`` compares the dev metrics).

A rerun skips runs whose result exists (``retry_failed``: reruns those not ok). A run process
that dies without a result gets an ``error`` result written here, by its living parent; a child
dies with its sweep, so a SIGKILLed sweep leaves no orphan. A lock file keeps two sweeps out of
one folder; ``sweep.json`` (atomic) lists the planned runs and their status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

import yaml

from .. import results
from ..pack import plan as packing
from ..errors import SweepError
from ..launch import child_env, run_command, signal_name
from .estimate import estimate_seconds, measured_rates
from ..units import format_seconds
from .plan import PlannedRun, Sweep

LOG_TAIL = 2000  # characters of a dead run's log kept in its error result


def lock_folder(out: Path):
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


#: What ``sweep.json`` says of its runs while the sweep is ``state``: running (a sweep killed with
#: SIGKILL leaves this), interrupted (Ctrl-C) or finished.
MANIFEST_NOTE = {
    "running": "status null: no result yet (not run, or running now); if no sweep runs here any more it was "
               "killed: rerun the same command to resume",
    "interrupted": "the sweep was interrupted; status null: no result yet; rerun the same command to resume",
    "finished": "status null: no result (see the run's log in logs/); pruned: successive halving did not start it",
}


def write_manifest(sweep: Sweep, statuses: dict[str, str | None], state: str = "finished") -> Path:
    """``sweep.json``: the planned runs, each with its status (None: no result yet), and the sweep's
    ``state`` (running / interrupted / finished) with what that means for the runs without one."""
    runs = [{"run_id": r.run_id, "model": r.config.model, "task": r.config.task,
             "variant": r.config.variant, "hyper": r.hyper, "seed": r.config.seed,
             "status": statuses.get(r.run_id)} for r in sweep.runs]
    data = {"schema": "lorabench-sweep", "name": sweep.name, "source": sweep.source, "updated_at": results.now(),
            "state": state, "note": MANIFEST_NOTE[state], "run_ids": [r.run_id for r in sweep.runs], "runs": runs}
    return results.write_json_atomic(Path(sweep.out) / "sweep.json", data)


def _log_tail(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace")[-LOG_TAIL:].splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def write_config(run: PlannedRun, out: Path) -> Path:
    """``configs/run-<id>.yaml``: the run's config (``lorabench train --config`` reruns it alone)."""
    cfg_path = out / "configs" / f"run-{run.run_id}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(run.config.to_dict() | {"quiet": True}, sort_keys=False))
    return cfg_path


def threads_per_job(jobs: int) -> dict[str, str]:
    """The environment that gives each of ``jobs`` processes its share of this machine's CPUs
    ({} for one job, or when the user set ``OMP_NUM_THREADS``: theirs holds)."""
    if jobs <= 1 or "OMP_NUM_THREADS" in os.environ:
        return {}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = str(max(1, cpus // jobs))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


class Stopped(Exception):
    """The sweep was interrupted while this child ran (``jobs`` > 1: the other workers' children stop too)."""


def execute_in_subprocess(run: PlannedRun, out: Path, env: dict[str, str] | None = None,
                          stop: threading.Event | None = None) -> tuple[int, Path]:
    """Run one config in a fresh Python process; returns (exit code, log path)."""
    cfg_path = write_config(run, out)
    return run_logged(run_command(cfg_path, run.run_id, "--parent", str(os.getpid())),
                      out / "logs" / f"run-{run.run_id}.log", env=env, stop=stop)


def run_logged(cmd: list[str], log: Path, poll: Callable[[], None] | None = None, env: dict[str, str] | None = None,
               stop: threading.Event | None = None) -> tuple[int, Path]:
    """``cmd`` in a child process, output into ``log``; the child never outlives this call.
    ``poll()``: called about every second while the child runs (the sweep's progress inside a pack).
    ``env``: added to the child's environment. ``stop``: once set, the child is stopped and
    ``Stopped`` raised (another thread's Ctrl-C)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(env))
        try:
            while poll is not None or stop is not None:
                if stop is not None and stop.is_set():
                    raise Stopped()
                try:
                    return proc.wait(timeout=1.0), log
                except subprocess.TimeoutExpired:
                    if poll is not None:
                        poll()
            return proc.wait(), log
        except BaseException:  # Ctrl-C or an error in the sweep: never leave the run behind
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def pending(sweep: Sweep, out: Path, retry_failed: bool) -> tuple[dict[str, str | None], list[PlannedRun]]:
    """The status of every planned run (None: no valid result) and the runs still to do (without a
    result; ``retry_failed``: without an ok one), in plan order."""
    statuses = {r.run_id: results.status_of(results.result_path(out, r.run_id)) for r in sweep.runs}
    todo = [r for r in sweep.runs if statuses[r.run_id] is None or (retry_failed and statuses[r.run_id] != "ok")]
    return statuses, todo


def start(sweep: Sweep, out: Path, retry_failed: bool) -> tuple[dict[str, str | None], list[PlannedRun]]:
    """With the folder's lock held (both backends): drop the temporary files of a process killed
    mid-write, write ``sweep.json``, and return ``pending(...)``."""
    for tmp in out.glob(".*.json.*.tmp"):
        tmp.unlink(missing_ok=True)
    statuses, todo = pending(sweep, out, retry_failed)
    write_manifest(sweep, statuses, "running" if todo else "finished")
    return statuses, todo


def run_one(run: PlannedRun, out: Path) -> tuple[str, Path]:
    """Execute one run in a fresh process (both backends); returns (status, log path).

    A process that dies without a result gets an ``error`` result written here, by its living parent."""
    statuses, log = run_unit([run], out)
    return statuses[run.run_id], log


def progress_file(out: Path, unit: list[PlannedRun]) -> Path:
    """Where a pack's process writes its steps done / planned (``lorabench.pack.run.progress_writer``)."""
    return out / "logs" / f"pack-{unit[0].run_id}.progress.json"


def read_progress(path: Path) -> tuple[int, int] | None:
    """(steps done, steps planned) of a running pack, None before its first step."""
    try:
        data = json.loads(path.read_text())
        return int(data["done"]), int(data["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_unit(unit: list[PlannedRun], out: Path, poll: Callable[[], None] | None = None,
             env: dict[str, str] | None = None, stop: threading.Event | None = None) -> tuple[dict[str, str], Path]:
    """One run in a process of its own, or a pack (``lorabench.pack``: several runs over one frozen
    base in one process); returns ({run id: status}, log path). Every run whose process died
    without writing its result gets an ``error`` result here, by its living parent. ``poll()``:
    called about every second while a pack trains (it reads ``progress_file``); ``env`` and
    ``stop`` as ``run_logged`` takes them."""
    started = results.now()
    paths = {r.run_id: results.result_path(out, r.run_id) for r in unit}
    found = {rid: results.status_of(path) for rid, path in paths.items()}
    if all(status == "ok" for status in found.values()):  # written since the plan, e.g. by a mixture's sibling
        return found, out / "logs" / f"run-{unit[0].run_id}.log"
    before = {rid: results.file_stamp(path) for rid, path in paths.items()}
    if len(unit) == 1:
        rc, log = execute_in_subprocess(unit[0], out, env, stop)
    else:
        pairs = [str(a) for r in unit for a in (write_config(r, out), r.run_id)]
        progress = progress_file(out, unit)
        progress.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "lorabench.pack", "--parent", str(os.getpid()), "--progress", str(progress),
               *pairs]
        rc, log = run_logged(cmd, out / "logs" / f"pack-{unit[0].run_id}.log", poll, env, stop)
    statuses = {}
    for run in unit:
        path = paths[run.run_id]
        wrote = path.exists() and results.file_stamp(path) != before[run.run_id]
        status = results.status_of(path) if wrote else None
        if status is None:  # the process died without this result: record it, we are alive
            how = f"was killed by {signal_name(-rc)}" if rc < 0 else f"exited with code {rc}"
            what = "run process" if len(unit) == 1 else f"pack process ({len(unit)} runs)"
            tail = _log_tail(log)
            results.write_json_atomic(path, results.failure_result(
                run.config, run.run_id, f"{what} {how} without writing a result" + (f": {tail}" if tail else "")
                + f" (log: {log})", started))
            status = "error"
        statuses[run.run_id] = status
    return statuses, log


def trained_together(todo: list[PlannedRun]) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """(the runs to start, the runs another of them writes): a mixture run trains every task of its
    ``scenario.tasks`` and writes each task's result (``mixtures.recipe``), so of the runs that differ
    only in their task within one mixture, the first starts and the others are its siblings."""
    first: dict[str, PlannedRun] = {}
    start, covered = [], []
    for run in todo:
        c = run.config
        if c.kind != "mixture" or len(c.scenario.get("tasks") or []) < 2:
            start.append(run)
            continue
        key = json.dumps({**c.resolved(), "task": None}, sort_keys=True, default=str)
        if key in first:
            covered.append(run)
        else:
            first[key] = run
            start.append(run)
    return start, covered


def run_sweep(sweep: Sweep, *, retry_failed: bool = False, quiet: bool = False) -> dict[str, str | None]:
    """Run every planned run not done yet, one process after another or ``sweep.jobs`` at a time
    (``run_parallel``); returns run id -> status."""
    from tqdm.auto import tqdm

    out = Path(sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(out)
    try:
        statuses, todo = start(sweep, out, retry_failed)
        todo, covered = trained_together(todo)  # before the estimates and the bar: covered runs never start
        rates = measured_rates(out)
        estimates = [estimate_seconds(r.config, rates) for r in todo]
        total = len(sweep.runs) - len(covered)
        bar = tqdm(total=total, initial=total - len(todo), unit="run", disable=quiet,
                   bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        spent = 0.0
        units, _ = packing.group(todo, sweep.pack)
        i = 0
        try:
            if sweep.jobs > 1 and len(units) > 1:
                statuses.update(run_parallel(units, out, sweep.jobs, bar, sum(estimates)))
                units = []
            for unit in units:
                done_est = sum(estimates[:i])
                factor = spent / done_est if done_est else 1.0  # calibrate the estimate on this machine
                c = unit[0].config
                bar.set_description_str(f"{c.method()} {c.task} seed {c.seed}" if len(unit) == 1
                                        else f"pack of {len(unit)} ({c.task})")
                rest = factor * sum(estimates[i + len(unit):])
                bar.set_postfix_str(f"ETA {format_seconds(factor * sum(estimates[i:]))}")
                t0 = time.perf_counter()

                def poll(unit=unit, t0=t0, rest=rest, start=bar.n):
                    got = read_progress(progress_file(out, unit))
                    if got is None or not got[1]:
                        return
                    done, total = got  # steps inside the pack: the bar moves by the pack's share of its runs
                    bar.n = start + len(unit) * done / total
                    left = (time.perf_counter() - t0) * (total - done) / max(done, 1)
                    bar.set_postfix_str(f"step {done}/{total}, ETA {format_seconds(left + rest)}")

                got, log = run_unit(unit, out, None if quiet or len(unit) == 1 else poll)
                spent += time.perf_counter() - t0
                statuses.update(got)
                for run in unit:
                    if got[run.run_id] != "ok":
                        bar.write(f"{got[run.run_id]}: {run.describe()} (log: {log})")
                bar.n = total - len(todo) + i + len(unit)
                bar.refresh()
                i += len(unit)
        except KeyboardInterrupt:
            bar.close()
            write_manifest(sweep, statuses, "interrupted")
            raise
        bar.close()
        for run in covered:  # written by the run that trained them, or recorded as missing
            statuses[run.run_id] = results.status_of(results.result_path(out, run.run_id))
        write_manifest(sweep, statuses)
        return statuses
    finally:
        if lock is not None:
            lock.close()


def run_parallel(units: list[list[PlannedRun]], out: Path, jobs: int, bar, estimate_s: float) -> dict[str, str]:
    """``units`` (runs or packs) ``jobs`` processes at a time, in plan order, each with its share of
    the CPU threads (``threads_per_job``); returns run id -> status. ``bar`` moves as runs finish and
    as the packs running report their steps; its ETA extrapolates the wall time spent so far (before
    any progress: ``estimate_s`` over ``jobs``). Ctrl-C stops every running child."""
    env, stop, lock = threads_per_job(jobs), threading.Event(), threading.Lock()
    running: set[int] = set()
    start, t0 = bar.n, time.perf_counter()

    def work(j: int) -> tuple[dict[str, str], Path]:
        with lock:
            running.add(j)
        try:
            return run_unit(units[j], out, env=env, stop=stop)
        finally:
            with lock:
                running.discard(j)

    statuses: dict[str, str] = {}
    finished = 0.0
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = {pool.submit(work, j): j for j in range(len(units))}
        pending_ = set(futures)
        while pending_:
            done, pending_ = wait(pending_, timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                unit = units[futures[fut]]
                got, log = fut.result()
                statuses.update(got)
                finished += len(unit)
                for run in unit:
                    if got[run.run_id] != "ok":
                        bar.write(f"{got[run.run_id]}: {run.describe()} (log: {log})")
            with lock:
                now = list(running)
            inside = 0.0
            for j in now:  # the packs running: their share of steps done
                got = read_progress(progress_file(out, units[j])) if len(units[j]) > 1 else None
                if got is not None and got[1]:
                    inside += len(units[j]) * got[0] / got[1]
            bar.n = start + finished + inside
            moved, spent = finished + inside, time.perf_counter() - t0
            left = spent * (bar.total - bar.n) / moved if moved else max(0.0, estimate_s / jobs - spent)
            bar.set_description_str(f"{len(now)} of {jobs} jobs")
            bar.set_postfix_str(f"ETA {format_seconds(left)}")
            bar.refresh()
    except BaseException:
        stop.set()  # every worker stops its child and returns; no result is written for them
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return statuses
