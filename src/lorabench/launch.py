"""Start lorabench run processes: the N ranks of a data-parallel run, or one run of a sweep.

Every process started here runs the one child entry point, ``python -m lorabench.run <config>
<run id>`` (``run.main``), with this lorabench first on its path (``child_env``). This module
imports nothing above ``results``: the run layer calls it, never the other way.

``lorabench train --num-processes N`` (config ``num_processes: N``) calls ``launch``: it starts N
such processes with the environment torchrun and
``accelerate launch`` set (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...), waits for them and
returns the result JSON rank 0 wrote. Ctrl-C stops every rank (no result); a rank that dies
takes the others down, and the run gets an "error" result if rank 0 wrote none. Multi-node
runs use ``accelerate launch`` or torchrun directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from . import results
from .errors import ConfigError, LaunchError, RunFailed

#: Seconds the ranks get to stop by themselves (after Ctrl-C, or once a peer has failed) before
#: SIGTERM, and then SIGKILL.
GRACE_S = 30


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with this lorabench first on ``PYTHONPATH``, so a child imports
    the same lorabench wherever this one came from (a checkout, an editable or a plain install)."""
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    return os.environ | {"PYTHONPATH": os.pathsep.join(p for p in paths if p)} | (extra or {})


def run_command(cfg_path: str | os.PathLike, run_id: str, *flags: str) -> list[str]:
    """The command line of a run process (``run.main``)."""
    return [sys.executable, "-m", "lorabench.run", str(cfg_path), run_id, *flags]


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """In a child: ``sig`` when the process that started it dies (Linux ``PR_SET_PDEATHSIG``), so
    no orphaned run waits on its peers or writes a late result. With ``parent`` (its pid) a
    watchdog thread also exits once that process is gone (other platforms, and a parent that died
    before the prctl)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent is None:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name + (" (out of memory?)" if n == signal.SIGKILL else "")
    except ValueError:
        return f"signal {n}"


def rank_env(r: int, n: int, port: int) -> dict[str, str]:
    """What torchrun sets for rank ``r`` of ``n`` on one machine (accelerate reads the same)."""
    env = {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n),
           "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if "OMP_NUM_THREADS" not in os.environ:  # N ranks share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: Any, run_id: str, path: Path) -> dict[str, Any]:
    """Run ``cfg`` on ``cfg.num_processes`` local processes; returns the result rank 0 wrote.

    Raises like ``run.execute``: ``RunFailed`` after an "oom"/"error" result (written here when
    the ranks died without one), ``LaunchError`` when they stopped on bad input, and
    ``KeyboardInterrupt`` on Ctrl-C once the ranks have stopped (no result for the run).
    """
    import yaml

    n = cfg.num_processes
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise ConfigError(f"num_processes {n} needs {n} GPUs, {torch.cuda.device_count()} visible; "
                          "lower --num-processes or check CUDA_VISIBLE_DEVICES")
    started, before = results.now(), _stamp(path)
    with tempfile.TemporaryDirectory(prefix="lorabench-launch-") as tmp:
        cfg_path = Path(tmp) / "run.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        port = free_port()
        # Own sessions: a Ctrl-C reaches this process alone, which hands it to every rank once.
        procs = [subprocess.Popen(run_command(cfg_path, run_id, "--report", str(Path(tmp) / f"rank{r}.json")),
                                  env=child_env(rank_env(r, n, port)), stdin=subprocess.DEVNULL,
                                  start_new_session=True, preexec_fn=die_with_parent) for r in range(n)]
        try:
            codes = _wait_all(procs)
        except KeyboardInterrupt:
            _stop(procs, signal.SIGINT)
            _drop_error_result(path, before)  # a rank that lost its peer to Ctrl-C may have written "error"
            raise
        except BaseException:
            _stop(procs, signal.SIGTERM)
            raise
        reports = [_read_json(Path(tmp) / f"rank{r}.json") or {"code": codes[r]} for r in range(n)]
    if _stamp(path) not in (None, before):  # rank 0 wrote the result
        result = json.loads(path.read_text())
        if result["status"] in ("oom", "error"):
            raise RunFailed(f"run {run_id} {result['status']}: {result['error']} (result: {path})", result, path)
        if result["status"] == "diverged":
            warnings.warn(f"run {run_id} diverged: {result['error']}", stacklevel=2)
        return result
    if 130 in codes:
        raise KeyboardInterrupt
    first = next((r for r in reports if r.get("error")), reports[0])  # rank 0's error, else the first one
    if first.get("code") == 2:
        raise LaunchError(first["error"])
    r, c = next(((r, c) for r, c in enumerate(codes) if c), (0, codes[0]))  # the first rank that failed
    why = first.get("error") or f"rank {r} {_how(c)}"
    message = f"the {n} run processes stopped without writing a result: {why}"
    result = results.failure_result(cfg, run_id, message, started)
    results.write_json_atomic(path, result)
    raise RunFailed(f"run {run_id} error: {message} (result: {path})", result, path)


def _how(code: int) -> str:
    try:
        return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    except ValueError:
        return f"was killed by signal {-code}"


def _wait_all(procs: list[subprocess.Popen]) -> list[int]:
    """Exit codes of every rank. Once one has failed the others get ``GRACE_S`` to stop (a peer
    blocked in a collective fails when the dead rank's connection closes), then SIGTERM."""
    failed_at = None
    while any(p.poll() is None for p in procs):
        if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            _stop(procs, signal.SIGTERM)
        time.sleep(0.1)
    return [p.returncode for p in procs]


def _stop(procs: list[subprocess.Popen], sig: int) -> None:
    """``sig`` to every rank still running, then SIGKILL to those that outlive ``GRACE_S``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


_stamp = results.file_stamp  # changes when a file is (atomically) replaced


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _drop_error_result(path: Path, before: tuple | None) -> None:
    if _stamp(path) not in (None, before) and (_read_json(path) or {}).get("status") == "error":
        path.unlink(missing_ok=True)
