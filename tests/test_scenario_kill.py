"""kill -9 in the middle of a scenario command, then the same command again: no finished result is
lost and none is duplicated (results are keyed by run id and written atomically). The mixture's
case is in tests/test_mixture_guards.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
pytestmark = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
TINY = ["--model", "minilm", "--layers", "2", "--task", "sst2", "--train-limit", "32", "--eval-limit", "32",
        "--max-length", "16", "--batch-size", "8", "--data-dir", str(GLUE), "--quiet"]


def results_in(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("run-*.json"))]


def kill_when(cmd: list[str], ready, timeout: float = 240) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds (or when it ends by itself)."""
    proc = subprocess.Popen([sys.executable, "-m", "lorabench", *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and not ready() and time.time() < deadline:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_prune_killed_after_its_first_run_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "prune"
    cmd = ["prune", "--method", "lora", "loraprune", "--sparsity", "0.5", *TINY, "--out", str(out)]
    kill_when(cmd, lambda: len(list(out.glob("run-*.json"))) >= 1)
    first = {r["run_id"]: r for r in results_in(out)}
    assert len(first) == 1  # killed while the second method trained
    assert subprocess.run([sys.executable, "-m", "lorabench", *cmd], capture_output=True).returncode == 0
    after = results_in(out)
    assert sorted(r["method"] for r in after) == ["prune:lora", "prune:loraprune@0.5"]  # one each
    assert all(r["status"] == "ok" for r in after) and not list(out.glob(".*.tmp"))
    (table,) = [p.read_text() for p in out.glob("prune.md")]
    assert table.count("| lora |") == 1 and table.count("| loraprune |") == 1


def test_federate_killed_mid_run_leaves_no_partial_result(tmp_path):
    out = tmp_path / "fed"
    done = tmp_path / "done"
    cmd = ["federate", "--method", "fedavg", "--clients", "2", "--rounds", "3", "--beta", "inf", *TINY, "--out", str(out)]
    subprocess.run([sys.executable, "-m", "lorabench", *cmd[:-1], str(done)], check=True, capture_output=True)
    [finished] = results_in(done)
    started = time.time()
    kill_when(cmd, lambda: time.time() - started > 6.0)  # about mid-way through the rounds
    assert results_in(out) == [] or [r["run_id"] for r in results_in(out)] == [finished["run_id"]]
    assert subprocess.run([sys.executable, "-m", "lorabench", *cmd], capture_output=True).returncode == 0
    [again] = results_in(out)
    assert again["run_id"] == finished["run_id"] and again["status"] == "ok"
    assert again["final"] == finished["final"]  # the same run, the same number (CPU runs repeat exactly)
